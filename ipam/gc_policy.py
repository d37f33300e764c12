"""The IP garbage collector's decision for one allocation record: keep it, or release it.

A pure function of what the collector has read (the record, the pod of that name, its SpiderEndpoint,
its StatefulSet, the node's readiness, the clock and the settings).  It implements Spiderpool's
scan-all table (reference §5); the pod-tracing path asks the same question.

The caller performs a release with the record's own pod UID (the store ignores a release whose UID no
longer matches), so a decision taken on slightly stale data never frees an IP a new pod now holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ipam.records import IPRecord
from ipam.workload import PodInfo, ordinal_in_range, statefulset_size

__all__ = [
    "Decision",
    "EndpointInfo",
    "GCSettings",
    "StatefulSetState",
    "decide",
]


@dataclass(frozen=True)
class GCSettings:
    """Spiderpool's ``SPIDERPOOL_GC_*`` knobs that change decisions (defaults as upstream)."""

    additional_grace_delay: float = 0.0  # SPIDERPOOL_GC_ADDITIONAL_GRACE_DELAY
    terminating_on_ready_node: bool = True  # ..._STATELESS_TERMINATING_POD_ON_READY_NODE_ENABLED
    terminating_on_not_ready_node: bool = True  # ..._STATELESS_TERMINATING_POD_ON_NOT_READY_NODE_ENABLED
    running_on_empty_pod_ips: bool = False  # ..._ENABLE_STATELESS_RUNNING_POD_ON_EMPTY_POD_STATUS_IPS
    enable_statefulset: bool = True  # StatefulSet pods keep fixed IPs


@dataclass(frozen=True)
class EndpointInfo:
    """The parts of a SpiderEndpoint the collector reads."""

    uid: str
    node: str
    owner_kind: str  # status.ownerControllerType
    ips: frozenset[str] = frozenset()  # bare addresses recorded in status.current.ips

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> EndpointInfo:
        status = obj.get("status") or {}
        current = status.get("current") or {}
        ips: set[str] = set()
        for detail in current.get("ips") or ():
            for key in ("ipv4", "ipv6"):
                value = (detail or {}).get(key)
                if isinstance(value, str) and value:
                    ips.add(value.partition("/")[0])
        return cls(
            uid=str(current.get("uid") or ""),
            node=str(current.get("node") or ""),
            owner_kind=str(status.get("ownerControllerType") or ""),
            ips=frozenset(ips),
        )


@dataclass(frozen=True)
class StatefulSetState:
    """The StatefulSet a pod name points at: whether it exists and which ordinals it wants."""

    name: str
    exists: bool
    replicas: int = 0
    start: int = 0

    @classmethod
    def from_obj(cls, name: str, obj: Mapping[str, Any] | None) -> StatefulSetState:
        if obj is None:
            return cls(name=name, exists=False)
        replicas, start = statefulset_size(obj)
        return cls(name=name, exists=True, replicas=replicas, start=start)

    def wants(self, pod_name: str) -> bool:
        return self.exists and ordinal_in_range(pod_name, self.name, self.replicas, self.start)


@dataclass(frozen=True)
class Decision:
    action: Literal["keep", "release"]
    release_endpoint: bool  # also delete the pod's SpiderEndpoint
    reason: str
    recheck_at: float | None = None  # when keeping: look again at this time (the pod is being traced)

    @property
    def release(self) -> bool:
        return self.action == "release"


def _keep(reason: str, recheck_at: float | None = None) -> Decision:
    return Decision("keep", False, reason, recheck_at)


def _release(reason: str, *, endpoint: bool) -> Decision:
    return Decision("release", endpoint, reason)


def _pod_name(record: IPRecord) -> str:
    return record.pod.partition("/")[2]


def _static_member(record: IPRecord, statefulset: StatefulSetState | None) -> tuple[bool, str]:
    """Whether the record's pod is a member its StatefulSet still wants, and a phrase saying why."""
    name = _pod_name(record)
    if statefulset is None or not statefulset.exists:
        return False, "its StatefulSet is gone"
    if statefulset.wants(name):
        return True, f"StatefulSet {statefulset.name} still wants {name}"
    return (
        False,
        f"{name} is outside StatefulSet {statefulset.name}'s ordinals (replicas {statefulset.replicas})",
    )


def decide(
    record: IPRecord,
    pod: PodInfo | None,
    endpoint: EndpointInfo | None,
    statefulset: StatefulSetState | None,
    node_ready: bool | None,
    now: float,
    settings: GCSettings,
) -> Decision:
    """Keep or release ``record``.

    ``pod`` is the pod named by the record (any UID) or None when no such pod exists; ``endpoint`` the
    SpiderEndpoint of that name or None; ``statefulset`` the StatefulSet the pod belongs to (looked up
    by the pod's owner, or by the endpoint's owner kind and the name's prefix when the pod is gone), or
    None when the pod is no StatefulSet member or the StatefulSet was not found; ``node_ready`` the
    pod's node Ready condition, None when unknown (node gone); ``now`` seconds since the epoch."""
    if pod is None:
        return _pod_gone(record, endpoint, statefulset, settings)
    static = settings.enable_statefulset and pod.statefulset_name is not None
    if pod.uid != record.pod_uid:
        return _uid_mismatch(record, pod, endpoint, statefulset, static)
    if pod.deletion_timestamp is not None:
        return _terminating(record, pod, endpoint, statefulset, node_ready, now, settings, static)
    if pod.phase in ("Succeeded", "Failed"):
        return _finished(record, pod, endpoint, statefulset, now, settings, static)
    if pod.phase == "Pending":
        return _keep("pod is Pending")
    return _running(record, pod, endpoint, statefulset, settings, static)


def _pod_gone(
    record: IPRecord,
    endpoint: EndpointInfo | None,
    statefulset: StatefulSetState | None,
    settings: GCSettings,
) -> Decision:
    if endpoint is None:
        return _release(f"pod {record.pod} not found and it has no SpiderEndpoint", endpoint=False)
    if settings.enable_statefulset and endpoint.owner_kind == "StatefulSet":
        member, why = _static_member(record, statefulset)
        if member:
            return _keep(f"pod {record.pod} not found but {why}: its fixed IP stays")
        return _release(f"pod {record.pod} not found and {why}", endpoint=True)
    return _release(f"pod {record.pod} not found", endpoint=True)


def _uid_mismatch(
    record: IPRecord,
    pod: PodInfo,
    endpoint: EndpointInfo | None,
    statefulset: StatefulSetState | None,
    static: bool,
) -> Decision:
    # Only an endpoint that is not the live pod's may go with the record.
    stale_endpoint = endpoint is not None and endpoint.uid != pod.uid
    what = f"record UID {record.pod_uid} differs from pod {record.pod} UID {pod.uid}"
    if not static:
        return _release(what, endpoint=stale_endpoint)
    member, why = _static_member(record, statefulset)
    if not member:
        return _release(f"{what} and {why}", endpoint=stale_endpoint)
    if pod.pod_ips:
        return _release(f"{what} and the new pod already has IPs {', '.join(pod.pod_ips)}", endpoint=False)
    return _keep(f"{what} but {why}: the restarting pod takes this IP over")


def _node_allows(node_ready: bool | None, settings: GCSettings) -> tuple[bool, str]:
    if node_ready is None:
        return False, "its node's readiness is unknown"
    if node_ready:
        return settings.terminating_on_ready_node, "GC of terminating pods on Ready nodes is disabled"
    return settings.terminating_on_not_ready_node, "GC of terminating pods on NotReady nodes is disabled"


def _terminating(
    record: IPRecord,
    pod: PodInfo,
    endpoint: EndpointInfo | None,
    statefulset: StatefulSetState | None,
    node_ready: bool | None,
    now: float,
    settings: GCSettings,
    static: bool,
) -> Decision:
    assert pod.deletion_timestamp is not None
    if static:
        member, why = _static_member(record, statefulset)
        if member:
            return _keep(f"pod {record.pod} is terminating but {why}: its fixed IP stays")
    allowed, why_not = _node_allows(node_ready, settings)
    if not allowed:
        return _keep(f"pod {record.pod} is terminating but {why_not}")
    # Spiderpool adds the grace period on top of deletionTimestamp (which already includes it).
    stop = pod.deletion_timestamp + (pod.deletion_grace_seconds or 0) + settings.additional_grace_delay
    if now > stop:
        return _release(
            f"pod {record.pod} is terminating past its grace period", endpoint=endpoint is not None
        )
    if pod.pod_ips:
        return _keep(f"pod {record.pod} is terminating within its grace period", recheck_at=stop)
    return _release(f"pod {record.pod} is terminating and has no pod IPs", endpoint=endpoint is not None)


def _finished(
    record: IPRecord,
    pod: PodInfo,
    endpoint: EndpointInfo | None,
    statefulset: StatefulSetState | None,
    now: float,
    settings: GCSettings,
    static: bool,
) -> Decision:
    if static:
        member, why = _static_member(record, statefulset)
        if member:
            return _keep(f"pod {record.pod} is {pod.phase} but {why}: its fixed IP stays")
        return _release(f"pod {record.pod} is {pod.phase} and {why}", endpoint=endpoint is not None)
    if pod.finished_at is None:  # no container reports when it stopped: nothing to wait for
        return _release(f"pod {record.pod} is {pod.phase}", endpoint=endpoint is not None)
    stop = pod.finished_at + (pod.termination_grace_seconds or 0) + settings.additional_grace_delay
    if now > stop:
        return _release(
            f"pod {record.pod} is {pod.phase} past its grace period", endpoint=endpoint is not None
        )
    return _keep(f"pod {record.pod} is {pod.phase}, within its grace period", recheck_at=stop)


def _running(
    record: IPRecord,
    pod: PodInfo,
    endpoint: EndpointInfo | None,
    statefulset: StatefulSetState | None,
    settings: GCSettings,
    static: bool,
) -> Decision:
    if pod.pod_ips:
        if (
            endpoint is not None
            and endpoint.uid == pod.uid
            and endpoint.ips
            and record.ip not in endpoint.ips
        ):
            return _release(
                f"pod {record.pod} is {pod.phase} but its SpiderEndpoint does not list {record.ip}",
                endpoint=False,
            )
        return _keep(f"pod {record.pod} is {pod.phase} with pod IPs")
    if static:
        member, why = _static_member(record, statefulset)
        if member:
            return _keep(f"pod {record.pod} has no pod IPs yet but {why}")
        return _release(f"pod {record.pod} has no pod IPs and {why}", endpoint=endpoint is not None)
    if pod.phase == "Running":
        if settings.running_on_empty_pod_ips:
            return _release(f"pod {record.pod} is Running without pod IPs", endpoint=endpoint is not None)
        return _keep(f"pod {record.pod} is Running without pod IPs (GC of such pods is disabled)")
    return _release(
        f"pod {record.pod} is {pod.phase or 'Unknown'} without pod IPs", endpoint=endpoint is not None
    )
