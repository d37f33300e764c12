"""The pool controller (leader only): SpiderIPPool and SpiderSubnet status, and terminating pools.

- ``SpiderIPPool status.totalIPCount`` is ``ips - excludeIPs`` (``ipam.admission.pool_status``);
  ``allocatedIPs``/``allocatedIPCount`` are the store's, derived from the records.
- Deletion, Spiderpool's way: every SpiderIPPool and SpiderSubnet carries the finalizer
  ``spiderpool.spidernet.io`` (added at admission), so deleting one makes it terminating
  (``metadata.deletionTimestamp``) and the store keeps it.  A terminating SpiderIPPool loses the
  finalizer once its last record is released (Spiderpool's ``ippool_informer``: when
  ``status.allocatedIPs`` is empty), and the store then removes it; the update carries the
  resourceVersion the pool was read with, so a release in between fails it and the next pass looks
  again (claims never land in a terminating pool: the store refuses them).  A terminating SpiderSubnet
  loses it once no pool names it as an owner any more (Spiderpool's subnet controller waits for its
  controlled pools); the owner GC (``ipam.controllers.owner_gc``) deletes those pools, in both stores.
  ``finish_terminating`` is that step, also used by ``ipam.admin.delete_object`` so an unused pool or
  subnet goes at once.
- ``SpiderSubnet status`` is derived from the pools of the subnet's CIDR: ``controlledIPPools`` (the
  JSON string of each pool's addresses within the subnet, with the application key of auto pools),
  ``allocatedIPCount`` (how many addresses the pools hold) and ``totalIPCount``.  Deriving it from the
  pools (rather than reserving in the subnet first) keeps it correct whatever order writes land in:
  admission already forbids two pools of one CIDR to share an address.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from ipam.admin import finish_terminating
from ipam.admission import pool_status
from ipam.autopool import LABEL_APP_GV, LABEL_APP_KIND, LABEL_APP_NAME, LABEL_APP_NAMESPACE, is_auto_pool
from ipam.errors import Conflict, Invalid, IpamError, NotFound
from ipam.model import IPPool, PreAllocation, Subnet, encode_controlled_pools
from ipam.ranges import canonical_cidr, total_ip_count
from ipam.records import Obj
from ipam.store.protocol import Store

__all__ = [
    "PoolController",
    "ReconcileReport",
    "app_key_of",
    "controlled_pools",
    "parse_pools",
    "subnet_status",
    "write_subnet_status",
]

LOG = logging.getLogger("spiderbgp.ipam.pools")
_RETRIES: Final = 5


@dataclass
class ReconcileReport:
    """What one reconcile pass did: objects written, pools deleted, and one line per error."""

    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def extend(self, other: ReconcileReport) -> None:
        self.updated.extend(other.updated)
        self.deleted.extend(other.deleted)
        self.errors.extend(other.errors)

    @contextmanager
    def step(self, *, skip_missing: bool = True) -> Iterator[None]:
        """One object's step of a pass: an error is reported as a line of ``errors`` and the pass goes
        on with the next object; an object deleted meanwhile (NotFound) is skipped unless
        ``skip_missing`` is False (then it is an error line too)."""
        try:
            yield
        except NotFound as err:
            if not skip_missing:
                self.errors.append(str(err))
        except IpamError as err:
            self.errors.append(str(err))

    def log_errors(self, log: logging.Logger, who: str) -> None:
        for line in self.errors:
            log.warning("%s: %s", who, line)


def app_key_of(pool: IPPool) -> str | None:
    """Spiderpool's application key of an auto pool (``apps_v1_Deployment_default_nginx``), else None."""
    if not is_auto_pool(pool):
        return None
    labels = pool.labels
    parts = [labels.get(k, "") for k in (LABEL_APP_GV, LABEL_APP_KIND, LABEL_APP_NAMESPACE, LABEL_APP_NAME)]
    return "_".join(parts)


def _same_cidr(a: str, b: str) -> bool:
    try:
        return canonical_cidr(a) == canonical_cidr(b)
    except ValueError:
        return False


def controlled_pools(subnet: Subnet, pools: Iterable[IPPool]) -> dict[str, PreAllocation]:
    """The pools of the subnet's CIDR and the subnet addresses each holds (``ips - excludeIPs`` within
    the subnet's ``ips - excludeIPs``), by pool name."""
    out: dict[str, PreAllocation] = {}
    for pool in pools:
        if pool.ip_version != subnet.ip_version or not _same_cidr(pool.subnet, subnet.subnet):
            continue
        held = pool.usable.intersection(subnet.usable)
        out[pool.name] = PreAllocation(tuple(held.to_strings(subnet.ip_version)), app_key_of(pool))
    return dict(sorted(out.items()))


def subnet_status(subnet: Subnet, pools: Iterable[IPPool]) -> dict[str, Any]:
    """``status`` of a SpiderSubnet given every stored pool."""
    mine = [p for p in pools if p.ip_version == subnet.ip_version and _same_cidr(p.subnet, subnet.subnet)]
    controlled = controlled_pools(subnet, mine)
    held = sum(p.usable.intersection(subnet.usable).size for p in mine)
    status: dict[str, Any] = {
        "totalIPCount": total_ip_count(subnet.usable.size),
        "allocatedIPCount": total_ip_count(held),
    }
    text = encode_controlled_pools(controlled)
    if text is not None:
        status["controlledIPPools"] = text
    return status


def parse_pools(objs: Iterable[Obj], errors: list[str] | None = None) -> list[IPPool]:
    """Parse stored pools, skipping (and reporting) any that do not parse."""
    out: list[IPPool] = []
    for obj in objs:
        try:
            out.append(IPPool.from_obj(obj))
        except Invalid as err:
            if errors is not None:
                errors.append(str(err))
    return out


def _status_differs(stored: Obj, wanted: dict[str, Any], keys: Sequence[str]) -> bool:
    have = stored.get("status") or {}
    return any(have.get(k) != wanted.get(k) for k in keys)


def write_subnet_status(store: Store, name: str, pools: Sequence[IPPool] | None = None) -> bool:
    """Bring one SpiderSubnet's status up to date with the pools (read now when not given); retries on
    Conflict, re-reading the subnet.  Returns whether it wrote.  Raises NotFound, Invalid, Conflict."""
    keys = ("totalIPCount", "allocatedIPCount", "controlledIPPools")
    for _ in range(_RETRIES):
        obj = store.get(Subnet.KIND, name)
        subnet = Subnet.from_obj(obj)
        current = pools if pools is not None else parse_pools(store.list(IPPool.KIND))
        wanted = subnet_status(subnet, current)
        if not _status_differs(obj, wanted, keys):
            return False
        status = {k: v for k, v in (obj.get("status") or {}).items() if k not in keys}
        obj["status"] = {**status, **wanted}
        try:
            store.update_status(obj)
        except Conflict:
            pools = None  # something changed: re-read the pools too
            continue
        return True
    raise Conflict(f'{Subnet.KIND} "{name}": kept changing while its status was written; try again')


class PoolController:
    """Keeps pool and subnet status right and removes terminating pools once they are empty."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def reconcile(self) -> ReconcileReport:
        """One pass over every SpiderIPPool and SpiderSubnet.  An error on one object is reported and
        the others still go."""
        report = ReconcileReport()
        try:
            objs = self.store.list(IPPool.KIND)
        except IpamError as err:
            report.errors.append(f"cannot list {IPPool.KIND}s: {err}")
            return report
        for obj in objs:
            with report.step(skip_missing=False):
                self._reconcile_pool(str(obj["metadata"]["name"]), report)
        try:
            pools = parse_pools(self.store.list(IPPool.KIND))
            subnets = self.store.list(Subnet.KIND)
        except IpamError as err:
            report.errors.append(f"cannot list pools and subnets: {err}")
            return report
        for obj in subnets:
            name = str(obj["metadata"]["name"])
            with report.step():
                if obj["metadata"].get("deletionTimestamp") and self._finish(Subnet.KIND, name):
                    report.deleted.append(f"{Subnet.KIND}/{name}")
                    LOG.info("deleted terminating SpiderSubnet %s", name)
                elif write_subnet_status(self.store, name, pools):
                    report.updated.append(f"{Subnet.KIND}/{name}")
        report.log_errors(LOG, "pool controller")
        return report

    def _reconcile_pool(self, name: str, report: ReconcileReport) -> None:
        for _ in range(_RETRIES):
            try:
                obj = self.store.get(IPPool.KIND, name)
            except NotFound:
                return
            pool = IPPool.from_obj(obj)
            try:
                if pool.terminating:
                    if finish_terminating(self.store, IPPool.KIND, name):
                        report.deleted.append(f"{IPPool.KIND}/{name}")
                        LOG.info("deleted terminating SpiderIPPool %s: its last IP was released", name)
                    return
                wanted = pool_status(pool, int((obj.get("status") or {}).get("allocatedIPCount") or 0))
                if not _status_differs(obj, wanted, ("totalIPCount",)):
                    return
                obj.setdefault("status", {})["totalIPCount"] = wanted["totalIPCount"]
                self.store.update_status(obj)
                report.updated.append(f"{IPPool.KIND}/{name}")
                return
            except Conflict:
                continue
            except NotFound:
                return
        raise Conflict(f'{IPPool.KIND} "{name}": kept changing while being reconciled; try again')

    def _finish(self, kind: str, name: str) -> bool:
        for _ in range(_RETRIES):
            try:
                return finish_terminating(self.store, kind, name)
            except Conflict:
                continue
        raise Conflict(f'{kind} "{name}": kept changing while its deletion was finished; try again')
