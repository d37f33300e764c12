"""The leader-only IPAM controllers, bundled for the agent: the IP garbage collector (``ipam.gc``), the
pool controller (``ipam.pool_controller``) and the SpiderSubnet auto-pool controller
(``ipam.subnet_controller``).

The agent's leader loop calls :meth:`LeaderControllers.full_pass` once when it becomes leader and then
every GC interval, feeds application watch events to ``subnets.handle`` and Pod watch events to
``gc.trace_pods``, and calls ``gc.trace_pods(())`` when ``gc.next_due()`` passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ipam.gc import GarbageCollector, Released
from ipam.gc_policy import GCSettings
from ipam.pool_controller import PoolController, ReconcileReport
from ipam.store import Store
from ipam.subnet_controller import APP_KINDS, SubnetController

__all__ = [
    "APP_KINDS",
    "GarbageCollector",
    "LeaderControllers",
    "PassReport",
    "PoolController",
    "ReconcileReport",
    "SubnetController",
]


@dataclass
class PassReport:
    """What one full pass did."""

    subnets: ReconcileReport = field(default_factory=ReconcileReport)
    released: list[Released] = field(default_factory=list)
    pools: ReconcileReport = field(default_factory=ReconcileReport)


class LeaderControllers:
    def __init__(
        self,
        store: Store,
        *,
        gc_settings: GCSettings,
        clock: Callable[[], float],
        default_flexible_ip_number: int = 1,
        node_ready: Callable[[str], bool | None] | None = None,
    ) -> None:
        self.gc = GarbageCollector(store, settings=gc_settings, clock=clock, node_ready=node_ready)
        self.pools = PoolController(store)
        self.subnets = SubnetController(store, default_flexible_ip_number=default_flexible_ip_number)

    def full_pass(self) -> PassReport:
        """Auto pools first (so a reclaimed pool is terminating before the GC frees its last records),
        then the GC's scan-all (one bounded step; call again while ``gc.scan_pending``), then the pool
        controller (which removes pools the GC just emptied)."""
        report = PassReport()
        report.subnets = self.subnets.reconcile_all()
        report.released = self.gc.scan_all()
        report.pools = self.pools.reconcile()
        return report
