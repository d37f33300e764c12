"""The leader-only side of the agent: elect one agent per store, and run the IPAM controllers there.

The controllers (``ipam.controllers.leader.LeaderControllers``) are synchronous store loops, so they run in a
thread of their own that the election starts and stops.  The thread follows the store's watch: Pod
events feed the GC's pod tracing, workload events the SpiderSubnet auto-pool controller, pool and subnet
events the pool controller; a full pass (auto pools, GC scan-all, pools) runs when leadership starts and
every GC interval.  Losing the lease stops the thread before the next store write it would make.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from ipam.blocks import BLOCK_KIND
from ipam.controllers.leader import LeaderControllers
from ipam.controllers.subnet import APP_KINDS
from ipam.errors import Gone, IpamError
from ipam.gc_policy import GCSettings
from ipam.records import WatchEvent
from ipam.store.protocol import Store
from spiderbgp.config import IpamConfig
from spiderbgp.leader import ElectionConfig, LeaderElector

__all__ = ["ControllerThread", "Leadership"]

LOG = logging.getLogger(__name__)  # spiderbgp.leadership (the election logs as spiderbgp.leader)
POOL_KINDS = ("SpiderIPPool", "SpiderSubnet", "SpiderReservedIP")


class ControllerThread:
    """Runs the leader-only controllers until ``stop()``; ``on_released`` hears of every GC release as
    (ip, reason) pairs.

    Every ``start()`` runs a new thread with a stop flag of its own: a thread told to stop (leadership
    lost, ``stop(timeout=0)`` from the event loop) that is still finishing a store call can never be
    revived by the next ``start()``; the new thread waits for it to end before it works, so two
    controller threads never run at once, and a later ``stop()`` still waits for it (the agent closes
    the store only after that)."""

    def __init__(
        self,
        store: Store,
        config: IpamConfig,
        *,
        on_released: Callable[[list[tuple[str, str]]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self._on_released = on_released
        self._clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        gc = config.gc
        self.controllers = LeaderControllers(
            store,
            gc_settings=GCSettings(
                additional_grace_delay=gc.additional_grace_delay_seconds,
                terminating_on_ready_node=gc.terminating_on_ready_node,
                terminating_on_not_ready_node=gc.terminating_on_not_ready_node,
                enable_statefulset=config.enable_statefulset,
            ),
            clock=clock,
            default_flexible_ip_number=config.auto_pool_default_flexible_ip_number,
        )

    def start(self) -> None:
        self._stop.set()  # a previous thread, if still finishing, keeps its own (set) flag
        self._stop = threading.Event()
        previous = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(
            target=self._run, args=(self._stop, previous), name="leader-controllers", daemon=True
        )
        self._threads = [*previous, thread]
        thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Tell the thread to stop; wait up to ``timeout`` for every thread started so far to end."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                thread.join(remaining)
        self._threads = [t for t in self._threads if t.is_alive()]
        if timeout > 0 and self._threads:
            LOG.warning("leader controllers did not stop within %.1fs", timeout)

    def _released(self, released: list[tuple[object, str]]) -> None:
        pairs = [(str(getattr(record, "ip", "")), reason) for record, reason in released]
        if pairs:
            LOG.info("GC released %d IPs: %s", len(pairs), ", ".join(ip for ip, _ in pairs[:10]))
            self._on_released(pairs)

    def _full_pass(self, stop: threading.Event) -> None:
        report = self.controllers.full_pass()
        self._released(list(report.released))
        while self.controllers.gc.scan_pending and not stop.is_set():
            self._released(list(self.controllers.gc.scan_all()))

    def _handle(self, events: list[WatchEvent]) -> None:
        pods = [e for e in events if e.object.get("kind") == "Pod"]
        apps = [e for e in events if e.object.get("kind") in APP_KINDS]
        pools_changed = any(e.object.get("kind") in POOL_KINDS for e in events)
        for event in apps:
            self.controllers.subnets.handle(event)
        self._released(list(self.controllers.gc.trace_pods(pods)))
        if apps or pools_changed or pods:
            self.controllers.pools.reconcile()
        if any(e.object.get("kind") == BLOCK_KIND for e in events):
            self.controllers.blocks.counts()  # a block pool's count for `kubectl get sp`

    def _run(self, stop: threading.Event, previous: list[threading.Thread]) -> None:
        for thread in previous:  # the controllers' state is not shared between threads: wait
            thread.join()
        kinds = ["Pod", *APP_KINDS, *POOL_KINDS, BLOCK_KIND]
        interval = self.config.gc.interval_seconds
        tick = min(self.config.gc.trace_interval_seconds, 1.0)
        since = self.store.revision()
        next_full = 0.0
        while not stop.is_set():
            try:
                if self._clock() >= next_full:
                    self._full_pass(stop)
                    next_full = self._clock() + interval
                batch: list[WatchEvent] = []
                for event in self.store.watch(kinds, since, timeout=tick):
                    since = event.revision
                    batch.append(event)
                    if len(batch) >= 500 or stop.is_set():
                        break
                if stop.is_set():
                    return
                self._handle(batch)
            except Gone:
                since = self.store.revision()
                next_full = 0.0  # missed events: look at everything again
            except IpamError as exc:
                if stop.is_set():
                    return
                LOG.warning("leader controllers: %s; retrying", exc)
                stop.wait(1.0)
            except Exception:
                if stop.is_set():
                    return
                LOG.exception("leader controllers failed; retrying")
                stop.wait(1.0)


class Leadership:
    """The election task plus the controller thread it starts and stops."""

    def __init__(
        self,
        store: Store,
        config: IpamConfig,
        *,
        identity: str,
        on_released: Callable[[list[tuple[str, str]]], None],
        on_change: Callable[[bool], None] = lambda leading: None,
    ) -> None:
        self.controllers = ControllerThread(store, config, on_released=on_released)
        self._on_change = on_change
        leader = config.leader
        self.elector = LeaderElector(
            store,
            ElectionConfig(
                name=leader.lease_name,
                namespace=leader.lease_namespace,
                identity=identity,
                lease_duration=leader.lease_duration_seconds,
                renew_deadline=leader.renew_deadline_seconds,
                retry_period=leader.retry_period_seconds,
            ),
            on_started_leading=self._started,
            on_stopped_leading=self._stopped,
        )
        self._task: asyncio.Task[None] | None = None

    def _started(self) -> None:
        LOG.info("became leader: starting GC, pool and SpiderSubnet controllers")
        self.controllers.start()
        self._on_change(True)

    def _stopped(self) -> None:
        LOG.info("lost leadership: stopping the controllers")
        self.controllers.stop(timeout=0.0)
        self._on_change(False)

    def start(self) -> None:
        self._task = asyncio.create_task(self.elector.run(), name="leader-election")

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            # cancel until it is done: a cancellation can be lost in 3.11's wait_for (see LeaderElector)
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.get_running_loop().run_in_executor(None, self.controllers.stop)
