"""Which of this node's pod addresses belong to Ready pods, kept current from store watch events
(``bgp.announceWhen: ready``).

A pod counts as Ready when its ``Ready`` condition is ``True``, it is not terminating (no
``metadata.deletionTimestamp``) and it has not finished (phase Succeeded or Failed), as for a
Service's endpoints.  An address is ready when the SpiderEndpoint that holds it is on this node and
the Pod of the same namespace/name, with the same UID, is Ready: a re-created pod of the same name
(a StatefulSet's) is judged on its own status, never on its predecessor's.

Each event costs O(addresses of the pod it names); the answer is a change list for the announcer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import netaddr

from ipam.errors import IpamError
from ipam.model import Endpoint
from ipam.records import Obj, WatchEvent

__all__ = ["ReadyAddresses", "pod_is_ready"]


def pod_is_ready(pod: Mapping[str, object]) -> bool:
    """The Pod's Ready condition is True, and it is neither terminating nor finished."""
    meta = pod.get("metadata")
    if isinstance(meta, Mapping) and meta.get("deletionTimestamp"):
        return False
    status = pod.get("status")
    if not isinstance(status, Mapping) or status.get("phase") in ("Succeeded", "Failed"):
        return False
    conditions = status.get("conditions")
    for cond in conditions if isinstance(conditions, list) else ():
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


@dataclass(frozen=True)
class _Holder:
    uid: str
    ips: frozenset[str]


def _key(obj: Mapping[str, object]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return "/"
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _endpoint(obj: Obj, node: str) -> _Holder | None:
    """The addresses an endpoint holds on ``node`` (None: another node's, or unreadable)."""
    try:
        endpoint = Endpoint.from_obj(obj)
    except IpamError:
        return None
    if endpoint.node != node:
        return None
    ips = {str(netaddr.IPNetwork(c).ip) for nic in endpoint.ips for c in (nic.ipv4, nic.ipv6) if c}
    return _Holder(endpoint.uid, frozenset(ips)) if ips else None


def _pod(obj: Obj, node: str) -> tuple[str, bool] | None:
    """(uid, ready) of a pod on ``node`` (None: another node's)."""
    spec = obj.get("spec")
    if not isinstance(spec, Mapping) or spec.get("nodeName") != node:
        return None
    meta = obj.get("metadata")
    uid = str(meta.get("uid", "")) if isinstance(meta, Mapping) else ""
    return uid, pod_is_ready(obj)


class ReadyAddresses:
    """Not thread-safe: one watcher thread owns it."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._endpoints: dict[str, _Holder] = {}
        self._pods: dict[str, tuple[str, bool]] = {}

    def _ready_ips(self, key: str) -> frozenset[str]:
        holder = self._endpoints.get(key)
        pod = self._pods.get(key)
        if holder is None or pod is None or not pod[1]:
            return frozenset()
        if holder.uid and pod[0] and holder.uid != pod[0]:
            return frozenset()  # the endpoint is an earlier pod's of the same name
        return holder.ips

    def reset(self, endpoints: Iterable[Obj], pods: Iterable[Obj]) -> set[str]:
        """Start over from full lists; returns every ready address on this node."""
        self._endpoints = {}
        self._pods = {}
        for obj in endpoints:
            holder = _endpoint(obj, self.node)
            if holder is not None:
                self._endpoints[_key(obj)] = holder
        for obj in pods:
            pod = _pod(obj, self.node)
            if pod is not None:
                self._pods[_key(obj)] = pod
        return self.ready()

    def ready(self) -> set[str]:
        return {ip for key in self._endpoints for ip in self._ready_ips(key)}

    def apply(self, events: Iterable[WatchEvent]) -> dict[str, bool]:
        """Apply a batch of events (other kinds are ignored); returns the addresses whose readiness
        changed over the batch, ip -> ready now."""
        changes: dict[str, bool] = {}
        first: dict[str, bool] = {}  # each touched address's readiness before the batch
        for event in events:
            kind = event.object.get("kind")
            if kind not in ("Pod", "SpiderEndpoint"):
                continue
            key = _key(event.object)
            before = self._ready_ips(key)
            if kind == "Pod":
                pod = None if event.type == "DELETED" else _pod(event.object, self.node)
                if pod is None:
                    self._pods.pop(key, None)
                else:
                    self._pods[key] = pod
            else:
                holder = None if event.type == "DELETED" else _endpoint(event.object, self.node)
                if holder is None:
                    self._endpoints.pop(key, None)
                else:
                    self._endpoints[key] = holder
            after = self._ready_ips(key)
            for ip in before ^ after:
                first.setdefault(ip, ip in before)
                changes[ip] = ip in after
        return {ip: now for ip, now in changes.items() if now != first[ip]}
