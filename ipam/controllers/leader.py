"""The leader-only IPAM controllers, bundled for the agent: the IP garbage collector (``gc``), the
pool controller (``pool``), the SpiderSubnet controller (``subnet``:
auto pools and adoption of orphan pools), the owner-reference GC (``owner_gc``: pools of a
subnet being deleted) and the return of empty allocation blocks (``blocks``).

The agent's leader loop calls :meth:`LeaderControllers.full_pass` once when it becomes leader and then
every GC interval, feeds application watch events to ``subnets.handle`` and Pod watch events to
``gc.trace_pods``, calls ``gc.trace_pods(())`` when ``gc.next_due()`` passes, and calls
``pools.reconcile()`` (a :class:`PoolPass`) after pool, subnet and reserved-IP events, so deleting a
SpiderSubnet cascades at once: its pools are deleted, the empty ones go, and the subnet goes with the
last of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ipam.controllers.blocks import DEFAULT_BLOCK_GRACE_SECONDS, BlockReturn
from ipam.controllers.gc import GarbageCollector, Released
from ipam.controllers.owner_gc import OwnerGC
from ipam.controllers.pool import PoolController, ReconcileReport
from ipam.controllers.subnet import SubnetController
from ipam.gc_policy import GCSettings
from ipam.store.protocol import Store

__all__ = ["LeaderControllers", "PassReport", "PoolPass"]


@dataclass
class PassReport:
    """What one full pass did."""

    subnets: ReconcileReport = field(default_factory=ReconcileReport)
    released: list[Released] = field(default_factory=list)
    pools: ReconcileReport = field(default_factory=ReconcileReport)
    blocks: ReconcileReport = field(default_factory=ReconcileReport)


class PoolPass:
    """What runs after every change to pools and subnets: orphan pools adopted by their subnet, the
    owner GC (pools whose subnet is being deleted are deleted), then the pool controller (statuses,
    terminating pools that are empty removed, terminating subnets that own no pool removed)."""

    def __init__(self, store: Store, subnets: SubnetController) -> None:
        self.subnets = subnets
        self.owners = OwnerGC(store)
        self.controller = PoolController(store)

    def reconcile(self) -> ReconcileReport:
        report = ReconcileReport()
        report.extend(self.subnets.adopt_orphans())
        report.extend(self.owners.collect())
        report.extend(self.controller.reconcile())
        return report


class LeaderControllers:
    def __init__(
        self,
        store: Store,
        *,
        gc_settings: GCSettings,
        clock: Callable[[], float],
        default_flexible_ip_number: int = 1,
        node_ready: Callable[[str], bool | None] | None = None,
        block_grace_seconds: float = DEFAULT_BLOCK_GRACE_SECONDS,
    ) -> None:
        self.gc = GarbageCollector(store, settings=gc_settings, clock=clock, node_ready=node_ready)
        self.subnets = SubnetController(store, default_flexible_ip_number=default_flexible_ip_number)
        self.pools = PoolPass(store, self.subnets)
        self.blocks = BlockReturn(store, clock=clock, grace_seconds=block_grace_seconds)

    def full_pass(self) -> PassReport:
        """Auto pools and adoption first (so a reclaimed pool is terminating before the GC frees its last
        records), then the GC's scan-all (one bounded step; call again while ``gc.scan_pending``), then
        the pool pass (owner GC and pool controller, which removes pools the GC just emptied), then the
        return of allocation blocks empty for their grace period and the counts of block pools."""
        report = PassReport()
        report.subnets = self.subnets.reconcile_all()
        report.released = self.gc.scan_all()
        report.pools = self.pools.reconcile()
        report.blocks = self.blocks.collect()
        report.blocks.extend(self.blocks.counts())
        return report
