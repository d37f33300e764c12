"""This node's pod addresses and the pools' subnets, kept current from store watch events.

Each event changes only the endpoint or pool it names, so following the store costs O(1) per event
(a full re-read of every endpoint after each change would grow with the cluster).  The result is a delta
for the announcer: addresses that appeared on this node, addresses that left, and the subnet set when
a pool's subnet came or went."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import netaddr

from ipam.errors import IpamError
from ipam.model import Endpoint
from ipam.records import Obj, WatchEvent

__all__ = ["Delta", "NodeAddresses"]


@dataclass(frozen=True)
class Delta:
    added: dict[str, str] = field(default_factory=dict)  # ip -> pool subnet
    removed: list[str] = field(default_factory=list)
    subnets: list[str] | None = None  # the new subnet set, when it changed

    @property
    def empty(self) -> bool:
        return not self.added and not self.removed and self.subnets is None


def _endpoint_ips(obj: Obj, node: str) -> dict[str, str]:
    """ip -> subnet of an endpoint on ``node`` (the address carries the pool's prefix length)."""
    try:
        endpoint = Endpoint.from_obj(obj)
    except IpamError:
        return {}
    if endpoint.node != node:
        return {}
    out: dict[str, str] = {}
    for nic in endpoint.ips:
        for cidr in (nic.ipv4, nic.ipv6):
            if cidr:
                net = netaddr.IPNetwork(cidr)
                out[str(net.ip)] = str(net.cidr)
    return out


def _key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class NodeAddresses:
    """Not thread-safe: one watcher thread owns it."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._by_endpoint: dict[str, dict[str, str]] = {}
        self._subnets: dict[str, str] = {}  # pool -> subnet

    def reset(self, endpoints: Iterable[Obj], pools: Iterable[Obj]) -> tuple[dict[str, str], list[str]]:
        """Start over from a full list; returns (every address on this node, every pool subnet)."""
        self._by_endpoint = {}
        for obj in endpoints:
            ips = _endpoint_ips(obj, self.node)
            if ips:
                self._by_endpoint[_key(obj)] = ips
        self._subnets = {str(p["metadata"]["name"]): str((p.get("spec") or {}).get("subnet")) for p in pools}
        return self.addresses(), self.subnets()

    def addresses(self) -> dict[str, str]:
        return {ip: subnet for ips in self._by_endpoint.values() for ip, subnet in ips.items()}

    def subnets(self) -> list[str]:
        return sorted(set(self._subnets.values()))

    def apply(self, events: Iterable[WatchEvent]) -> Delta:
        """Apply a batch of events; O(addresses of the endpoints they name), never O(all endpoints)."""
        added: dict[str, str] = {}
        removed: set[str] = set()
        subnets_changed = False
        for event in events:
            kind = event.object.get("kind")
            if kind == "SpiderEndpoint":
                key = _key(event.object)
                new = {} if event.type == "DELETED" else _endpoint_ips(event.object, self.node)
                old = self._by_endpoint.pop(key, {})
                if new:
                    self._by_endpoint[key] = new
                for ip in old:
                    if ip not in new:
                        removed.add(ip)
                        added.pop(ip, None)
                for ip, net in new.items():
                    if old.get(ip) != net:
                        added[ip] = net
                        removed.discard(ip)
            elif kind == "SpiderIPPool":
                name = str((event.object.get("metadata") or {}).get("name"))
                cidr: str | None = None
                if event.type != "DELETED":
                    cidr = str((event.object.get("spec") or {}).get("subnet"))
                if self._subnets.get(name) != cidr:
                    subnets_changed = True
                    if cidr is None:
                        self._subnets.pop(name, None)
                    else:
                        self._subnets[name] = cidr
        return Delta(
            added=added, removed=sorted(removed), subnets=self.subnets() if subnets_changed else None
        )
