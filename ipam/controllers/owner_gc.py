"""Owner-reference garbage collection for the kinds the IPAM owns (leader only).

Kubernetes' garbage collector deletes an object once every owner named in its
``metadata.ownerReferences`` is gone.  The embedded store has no garbage collector, and Spiderpool's
subnet deletion needs one: a SpiderSubnet being deleted keeps its finalizer until the pools it owns are
gone (``ipam.admin.finish_terminating``), while the pools must go because their owner is
being deleted (Spiderpool re-deletes the subnet with foreground propagation for that).  This step does
it for both stores:

* a dependent (a SpiderIPPool) is deleted when it names at least one owner of a tracked kind (a
  SpiderSubnet of ``spiderpool.spidernet.io``) and every owner it names is being deleted
  (``deletionTimestamp``) or gone (no object of that kind and name with that uid);
* owners of kinds it does not track count as alive, so it never deletes what it cannot judge;
* the dependent is deleted the ordinary way: its finalizer (Spiderpool's, added here if a pool was
  written without one) keeps it terminating while it holds IPs, so nothing new is allocated from it,
  releases still work, and the pool controller removes it once empty.

With the Kubernetes store the API server's garbage collector deletes dependents of owners that are
*gone*; it does not act on an owner that is merely terminating, which is what a subnet held by its
finalizer is, so this step is what lets such a subnet finish there too.  Where both act on the same pool
nothing is doubled: a terminating pool is never deleted again, and a pool already gone is skipped.

:func:`plan` is the pure decision over listed objects; :class:`OwnerGC` confirms each decision against
freshly read objects before it deletes, so an owner created after the lists were taken is never taken
for a gone one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ipam.controllers.pool import ReconcileReport
from ipam.errors import Conflict, Invalid, IpamError, NotFound
from ipam.kinds import SPIDER_API
from ipam.model import FINALIZER
from ipam.records import Obj
from ipam.store.protocol import Store
from ipam.workload import OwnerRef

__all__ = [
    "OWNED_KINDS",
    "Collect",
    "OwnerGC",
    "OwnerRef",
    "OwnerState",
    "collect_reason",
    "dependents_of",
    "owner_refs",
    "owner_states",
    "plan",
]

LOG = logging.getLogger("spiderbgp.ipam.owners")

# dependent kind -> the owner kinds whose deletion cascades to it
OWNED_KINDS: Final[Mapping[str, tuple[str, ...]]] = {"SpiderIPPool": ("SpiderSubnet",)}
_GROUP: Final = SPIDER_API.split("/", 1)[0]
_RETRIES: Final = 5


@dataclass(frozen=True)
class OwnerState:
    """A stored owner as the collector sees it."""

    kind: str
    name: str
    uid: str
    terminating: bool


@dataclass(frozen=True)
class Collect:
    """Delete dependent ``kind``/``name`` (read at ``resource_version``) because of ``reason``."""

    kind: str
    name: str
    resource_version: str
    reason: str


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def owner_refs(obj: Mapping[str, Any]) -> tuple[OwnerRef, ...]:
    """The well-formed owner references of an object (entries without kind or uid are skipped)."""
    refs = _meta(obj).get("ownerReferences")
    parsed = (
        OwnerRef.from_dict(r) for r in (refs if isinstance(refs, list) else ()) if isinstance(r, Mapping)
    )
    return tuple(ref for ref in parsed if ref.kind and ref.uid)


def owner_states(objs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], OwnerState]:
    """Stored owners by (kind, uid)."""
    out: dict[tuple[str, str], OwnerState] = {}
    for obj in objs:
        meta = _meta(obj)
        kind, uid = str(obj.get("kind") or ""), str(meta.get("uid") or "")
        if kind and uid:
            out[(kind, uid)] = OwnerState(
                kind, str(meta.get("name") or ""), uid, bool(meta.get("deletionTimestamp"))
            )
    return out


def collect_reason(dependent: Mapping[str, Any], owners: Mapping[tuple[str, str], OwnerState]) -> str | None:
    """Why ``dependent`` must be deleted now, or None to keep it.

    ``owners`` must hold every stored object of the owner kinds tracked for the dependent's kind (by
    (kind, uid)).  A dependent that is already terminating, that names no tracked owner, or that names
    one owner still alive (or of a kind not tracked) is kept."""
    tracked = OWNED_KINDS.get(str(dependent.get("kind") or ""), ())
    if not tracked or _meta(dependent).get("deletionTimestamp"):
        return None
    reasons: list[str] = []
    for ref in owner_refs(dependent):
        if ref.kind not in tracked or ref.group != _GROUP:
            return None  # an owner this step cannot judge counts as alive
        state = owners.get((ref.kind, ref.uid))
        if state is None:
            reasons.append(f"its owner {ref.kind} {ref.name} (uid {ref.uid}) is gone")
        elif state.terminating:
            reasons.append(f"its owner {ref.kind} {ref.name} is being deleted")
        else:
            return None
    return "; ".join(reasons) or None


def plan(dependents: Iterable[Mapping[str, Any]], owners: Iterable[Mapping[str, Any]]) -> list[Collect]:
    """The dependents to delete, given the stored dependents and every stored owner of the tracked
    kinds.  List the dependents first: an owner a listed dependent names existed before the owner list
    was taken, so only a deleted owner can be missing from it."""
    states = owner_states(owners)
    out: list[Collect] = []
    for obj in dependents:
        reason = collect_reason(obj, states)
        if reason is not None:
            meta = _meta(obj)
            out.append(
                Collect(
                    str(obj.get("kind") or ""),
                    str(meta.get("name") or ""),
                    str(meta.get("resourceVersion") or ""),
                    reason,
                )
            )
    return out


def dependents_of(owner_uid: str, objs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of the objects whose owner references name ``owner_uid``, sorted."""
    return sorted(
        str(_meta(o).get("name") or "") for o in objs if any(r.uid == owner_uid for r in owner_refs(o))
    )


class OwnerGC:
    """Deletes dependents (SpiderIPPools) whose owners (SpiderSubnets) are all being deleted or gone."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> ReconcileReport:
        """One pass over every tracked dependent kind.  An error on one object is reported (one line)
        and the others still go."""
        report = ReconcileReport()
        for kind, owner_kinds in OWNED_KINDS.items():
            try:
                dependents = self.store.list(kind, allocated_ips=False)
                owners = [o for k in owner_kinds for o in self.store.list(k, allocated_ips=False)]
            except IpamError as err:
                report.errors.append(f"cannot list {kind}s and their owners: {err}")
                continue
            for item in plan(dependents, owners):
                with report.step(skip_missing=False):
                    if self._delete(item):
                        report.updated.append(f"{item.kind}/{item.name}")
        report.log_errors(LOG, "owner GC")
        return report

    def _fresh_reason(self, dependent: Obj) -> str | None:
        """``collect_reason`` against the owners as stored now (read one by one)."""
        tracked = OWNED_KINDS.get(str(dependent.get("kind") or ""), ())
        states: dict[tuple[str, str], OwnerState] = {}
        for ref in owner_refs(dependent):
            if ref.kind not in tracked:
                continue  # collect_reason keeps the dependent anyway
            try:
                obj = self.store.get(ref.kind, ref.name, allocated_ips=False)
            except NotFound:
                continue
            states.update(owner_states([obj]))
        return collect_reason(dependent, states)

    def _delete(self, item: Collect) -> bool:
        """Delete one dependent if, read again, it still must go.  True when it was deleted (it may stay
        terminating while its finalizer holds it)."""
        for _ in range(_RETRIES):
            try:
                obj = self.store.get(item.kind, item.name, allocated_ips=False)
            except NotFound:
                return False
            reason = self._fresh_reason(obj)
            if reason is None:
                return False
            meta = obj["metadata"]
            try:
                if FINALIZER not in (meta.get("finalizers") or []):
                    # written without Spiderpool's finalizer: add it first, so a pool that still holds
                    # IPs is kept terminating instead of being removed with its records
                    meta["finalizers"] = [*(meta.get("finalizers") or []), FINALIZER]
                    obj = self.store.update(obj)
                version = obj["metadata"].get("resourceVersion")
                self.store.delete(item.kind, item.name, resource_version=str(version) if version else None)
            except NotFound:
                return False
            except (Conflict, Invalid):
                continue  # changed meanwhile (an allocation, an adoption...): read and decide again
            LOG.info("deleted %s %s: %s", item.kind, item.name, reason)
            return True
        raise Conflict(
            f'{item.kind} "{item.name}": kept changing while being deleted with its owner; try again'
        )
