"""The SpiderSubnet auto-pool controller (leader only).

For every Deployment, ReplicaSet (without a Deployment owner), StatefulSet, DaemonSet, Job (without a
CronJob owner) and CronJob whose *pod template* carries ``ipam.spidernet.io/subnets`` or ``subnet``, it
keeps one SpiderIPPool per (NIC, IP family) cut from the named SpiderSubnet and sized
``ippool-ip-number`` (``+N`` = replicas + N; the default is ``+default_flexible_ip_number``).  The pure
policy is ``ipam.autopool.plan``; pools are written through ``ipam.admin.apply_object`` (admission, so
an auto pool can never overlap another pool of the subnet, and shrinking never drops an address in
use), and the subnet's status follows the pools (``ipam.controllers.pool.write_subnet_status``).

When the application goes (or is replaced by one of another UID, or stops asking for a pool), its pools
labelled ``ippool-reclaim: "true"`` are deleted through ``ipam.admin.delete_object``: at once when
empty, else marked terminating so nothing new is allocated from them and the pool controller removes
them after the IP GC has released their records.  ``"false"`` pools stay for a later application of
the same kind, namespace and name, which takes them over (the UID label is refreshed).

It also adopts orphan pools (:meth:`SubnetController.adopt_orphans`): a SpiderIPPool of a subnet's CIDR
written before the subnet gets the subnet as its controller owner, the owner label and the subnet's
gateway and routes, as Spiderpool's subnet controller does; deleting the subnet then deletes it too
(``ipam.controllers.owner_gc``).

Every method is idempotent: running it again with nothing changed writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from ipam import admin, admission
from ipam import annotations as an
from ipam.autopool import (
    LABEL_APP_KIND,
    LABEL_APP_NAME,
    LABEL_APP_NAMESPACE,
    LABEL_APP_UID,
    LABEL_RECLAIM,
    Action,
    AppRequest,
    AutoPoolError,
    find_auto_pool,
    is_auto_pool,
    label_value,
    plan,
)
from ipam.controllers.pool import ReconcileReport, controlled_pools, parse_pools, write_subnet_status
from ipam.errors import Conflict, Invalid, IpamError, NotFound
from ipam.model import LABEL_OWNER_SUBNET, IPPool, ReservedIP, Subnet, reserved_set
from ipam.ranges import Family, canonical_cidr
from ipam.records import Obj, WatchEvent
from ipam.store.protocol import Store
from ipam.workload import TopController

__all__ = [
    "APP_KINDS",
    "SubnetController",
    "adoptable",
    "app_requests",
    "app_top",
    "managed_by_parent",
    "pod_template_annotations",
]

LOG = logging.getLogger("spiderbgp.ipam.subnets")

APP_KINDS: Final = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob")
_API_VERSIONS: Final = {
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}
# the kind whose controller owns a child's pods for auto-pool purposes (Pod -> RS -> Deployment, ...)
_PARENTS: Final = {"ReplicaSet": ("apps/v1", "Deployment"), "Job": ("batch/v1", "CronJob")}
_RETRIES: Final = 4


def _meta(app: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = app.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _where(app: Mapping[str, Any]) -> str:
    meta = _meta(app)
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


def _template_path(kind: str) -> str:
    return "spec.jobTemplate.spec.template" if kind == "CronJob" else "spec.template"


def pod_template_annotations(app: Mapping[str, Any]) -> dict[str, str]:
    """The annotations of the application's pod template (a CronJob's job template's pod template)."""
    node: Any = app
    for key in [*_template_path(str(app.get("kind") or "")).split("."), "metadata", "annotations"]:
        node = node.get(key) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        return {}
    return {str(k): str(v) for k, v in node.items()}


def managed_by_parent(app: Mapping[str, Any]) -> bool:
    """A ReplicaSet controlled by a Deployment, or a Job controlled by a CronJob: the parent's pool
    serves its pods (the pods' top controller is the parent)."""
    parent = _PARENTS.get(str(app.get("kind") or ""))
    if parent is None:
        return False
    for ref in _meta(app).get("ownerReferences") or ():
        if (
            isinstance(ref, Mapping)
            and ref.get("controller") is True
            and (ref.get("apiVersion"), ref.get("kind")) == parent
        ):
            return True
    return False


def app_top(app: Obj) -> TopController:
    """The application as the top controller its pods resolve to."""
    kind = str(app.get("kind") or "")
    meta = _meta(app)
    return TopController(
        api_version=str(app.get("apiVersion") or _API_VERSIONS.get(kind, "")),
        kind=kind,
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        app=app,
    )


def app_requests(app: Obj, *, default_flexible_ip_number: int) -> list[AppRequest]:
    """The auto pools the application's pod template asks for (none without a subnet annotation).

    Raises Invalid naming the application and the template annotation when one is malformed."""
    kind = str(app.get("kind") or "")
    where = _where(app)
    annotations = pod_template_annotations(app)
    if an.ANNO_SUBNETS not in annotations and an.ANNO_SUBNET not in annotations:
        return []
    try:
        if an.ANNO_SUBNETS in annotations:
            subnets = an.parse_subnets(annotations[an.ANNO_SUBNETS], pod=where)
        else:
            subnets = an.parse_subnet(annotations[an.ANNO_SUBNET], pod=where)
        ip_number = an.IPNumber(flexible=True, count=default_flexible_ip_number)
        if an.ANNO_IP_NUMBER in annotations:
            ip_number = an.parse_ip_number(annotations[an.ANNO_IP_NUMBER], pod=where)
        reclaim = True
        if an.ANNO_RECLAIM in annotations:
            reclaim = an.parse_reclaim(annotations[an.ANNO_RECLAIM], pod=where)
    except an.AnnotationError as err:
        raise Invalid(kind, where, f"{_template_path(kind)}.{err.field}", err.reason) from None
    top = app_top(app)
    out: list[AppRequest] = []
    for item in subnets.items:
        families: tuple[tuple[Family, str | None], ...] = ((4, item.ipv4), (6, item.ipv6))
        for family, subnet in families:
            if subnet is not None:
                out.append(AppRequest(top, item.interface, family, subnet, ip_number, reclaim))
    return out


def adoptable(pools: Sequence[Obj], subnets: Sequence[Obj]) -> list[tuple[IPPool, Subnet]]:
    """The pools a subnet should control but does not, each with that subnet: pools not terminating, of
    the CIDR and family of a subnet that is not terminating, without its controller reference and owner
    label.  Pools that do not parse are skipped (admission reports them when they are written)."""
    out: list[tuple[IPPool, Subnet]] = []
    for obj in pools:
        try:
            pool = IPPool.from_obj(obj)
        except Invalid:
            continue
        if pool.terminating:
            continue
        owner = admission.owner_subnet(pool, subnets)
        if owner is not None and not admission.is_owned_by(obj, owner):
            out.append((pool, owner))
    return out


def _adopter(owner: Subnet) -> Callable[[Obj], Obj | None]:
    def change(obj: Obj) -> Obj | None:
        if obj["metadata"].get("deletionTimestamp") or admission.is_owned_by(obj, owner):
            return None
        return admission.adopt(obj, owner)

    return change


class SubnetController:
    """Creates, resizes and reclaims the auto pools of applications that ask for them."""

    def __init__(self, store: Store, *, default_flexible_ip_number: int = 1) -> None:
        if default_flexible_ip_number < 0:
            raise ValueError("default_flexible_ip_number must be >= 0")
        self.store = store
        self.default_flexible_ip_number = default_flexible_ip_number
        self._refused: dict[str, tuple[str, str]] = {}  # pool -> (pool version, subnet spec) reported

    # ------------------------------------------------------------------ entry points

    def handle(self, event: WatchEvent) -> ReconcileReport:
        """One watch event of an application kind."""
        if event.type == "DELETED":
            return self.app_deleted(event.object)
        return self.reconcile(event.object)

    def reconcile(self, app: Obj) -> ReconcileReport:
        """Bring the application's auto pools to what its pod template asks for."""
        report = ReconcileReport()
        kind = str(app.get("kind") or "")
        if kind not in APP_KINDS or managed_by_parent(app):
            return report
        if _meta(app).get("deletionTimestamp"):
            return self.app_deleted(app)
        top = app_top(app)
        touched: set[str] = set()
        wanted: set[str] = set()
        try:
            requests = app_requests(app, default_flexible_ip_number=self.default_flexible_ip_number)
        except Invalid as err:
            report.errors.append(str(err))
            requests = None  # keep whatever pools it has until the annotation is fixed
        for request in requests or ():
            try:
                action = self._ensure(request, report)
            except IpamError as err:
                report.errors.append(str(err))
                found = self._pool_of(request)
                if found is not None:
                    wanted.add(found)  # keep it while the error lasts
                continue
            wanted.add(action.name)
            touched.add(request.subnet)
        if requests is not None and top.uid:
            for pool in self._pools({LABEL_APP_UID: top.uid}):
                if pool.name not in wanted and is_auto_pool(pool):
                    touched.add(pool.labels.get(LABEL_OWNER_SUBNET, ""))
                    self._reclaim(
                        pool, f"{top.kind} {top.namespace}/{top.name} no longer asks for it", report
                    )
        self._sync_subnets(touched, report)
        self._log(report)
        return report

    def app_deleted(self, app: Obj) -> ReconcileReport:
        """The application is gone: reclaim its ``ippool-reclaim: "true"`` pools, keep the others."""
        report = ReconcileReport()
        top = app_top(app)
        if not top.uid:
            return report
        touched: set[str] = set()
        for pool in self._pools({LABEL_APP_UID: top.uid}):
            if is_auto_pool(pool):
                touched.add(pool.labels.get(LABEL_OWNER_SUBNET, ""))
                self._reclaim(pool, f"{top.kind} {top.namespace}/{top.name} was deleted", report)
        self._sync_subnets(touched, report)
        self._log(report)
        return report

    def adopt_orphans(self) -> ReconcileReport:
        """Spiderpool's subnet controller: every SpiderIPPool of a subnet's CIDR (and family) that the
        subnet does not control yet (written before the subnet, or straight through the store) gets the
        controller ownerReference, the ``owner-spider-subnet`` label and the subnet's gateway and routes
        where it has none (``ipam.admission.adopt``).  The write goes through admission; a pool that
        cannot be adopted (its IPs are not the subnet's, the inherited gateway is one of its IPs...)
        stays as it is and its one-line error is reported once per version of the pool and of the subnet's
        spec.
        Terminating pools and subnets are left alone."""
        report = ReconcileReport()
        try:
            pool_objs = self.store.list(IPPool.KIND, allocated_ips=False)
            subnet_objs = self.store.list(Subnet.KIND)
        except IpamError as err:
            report.errors.append(f"cannot list pools and subnets: {err}")
            return report
        refused: dict[str, tuple[str, str]] = {}
        for pool, owner in adoptable(pool_objs, subnet_objs):
            versions = (pool.resource_version, repr((owner.uid, owner.usable, owner.gateway, owner.routes)))
            try:
                written = admin.update_object(self.store, IPPool.KIND, pool.name, _adopter(owner))
            except NotFound:
                continue
            except IpamError as err:
                refused[pool.name] = versions
                if self._refused.get(pool.name) != versions:
                    report.errors.append(f"{Subnet.KIND} {owner.name} cannot adopt its pool: {err}")
                continue
            if written is not None:
                report.updated.append(f"{IPPool.KIND}/{pool.name}")
                LOG.info("SpiderSubnet %s adopted SpiderIPPool %s", owner.name, pool.name)
        self._refused = refused
        self._log(report)
        return report

    def reconcile_all(self) -> ReconcileReport:
        """Adopt orphan pools, reconcile every application, then reclaim auto pools whose application is
        gone or was replaced by another of the same name (another UID), then refresh every subnet's
        status."""
        report = self.adopt_orphans()
        live: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> uid
        for kind in APP_KINDS:
            try:
                apps = self.store.list(kind)
            except IpamError as err:
                report.errors.append(f"cannot list {kind}s: {err}")
                return report  # without the full list, no pool may be judged orphaned
            for app in apps:
                top = app_top(app)
                live[(kind, top.namespace, label_value(top.name))] = top.uid  # as the pool's label
                report.extend(self.reconcile(app))
        for pool in self._pools(None):
            if not is_auto_pool(pool) or pool.labels.get(LABEL_APP_KIND) not in APP_KINDS:
                continue  # third-party controllers' pools are the agent's (inline) business
            key = (
                pool.labels[LABEL_APP_KIND],
                pool.labels.get(LABEL_APP_NAMESPACE, ""),
                pool.labels[LABEL_APP_NAME],
            )
            uid = live.get(key)
            if uid is not None and uid == pool.labels.get(LABEL_APP_UID):
                continue
            why = "was deleted" if uid is None else f"was replaced (UID {uid})"
            self._reclaim(pool, f"{key[0]} {key[1]}/{key[2]} {why}", report)
        try:
            subnets = [str(o["metadata"]["name"]) for o in self.store.list(Subnet.KIND)]
        except IpamError as err:
            report.errors.append(f"cannot list {Subnet.KIND}s: {err}")
            subnets = []
        self._sync_subnets(set(subnets), report)
        return report

    # ------------------------------------------------------------------ pieces

    def _pools(self, labels: Mapping[str, str] | None) -> list[IPPool]:
        return parse_pools(self.store.list(IPPool.KIND, labels=labels))

    def _pool_of(self, request: AppRequest) -> str | None:
        try:
            found = find_auto_pool(self._pools(None), request)
        except IpamError:
            return None
        return found.name if found is not None else None

    def _reserved(self, family: int) -> Any:
        reserved = []
        for obj in self.store.list(ReservedIP.KIND):
            try:
                reserved.append(ReservedIP.from_obj(obj))
            except Invalid:
                continue
        return reserved_set(reserved, family)

    def _plan(self, request: AppRequest) -> tuple[Action, IPPool | None]:
        what = f'{request.top.kind} "{request.top.namespace}/{request.top.name}"'
        try:
            subnet = Subnet.from_obj(self.store.get(Subnet.KIND, request.subnet))
        except NotFound:
            raise Invalid(
                request.top.kind,
                f"{request.top.namespace}/{request.top.name}",
                f"{_template_path(request.top.kind)}.metadata.annotations[ipam.spidernet.io/subnet]",
                f'SpiderSubnet "{request.subnet}" not found',
            ) from None
        if subnet.terminating:
            raise AutoPoolError(
                f'{what}: SpiderSubnet "{subnet.name}" is being deleted; no auto pool is made or resized from it'
            )
        pools = self._pools(None)
        # the subnet's free addresses follow the pools as stored now, not a possibly older status
        fresh = replace(subnet, controlled_pools=controlled_pools(subnet, pools))
        existing = find_auto_pool(pools, request)
        allocated: Sequence[int] = ()
        if existing is not None:
            if existing.terminating:
                raise Conflict(f"{what}: auto pool {existing.name} is terminating; waiting for it to go")
            if canonical_cidr(existing.subnet) != canonical_cidr(subnet.subnet):
                raise Invalid(
                    IPPool.KIND,
                    existing.name,
                    "spec.subnet",
                    f'{existing.subnet} is not the CIDR {subnet.subnet} of SpiderSubnet "{subnet.name}" '
                    f"that {what} names (ApplicationSubnetChanged)",
                )
            allocated = self.store.usage(existing.name).allocated
        action = plan(request, fresh, existing, allocated, reserved=self._reserved(request.family))
        return action, existing

    def _ensure(self, request: AppRequest, report: ReconcileReport) -> Action:
        """Create or resize one auto pool; a Conflict, or an admission refusal caused by an allocation
        that raced the resize, re-reads and plans again."""
        last: IpamError | None = None
        for _ in range(_RETRIES):
            try:
                action, _ = self._plan(request)
                if action.kind == "create" and action.pool is not None:
                    admin.apply_object(self.store, action.pool)
                elif action.kind == "resize":
                    stored = self.store.get(IPPool.KIND, action.name)
                    admin.apply_object(self.store, action.apply_to(stored))
                if action.kind in ("create", "resize"):
                    report.updated.append(f"{IPPool.KIND}/{action.name}")
                    LOG.info("auto pool %s: %s (%s)", action.name, action.kind, action.reason)
                return action
            except Conflict as err:
                last = err
            except Invalid as err:
                if err.kind != IPPool.KIND or "is being used" not in err.reason:
                    raise
                last = err  # an IP being dropped was allocated meanwhile: plan again
        assert last is not None
        raise last

    def _reclaim(self, pool: IPPool, why: str, report: ReconcileReport) -> None:
        if pool.labels.get(LABEL_RECLAIM, "true") != "true":
            return  # kept for a later application of the same kind, namespace and name
        try:
            message = admin.delete_object(self.store, IPPool.KIND, pool.name)
        except NotFound:
            return
        except IpamError as err:
            report.errors.append(str(err))
            return
        if message.endswith(" deleted"):
            report.deleted.append(f"{IPPool.KIND}/{pool.name}")
        elif not pool.terminating:
            report.updated.append(f"{IPPool.KIND}/{pool.name}")
        LOG.info("auto pool %s: %s; %s", pool.name, why, message)

    def _sync_subnets(self, names: set[str], report: ReconcileReport) -> None:
        if not names - {""}:
            return
        try:
            pools = self._pools(None)
        except IpamError as err:
            report.errors.append(str(err))
            return
        for name in sorted(names - {""}):
            with report.step():
                if write_subnet_status(self.store, name, pools):
                    report.updated.append(f"{Subnet.KIND}/{name}")

    @staticmethod
    def _log(report: ReconcileReport) -> None:
        report.log_errors(LOG, "subnet controller")
