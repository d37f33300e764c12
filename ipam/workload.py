"""Pods and their workloads, as the IPAM sees them: a frozen :class:`PodInfo`, the top controller
(Pod → ReplicaSet → Deployment, Job → CronJob, StatefulSet, DaemonSet, third-party owners as-is),
Spiderpool's "is this pod alive" rule and the StatefulSet ordinal helpers.

Everything here is pure: the caller fetches objects (plain Kubernetes-shaped dicts) and passes them in,
or passes a lookup callable for the owners it has not fetched yet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from ipam.errors import Invalid, NotFound
from ipam.records import Obj

__all__ = [
    "BUILTIN_API_VERSIONS",
    "BUILTIN_KINDS",
    "GetOwner",
    "OwnerRef",
    "PodInfo",
    "TopController",
    "is_pod_alive",
    "is_valid_statefulset_pod",
    "ordinal_in_range",
    "parse_timestamp",
    "resolve_top_controller",
    "statefulset_ordinal",
    "statefulset_size",
]

BUILTIN_API_VERSIONS: Final = frozenset({"v1", "apps/v1", "batch/v1"})
BUILTIN_KINDS: Final = frozenset(
    {"Pod", "ReplicaSet", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
)

_ORDINAL_RE: Final = re.compile(r"(.*)-([0-9]+)")

GetOwner = Callable[[str, str, str], Obj | None]
"""``get_owner(kind, namespace, name)``: the object, or ``None`` when it does not exist."""


def parse_timestamp(text: str) -> float:
    """RFC 3339 (``2024-05-01T10:00:00Z``) → seconds since the epoch.  Raises ValueError."""
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return stamp.timestamp()


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_map(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        return MappingProxyType({})
    return MappingProxyType({str(k): str(v) for k, v in value.items()})


@dataclass(frozen=True)
class OwnerRef:
    """One ``metadata.ownerReferences`` entry."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool

    @property
    def group(self) -> str:
        """The API group ("" for the core group, whose apiVersion has no slash)."""
        return self.api_version.split("/", 1)[0] if "/" in self.api_version else ""

    @classmethod
    def from_dict(cls, ref: Mapping[str, Any]) -> OwnerRef:
        return cls(
            api_version=_str(ref.get("apiVersion")),
            kind=_str(ref.get("kind")),
            name=_str(ref.get("name")),
            uid=_str(ref.get("uid")),
            controller=ref.get("controller") is True,
        )


def _owners(meta: Mapping[str, Any]) -> tuple[OwnerRef, ...]:
    refs = meta.get("ownerReferences")
    if not isinstance(refs, list):
        return ()
    return tuple(OwnerRef.from_dict(ref) for ref in refs if isinstance(ref, dict))


def _controller_of(meta: Mapping[str, Any]) -> OwnerRef | None:
    for ref in _owners(meta):
        if ref.controller:
            return ref
    return None


@dataclass(frozen=True)
class PodInfo:
    """What the IPAM needs to know about one pod."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    node_name: str = ""
    phase: str = "Pending"
    status_reason: str = ""  # status.reason, e.g. "Evicted"
    deletion_timestamp: float | None = None  # seconds since the epoch
    deletion_grace_seconds: int | None = None  # metadata.deletionGracePeriodSeconds
    termination_grace_seconds: int | None = None  # spec.terminationGracePeriodSeconds
    restart_policy: str = "Always"
    host_network: bool = False
    pod_ips: tuple[str, ...] = ()  # status.podIPs
    owners: tuple[OwnerRef, ...] = ()
    finished_at: float | None = None  # latest containerStatuses[].state.terminated.finishedAt

    @property
    def key(self) -> str:
        """``namespace/name``, as pool records name pods."""
        return f"{self.namespace}/{self.name}"

    @property
    def controller(self) -> OwnerRef | None:
        """The owner reference with ``controller: true``, if any."""
        for ref in self.owners:
            if ref.controller:
                return ref
        return None

    @property
    def statefulset_name(self) -> str | None:
        """The name of the apps/v1 StatefulSet controlling this pod, if one does."""
        ref = self.controller
        if ref is not None and ref.api_version == "apps/v1" and ref.kind == "StatefulSet":
            return ref.name
        return None

    @property
    def terminating(self) -> bool:
        return self.deletion_timestamp is not None

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> PodInfo:
        """Build from a Pod object as the API returns it.  Raises Invalid on a malformed timestamp."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        namespace, name = _str(meta.get("namespace")), _str(meta.get("name"))
        deletion: float | None = None
        stamp = meta.get("deletionTimestamp")
        if stamp:
            try:
                deletion = parse_timestamp(str(stamp))
            except ValueError:
                raise Invalid(
                    "Pod", f"{namespace}/{name}", "metadata.deletionTimestamp", f"{stamp!r} is not RFC 3339"
                ) from None
        pod_ips: list[str] = []
        for entry in status.get("podIPs") or ():
            if isinstance(entry, dict) and isinstance(entry.get("ip"), str):
                pod_ips.append(entry["ip"])
        if not pod_ips and isinstance(status.get("podIP"), str) and status["podIP"]:
            pod_ips.append(status["podIP"])
        finished: list[float] = []
        for container in status.get("containerStatuses") or ():
            terminated = ((container or {}).get("state") or {}).get("terminated") or {}
            if isinstance(terminated.get("finishedAt"), str):
                try:
                    finished.append(parse_timestamp(terminated["finishedAt"]))
                except ValueError:
                    continue
        return cls(
            namespace=namespace,
            name=name,
            uid=_str(meta.get("uid")),
            labels=_str_map(meta.get("labels")),
            annotations=_str_map(meta.get("annotations")),
            node_name=_str(spec.get("nodeName")),
            phase=_str(status.get("phase")) or "Pending",
            status_reason=_str(status.get("reason")),
            deletion_timestamp=deletion,
            deletion_grace_seconds=_int_or_none(meta.get("deletionGracePeriodSeconds")),
            termination_grace_seconds=_int_or_none(spec.get("terminationGracePeriodSeconds")),
            restart_policy=_str(spec.get("restartPolicy")) or "Always",
            host_network=spec.get("hostNetwork") is True,
            pod_ips=tuple(pod_ips),
            owners=_owners(meta),
            finished_at=max(finished) if finished else None,
        )


def is_pod_alive(pod: PodInfo | None) -> bool:
    """Spiderpool's rule: not alive when terminating, Succeeded with restartPolicy other than Always,
    Failed with restartPolicy Never, or Failed because it was evicted."""
    if pod is None or pod.deletion_timestamp is not None:
        return False
    if pod.phase == "Succeeded" and pod.restart_policy != "Always":
        return False
    failed_for_good = pod.restart_policy == "Never" or pod.status_reason == "Evicted"
    return not (pod.phase == "Failed" and failed_for_good)


@dataclass(frozen=True)
class TopController:
    """The workload a pod belongs to (the pod itself when it has no controller)."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    app: Obj | None = field(default=None, compare=False, repr=False)  # the object, when fetched

    @property
    def builtin(self) -> bool:
        """A Kubernetes workload kind (as opposed to a third-party controller such as OpenKruise)."""
        return self.api_version in BUILTIN_API_VERSIONS and self.kind in BUILTIN_KINDS

    @property
    def orphan(self) -> bool:
        """The pod has no controller."""
        return self.api_version == "v1" and self.kind == "Pod"

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def label_gv(self) -> str:
        """The api version as a label value: ``apps_v1``, or ``v1`` for the core group."""
        return self.api_version.replace("/", "_", 1)

    @property
    def app_key(self) -> str:
        """Spiderpool's application key, e.g. ``apps_v1_Deployment_default_nginx``."""
        return f"{self.label_gv}_{self.kind}_{self.namespace}_{self.name}"


def _top(api_version: str, kind: str, obj: Obj) -> TopController:
    meta = obj.get("metadata") or {}
    return TopController(
        api_version=api_version,
        kind=kind,
        namespace=_str(meta.get("namespace")),
        name=_str(meta.get("name")),
        uid=_str(meta.get("uid")),
        app=obj,
    )


def _fetch(get_owner: GetOwner, kind: str, namespace: str, name: str) -> Obj:
    obj = get_owner(kind, namespace, name)
    if obj is None:
        raise NotFound(kind, name, namespace)
    return obj


def resolve_top_controller(pod: PodInfo, get_owner: GetOwner) -> TopController:
    """The pod's top controller, computed from its controller owner reference and ``get_owner``.

    Pod → ReplicaSet → Deployment, Job → CronJob, StatefulSet, DaemonSet; a third-party owner (an
    apiVersion outside v1, apps/v1, batch/v1, or an unknown kind) is returned as the reference says;
    no controller → ``{v1, Pod, namespace, name}``.  A built-in owner that does not exist raises NotFound
    (the pod is being torn down or the cache is behind: the caller retries)."""
    ref = pod.controller
    if ref is None:
        return TopController("v1", "Pod", pod.namespace, pod.name, pod.uid)
    third_party = TopController(ref.api_version, ref.kind, pod.namespace, ref.name, ref.uid)
    if ref.api_version not in BUILTIN_API_VERSIONS:
        return third_party
    if ref.kind == "ReplicaSet":
        rs = _fetch(get_owner, "ReplicaSet", pod.namespace, ref.name)
        up = _controller_of(rs.get("metadata") or {})
        if up is not None and up.api_version == "apps/v1" and up.kind == "Deployment":
            return _top("apps/v1", "Deployment", _fetch(get_owner, "Deployment", pod.namespace, up.name))
        return _top("apps/v1", "ReplicaSet", rs)
    if ref.kind == "Job":
        job = _fetch(get_owner, "Job", pod.namespace, ref.name)
        up = _controller_of(job.get("metadata") or {})
        if up is not None and up.api_version == "batch/v1" and up.kind == "CronJob":
            return _top("batch/v1", "CronJob", _fetch(get_owner, "CronJob", pod.namespace, up.name))
        return _top("batch/v1", "Job", job)
    if ref.kind in ("StatefulSet", "DaemonSet"):
        return _top("apps/v1", ref.kind, _fetch(get_owner, ref.kind, pod.namespace, ref.name))
    return third_party


def statefulset_ordinal(pod_name: str) -> tuple[str, int] | None:
    """``"web-3"`` → ``("web", 3)``; ``None`` when the name does not end in ``-<digits>``."""
    match = _ORDINAL_RE.fullmatch(pod_name)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def is_valid_statefulset_pod(pod_name: str, statefulset: Mapping[str, Any] | None) -> bool:
    """Whether ``pod_name`` is a member the StatefulSet still wants: it exists, the name is
    ``<sts>-<ordinal>`` and the ordinal is in ``[start, start + replicas)`` (``spec.ordinals.start``,
    default 0; ``spec.replicas`` default 1)."""
    if statefulset is None:
        return False
    meta = statefulset.get("metadata") or {}
    replicas, start = statefulset_size(statefulset)
    return ordinal_in_range(pod_name, _str(meta.get("name")), replicas, start)


def statefulset_size(statefulset: Mapping[str, Any]) -> tuple[int, int]:
    """``(spec.replicas, spec.ordinals.start)`` with Kubernetes' defaults (1 and 0)."""
    spec = statefulset.get("spec") or {}
    replicas = _int_or_none(spec.get("replicas"))
    start = _int_or_none((spec.get("ordinals") or {}).get("start"))
    return (1 if replicas is None else replicas), (start or 0)


def ordinal_in_range(pod_name: str, statefulset_name: str, replicas: int, start: int = 0) -> bool:
    """``pod_name`` is ``<statefulset_name>-<n>`` with ``start <= n < start + replicas``."""
    parsed = statefulset_ordinal(pod_name)
    if parsed is None or parsed[0] != statefulset_name:
        return False
    return start <= parsed[1] < start + replicas
