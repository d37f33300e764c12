"""SpiderSubnet auto-created pools: one SpiderIPPool per (application, NIC, IP family), carved out of a
SpiderSubnet and sized from the application's replica count.

Pure logic only: naming, desired size, the subnet's free addresses, growing (take the lowest free subnet
addresses) and shrinking (drop the lowest unallocated pool addresses), the labels, affinity and owner
reference an auto pool carries (reference §2.3), and :func:`plan`, which says what to do with an
application's pool: create, resize, delete or keep.  The controller that calls it does the I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ipam.annotations import IPNumber
from ipam.errors import IpamError
from ipam.kinds import SPIDER_API
from ipam.model import FINALIZER, LABEL_IPPOOL_CIDR, LABEL_OWNER_SUBNET, IPPool, PreAllocation, Subnet
from ipam.ranges import Family, Interval, IntervalSet, canonical_cidr, cidr_label_value
from ipam.records import Obj
from ipam.workload import TopController

__all__ = [
    "AFFINITY_KEYS",
    "LABEL_APP_GV",
    "LABEL_APP_KIND",
    "LABEL_APP_NAME",
    "LABEL_APP_NAMESPACE",
    "LABEL_APP_UID",
    "LABEL_INTERFACE",
    "LABEL_IP_VERSION",
    "LABEL_RECLAIM",
    "MAX_NAME_LENGTH",
    "Action",
    "AppRequest",
    "AutoPoolError",
    "affinity_labels",
    "auto_pool_name",
    "auto_pool_object",
    "desired_size",
    "find_auto_pool",
    "grow",
    "is_auto_pool",
    "label_value",
    "matches_app",
    "plan",
    "replicas_of",
    "shrink",
    "subnet_free",
]

_P: Final = "ipam.spidernet.io/"
LABEL_APP_GV: Final = _P + "owner-application-gv"
LABEL_APP_KIND: Final = _P + "owner-application-kind"
LABEL_APP_NAMESPACE: Final = _P + "owner-application-namespace"
LABEL_APP_NAME: Final = _P + "owner-application-name"
LABEL_APP_UID: Final = _P + "owner-application-uid"
LABEL_INTERFACE: Final = _P + "interface"
LABEL_IP_VERSION: Final = _P + "ip-version"
LABEL_RECLAIM: Final = _P + "ippool-reclaim"
ANNO_IP_NUMBER: Final = _P + "ippool-ip-number"

AFF_GROUP: Final = _P + "app-api-group"
AFF_VERSION: Final = _P + "app-api-version"
AFF_KIND: Final = _P + "app-kind"
AFF_NAMESPACE: Final = _P + "app-namespace"
AFF_NAME: Final = _P + "app-name"
AFFINITY_KEYS: Final = (AFF_GROUP, AFF_VERSION, AFF_KIND, AFF_NAMESPACE, AFF_NAME)

MAX_NAME_LENGTH: Final = 253  # a DNS-1123 subdomain
MAX_LABEL_VALUE: Final = 63  # the API server refuses longer label values
_UID_CHARS: Final = 5


class AutoPoolError(IpamError):
    """An auto pool cannot be sized as asked (not enough free subnet or pool addresses, a third-party
    workload without a fixed ippool-ip-number...).  Retryable: replicas or the subnet may change."""


# --------------------------------------------------------------------------------------------------
# naming, size


def auto_pool_name(app_name: str, family: Family, nic: str, app_uid: str) -> str:
    """``auto{4|6}-<app>-<nic>-<first 5 chars of the UID's last dash group>``, lower case, at most 253
    characters (the application name is shortened to fit)."""
    tail = app_uid.rsplit("-", 1)[-1][:_UID_CHARS].lower()
    fixed = len(f"auto{family}---") + len(nic) + len(tail)
    # cut where it fits; a cut ending in '.' would leave ".-" in the name, which is no DNS-1123 subdomain
    app = app_name[: max(0, MAX_NAME_LENGTH - fixed)].rstrip(".")
    return f"auto{family}-{app}-{nic}-{tail}".lower()


def label_value(text: str) -> str:
    """``text`` as a label value: its first 63 characters, ending alphanumeric (a workload's or API
    group's name may be longer; the API server refuses such a label, so the auto pool is labelled with
    the cut name, and found again by it)."""
    return text[:MAX_LABEL_VALUE].rstrip("-_.")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _job_pods(job_spec: Mapping[str, Any]) -> int:
    """Pods a Job runs at once, Spiderpool's way: completions when set (0 → 1), else parallelism
    (0 → 1), else 1."""
    parallelism, completions = _int(job_spec.get("parallelism")), _int(job_spec.get("completions"))
    if completions is not None:
        return completions or 1
    if parallelism is not None:
        return parallelism or 1
    return 1


def replicas_of(top: TopController) -> int | None:
    """The replica count of a built-in workload, from ``top.app``; None for third-party controllers
    (and for a workload whose object was not fetched)."""
    obj = top.app
    if not top.builtin or obj is None:
        return None
    spec = obj.get("spec") or {}
    if top.kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        replicas = _int(spec.get("replicas"))
        return 1 if replicas is None else replicas  # the API server defaults replicas to 1
    if top.kind == "DaemonSet":
        return _int((obj.get("status") or {}).get("desiredNumberScheduled")) or 0
    if top.kind == "Job":
        return _job_pods(spec)
    if top.kind == "CronJob":
        return _job_pods(((spec.get("jobTemplate") or {}).get("spec")) or {})
    return 1  # a bare Pod


def desired_size(ip_number: IPNumber, replicas: int | None, *, what: str) -> int:
    """``replicas + N`` for ``+N``, ``N`` otherwise.  A flexible number needs a replica count (third-party
    controllers must use a fixed number); ``what`` names the workload in the error."""
    if not ip_number.flexible:
        return ip_number.count
    if replicas is None:
        raise AutoPoolError(
            f'{what}: ipam.spidernet.io/ippool-ip-number "{ip_number}" is flexible, but the replica count of '
            "a third-party controller is unknown: use a fixed number"
        )
    return replicas + ip_number.count


# --------------------------------------------------------------------------------------------------
# address arithmetic


def subnet_free(subnet: Subnet, reserved: IntervalSet, pools: Iterable[IntervalSet] = ()) -> IntervalSet:
    """The subnet's addresses no pool holds: ``ips - excludeIPs - every controlled pool's IPs - reserved``.

    Controlled pools come from ``status.controlledIPPools``; ``pools`` adds pools not recorded there yet."""
    taken: list[Interval] = [*reserved.intervals]
    for pre in subnet.controlled_pools.values():
        taken.extend(IntervalSet.from_strings(pre.ips, subnet.ip_version).intervals)
    for ips in pools:
        taken.extend(ips.intervals)
    return subnet.usable.difference(IntervalSet.of(taken))


def _lowest(source: IntervalSet, count: int) -> IntervalSet:
    """The ``count`` lowest addresses of ``source`` (which holds at least that many)."""
    out: list[Interval] = []
    left = count
    for lo, hi in source:
        if left <= 0:
            break
        take = min(left, hi - lo + 1)
        out.append((lo, lo + take - 1))
        left -= take
    return IntervalSet(tuple(out))


def grow(subnet_free: IntervalSet, current: IntervalSet, need: int) -> IntervalSet:
    """``current`` plus the ``need`` lowest addresses of ``subnet_free`` that it lacks."""
    if need <= 0:
        return current
    candidates = subnet_free.difference(current)
    if candidates.size < need:
        raise AutoPoolError(f"insufficient free IPs in the subnet: {need} needed, {candidates.size} free")
    return current.union(_lowest(candidates, need))


def shrink(pool_ips: IntervalSet, allocated: Sequence[int], drop: int) -> IntervalSet:
    """``pool_ips`` without its ``drop`` lowest unallocated addresses."""
    if drop <= 0:
        return pool_ips
    used = IntervalSet.of((ip, ip) for ip in allocated)
    free = pool_ips.difference(used)
    if free.size < drop:
        raise AutoPoolError(f"the pool has {free.size} unallocated IPs, cannot drop {drop}")
    return pool_ips.difference(_lowest(free, drop))


# --------------------------------------------------------------------------------------------------
# labels, affinity, the pool object


def affinity_labels(top: TopController) -> dict[str, str]:
    """The five ``app-*`` podAffinity keys of an auto pool, naming the workload (not pod labels)."""
    return {
        AFF_GROUP: top.group,
        AFF_VERSION: top.version,
        AFF_KIND: top.kind,
        AFF_NAMESPACE: top.namespace,
        AFF_NAME: top.name,
    }


def is_auto_pool(pool: IPPool) -> bool:
    return LABEL_APP_KIND in pool.labels and LABEL_APP_NAME in pool.labels


def matches_app(pool: IPPool, top: TopController) -> bool:
    """Whether an auto pool's podAffinity names this workload (all five keys equal)."""
    if pool.pod_affinity is None or pool.pod_affinity.match_expressions:
        return False
    labels = dict(pool.pod_affinity.match_labels)
    return all(labels.get(key) == value for key, value in affinity_labels(top).items())


@dataclass(frozen=True)
class AppRequest:
    """One auto pool an application asks for: its workload, NIC, family, subnet and sizing."""

    top: TopController
    nic: str
    family: Family
    subnet: str  # SpiderSubnet name
    ip_number: IPNumber
    reclaim: bool = True
    replicas: int | None = None  # None: use replicas_of(top)

    @property
    def pool_name(self) -> str:
        return auto_pool_name(self.top.name, self.family, self.nic, self.top.uid)

    def size(self) -> int:
        replicas = self.replicas if self.replicas is not None else replicas_of(self.top)
        what = f"{self.top.kind} {self.top.namespace}/{self.top.name}"
        return desired_size(self.ip_number, replicas, what=what)

    def labels(self, subnet: Subnet) -> dict[str, str]:
        return {
            LABEL_IPPOOL_CIDR: cidr_label_value(canonical_cidr(subnet.subnet)),
            LABEL_OWNER_SUBNET: subnet.name,
            LABEL_APP_GV: label_value(self.top.label_gv),
            LABEL_APP_KIND: self.top.kind,
            LABEL_APP_NAMESPACE: self.top.namespace,
            LABEL_APP_NAME: label_value(self.top.name),
            LABEL_APP_UID: self.top.uid,
            LABEL_INTERFACE: self.nic,
            LABEL_IP_VERSION: f"IPv{self.family}",
            LABEL_RECLAIM: "true" if self.reclaim else "false",
        }


def find_auto_pool(pools: Iterable[IPPool], request: AppRequest) -> IPPool | None:
    """The application's existing auto pool: same subnet, workload kind/namespace/name, NIC and family.

    A pool of the same UID wins; otherwise a pool of an earlier application of that kind and name kept
    with ``ippool-reclaim: "false"`` is returned for reuse.  Pools of other kinds never match."""
    top = request.top
    want = {
        LABEL_OWNER_SUBNET: request.subnet,
        LABEL_APP_GV: label_value(top.label_gv),
        LABEL_APP_KIND: top.kind,
        LABEL_APP_NAMESPACE: top.namespace,
        LABEL_APP_NAME: label_value(top.name),
        LABEL_INTERFACE: request.nic,
        LABEL_IP_VERSION: f"IPv{request.family}",
    }
    reusable: IPPool | None = None
    for pool in pools:
        if pool.ip_version != request.family or any(pool.labels.get(k) != v for k, v in want.items()):
            continue
        if pool.labels.get(LABEL_APP_UID) == top.uid:
            return pool
        if pool.labels.get(LABEL_RECLAIM) == "false" and not pool.terminating and reusable is None:
            reusable = pool
    return reusable


def auto_pool_object(
    name: str, request: AppRequest, subnet: Subnet, ips: IntervalSet, *, resource_version: str = ""
) -> Obj:
    """The SpiderIPPool object of an auto pool (inherits the subnet's gateway and routes)."""
    meta: dict[str, Any] = {
        "name": name,
        "labels": request.labels(subnet),
        "annotations": {ANNO_IP_NUMBER: str(request.ip_number)},
        "ownerReferences": [
            {
                "apiVersion": SPIDER_API,
                "kind": Subnet.KIND,
                "name": subnet.name,
                "uid": subnet.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "finalizers": [FINALIZER],
    }
    if resource_version:
        meta["resourceVersion"] = resource_version
    spec: dict[str, Any] = {
        "ipVersion": request.family,
        "subnet": subnet.subnet,
        "ips": ips.to_strings(request.family),
        "podAffinity": {"matchLabels": affinity_labels(request.top)},
    }
    if subnet.gateway is not None:
        spec["gateway"] = subnet.gateway
    if subnet.routes:
        spec["routes"] = [r.to_obj() for r in subnet.routes]
    return {"apiVersion": SPIDER_API, "kind": IPPool.KIND, "metadata": meta, "spec": spec}


# --------------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class Action:
    """What to do with one auto pool.

    ``pool`` is the desired object for create/resize (for resize, :meth:`apply_to` merges it into the
    stored object); ``pre_allocation`` is the pool's new entry in the subnet's
    ``status.controlledIPPools`` (None on delete: drop the entry)."""

    kind: Literal["create", "resize", "delete", "keep"]
    name: str
    reason: str
    pool: Obj | None = None
    pre_allocation: PreAllocation | None = None

    def apply_to(self, stored: Obj) -> Obj:
        """A copy of ``stored`` with this action's ``spec.ips``, labels and ip-number annotation."""
        if self.pool is None:
            raise ValueError(f"a {self.kind} action carries no pool to apply")
        out = copy.deepcopy(stored)
        meta = out.setdefault("metadata", {})
        meta.setdefault("labels", {}).update(self.pool["metadata"]["labels"])
        meta.setdefault("annotations", {}).update(self.pool["metadata"]["annotations"])
        out.setdefault("spec", {})["ips"] = list(self.pool["spec"]["ips"])
        return out


def plan(
    app: AppRequest | None,
    subnet: Subnet,
    existing: IPPool | None,
    allocated: Sequence[int],
    *,
    reserved: IntervalSet | None = None,
) -> Action:
    """Decide what the application's auto pool needs.

    ``app`` None means the application is gone: a pool labelled ``ippool-reclaim: "true"`` is deleted
    once nothing in it is allocated (until then it is kept for the GC to drain); a ``"false"`` pool is
    kept for a later application of the same kind and name.  Otherwise the pool is created with the
    lowest free subnet addresses, grown with the lowest free ones, or shrunk by dropping its lowest
    unallocated ones, to the size ``ippool-ip-number`` asks for; a reused pool gets the new UID label.
    ``allocated`` lists the pool's allocated addresses (as integers); ``reserved`` the SpiderReservedIP
    addresses of the family.  Raises AutoPoolError when the subnet or the pool has too few addresses."""
    if app is None:
        if existing is None:
            return Action("keep", "", "no application and no pool")
        if existing.labels.get(LABEL_RECLAIM, "true") != "true":
            return Action("keep", existing.name, 'application gone; pool kept (ippool-reclaim "false")')
        if allocated:
            return Action("keep", existing.name, f"application gone; {len(allocated)} IPs still allocated")
        return Action("delete", existing.name, "application gone and ippool-reclaim is true")

    what = f'{app.top.kind} "{app.top.namespace}/{app.top.name}"'
    if subnet.ip_version != app.family:
        raise AutoPoolError(
            f'{what}: SpiderSubnet "{subnet.name}" is IPv{subnet.ip_version}, not IPv{app.family}'
        )
    size = app.size()
    name = existing.name if existing is not None else app.pool_name
    current = existing.ips if existing is not None else IntervalSet()
    free = subnet_free(subnet, reserved or IntervalSet(), (current,))
    try:
        if current.size < size:
            ips = grow(free, current, size - current.size)
        elif current.size > size:
            ips = shrink(current, allocated, current.size - size)
        else:
            ips = current
    except AutoPoolError as err:
        raise AutoPoolError(f'{what}: auto pool {name} of SpiderSubnet "{subnet.name}": {err}') from None
    pool = auto_pool_object(name, app, subnet, ips)
    pre = PreAllocation(tuple(ips.to_strings(app.family)), app.top.app_key)
    if existing is None:
        return Action("create", name, f"{what} needs {size} IPs", pool, pre)
    relabel = any(existing.labels.get(k) != v for k, v in pool["metadata"]["labels"].items())
    renumber = existing.annotations.get(ANNO_IP_NUMBER) != str(app.ip_number)
    if ips != current or relabel or renumber:
        reason = f"{what} needs {size} IPs, pool has {current.size}"
        if existing.labels.get(LABEL_APP_UID) != app.top.uid:
            reason += " (reused from an earlier application with ippool-reclaim false)"
        return Action("resize", name, reason, pool, pre)
    return Action("keep", name, f"{what} has its {size} IPs", pool, pre)
