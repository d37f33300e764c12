"""Which prefixes this node announces: the export policy, the advertise modes, and the diff against
what ExaBGP already holds.  Pure functions over frozen values; nothing here does I/O.

* ``host``: one /32 (/128) per pod IP.
* ``aggregate``: the minimal exact CIDR cover of the pod IPs: a /31 only when both addresses are
  pod IPs of this node, and so on (``ipaddress.collapse_addresses`` merges only complete halves), so it
  never covers an address that is not allocated here.
* ``pool``: the subnets of the pools that hold at least one of this node's (ready) pod IPs.

The export policy comes first: a prefix is announced only if it lies inside a pool subnet (the union
given to the speaker, and the pod's own pool subnet), inside one of ``exportCIDRs`` when those are
set, is a unicast address, and is not one of the node's own addresses.  A pool subnet of length 0
(a default route) is never exported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from bgp_speaker.config import AdvertiseMode, IPAddress, IPNetwork

__all__ = [
    "DesiredRoutes",
    "ExportPolicy",
    "PeerPlan",
    "Refusal",
    "advertised_prefixes",
    "desired_routes",
    "export_refusal",
    "host_prefix",
    "plan_peer",
]


@dataclass(frozen=True)
class Refusal:
    """A pod IP (or subnet) the export policy keeps out of BGP, with the reason (one line)."""

    subject: str
    reason: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.reason}"


@dataclass(frozen=True)
class DesiredRoutes:
    prefixes: frozenset[IPNetwork]
    refused: tuple[Refusal, ...] = ()


@dataclass(frozen=True)
class PeerPlan:
    """What to send to one peer: prefixes to announce and to withdraw, and those held back by
    ``maxPrefixes``.  ``target`` is what the peer will hold once both are applied."""

    announce: tuple[IPNetwork, ...]
    withdraw: tuple[IPNetwork, ...]
    held_back: tuple[IPNetwork, ...]
    target: frozenset[IPNetwork]

    @property
    def empty(self) -> bool:
        return not self.announce and not self.withdraw


def host_prefix(ip: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(ip)


def _inside_any(net: IPNetwork, spaces: Iterable[IPNetwork]) -> bool:
    return any(net.version == s.version and net.subnet_of(s) for s in spaces)  # type: ignore[arg-type]


def export_refusal(
    ip: IPAddress,
    subnet: IPNetwork,
    *,
    pool_subnets: Set[IPNetwork] | None,
    export_cidrs: Iterable[IPNetwork],
    node_addresses: Set[IPAddress],
) -> str | None:
    """Why ``ip`` (of pool ``subnet``) must not be exported, or None when it may be."""
    if ip.version != subnet.version or ip not in subnet:
        return f"outside its pool subnet {subnet}"
    if subnet.prefixlen == 0:
        return f"pool subnet {subnet} is a default route"
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_reserved:
        return "not a unicast address"
    if ip in node_addresses:
        return "is this node's own address"
    if pool_subnets is not None and not any(ip in s for s in pool_subnets if s.prefixlen > 0):
        return "outside every pool subnet"
    cidrs = tuple(export_cidrs)
    if cidrs and not any(ip in c for c in cidrs):
        return "outside bgp.exportCIDRs"
    return None


def _narrow(subnet: IPNetwork, cidrs: tuple[IPNetwork, ...]) -> list[IPNetwork]:
    """The parts of ``subnet`` that lie inside ``cidrs`` (all of it when there are no cidrs)."""
    if not cidrs:
        return [subnet]
    parts: list[IPNetwork] = []
    for c in cidrs:
        if c.version != subnet.version:
            continue
        if subnet.subnet_of(c):  # type: ignore[arg-type]
            return [subnet]
        if c.subnet_of(subnet):  # type: ignore[arg-type]
            parts.append(c)
    return _collapse(parts)


def _collapse(nets: Iterable[IPNetwork]) -> list[IPNetwork]:
    """The minimal exact cover of ``nets`` (both families; only complete halves are merged)."""
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


@dataclass(frozen=True)
class ExportPolicy:
    """What may be exported: inside the pool subnets (None: only the pod's own pool subnet is
    checked), inside ``export_cidrs`` when given, never a node address."""

    pool_subnets: frozenset[IPNetwork] | None = None
    export_cidrs: tuple[IPNetwork, ...] = ()
    node_addresses: frozenset[IPAddress] = frozenset()

    def refusal(self, ip: IPAddress, subnet: IPNetwork) -> str | None:
        return export_refusal(
            ip,
            subnet,
            pool_subnets=self.pool_subnets,
            export_cidrs=self.export_cidrs,
            node_addresses=self.node_addresses,
        )


def advertised_prefixes(
    hosts: Mapping[IPNetwork, IPNetwork], *, mode: AdvertiseMode, export_cidrs: Iterable[IPNetwork] = ()
) -> frozenset[IPNetwork]:
    """The prefixes for exportable, ready pod IPs given as host prefix -> pool subnet."""
    if mode == "host":
        return frozenset(hosts)
    if mode == "aggregate":
        return frozenset(_collapse(hosts))
    cidrs = tuple(export_cidrs)
    pool: set[IPNetwork] = set()
    for s in set(hosts.values()):
        pool.update(_narrow(s, cidrs))
    return frozenset(pool)


def desired_routes(
    pods: Mapping[IPAddress, IPNetwork],
    *,
    mode: AdvertiseMode,
    ready: Set[IPAddress] | None = None,
    pool_subnets: Set[IPNetwork] | None = None,
    export_cidrs: Iterable[IPNetwork] = (),
    node_addresses: Set[IPAddress] = frozenset(),
) -> DesiredRoutes:
    """The prefixes to announce for ``pods`` (pod IP -> its pool subnet).

    ``ready`` is the set of IPs whose host route exists in the node's kernel (None: all are ready).
    IPs that are not ready are simply left out; IPs the export policy refuses are reported."""
    policy = ExportPolicy(
        pool_subnets=None if pool_subnets is None else frozenset(pool_subnets),
        export_cidrs=tuple(export_cidrs),
        node_addresses=frozenset(node_addresses),
    )
    refused: list[Refusal] = []
    hosts: dict[IPNetwork, IPNetwork] = {}
    for ip in sorted(pods, key=lambda a: (a.version, a)):
        subnet = pods[ip]
        why = policy.refusal(ip, subnet)
        if why is not None:
            refused.append(Refusal(str(ip), why))
        elif ready is None or ip in ready:
            hosts[host_prefix(ip)] = subnet
    prefixes = advertised_prefixes(hosts, mode=mode, export_cidrs=policy.export_cidrs)
    return DesiredRoutes(prefixes=prefixes, refused=tuple(refused))


def _order(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def plan_peer(
    desired: Set[IPNetwork],
    announced: Set[IPNetwork],
    *,
    limit: int | None = None,
) -> PeerPlan:
    """The changes that bring a peer from ``announced`` to ``desired``.

    With ``limit`` the peer never holds more than ``limit`` prefixes: prefixes already announced and
    still desired are kept (no churn), new ones are added lowest-first while room remains."""
    keep = set(announced) & set(desired)
    new = sorted(set(desired) - keep, key=_order)
    held: list[IPNetwork] = []
    if limit is not None:
        if len(keep) > limit:  # the limit was lowered: drop the highest ones
            ordered = sorted(keep, key=_order)
            held.extend(ordered[limit:])
            keep = set(ordered[:limit])
        room = max(0, limit - len(keep))
        held.extend(new[room:])
        new = new[:room]
    withdraw = sorted(set(announced) - keep, key=_order)
    return PeerPlan(
        announce=tuple(new),
        withdraw=tuple(withdraw),
        held_back=tuple(sorted(held, key=_order)),
        target=frozenset(keep | set(new)),
    )
