"""Leader election over a ``coordination.k8s.io/v1`` Lease, through the object store only.

The controllers that must run once per cluster (IP GC, SpiderSubnet auto-pools, pool status) run in
the agent that holds the Lease.  The election uses nothing but ``ipam.store.protocol.ObjectStore`` (get, create,
update with a resourceVersion precondition), so it works on the API server (``KubeStore``) and on the
embedded SQLite store alike: several agents on one host elect one the same way nodes of a cluster do.

It follows client-go's leaderelection:

* the Lease's ``spec`` carries ``holderIdentity``, ``leaseDurationSeconds`` (15), ``acquireTime``,
  ``renewTime`` (RFC 3339 with microseconds) and ``leaseTransitions``;
* a candidate takes the Lease when it is free (no holder) or when the holder has not renewed for
  ``lease_duration`` seconds *as seen by this candidate's own clock* (the time it first observed the
  current record), so clock skew between nodes does not matter;
* every write is an update conditional on the resourceVersion just read, so two candidates never both
  win: the loser gets Conflict and stays a candidate;
* the leader renews every ``retry_period``; if it has not renewed within ``renew_deadline`` it stops
  leading at once (``on_stopped_leading`` fires), even while a store call is still hanging, and goes
  back to being a candidate.  ``renew_deadline < lease_duration`` leaves a margin in which nobody leads.

The decision is a pure function (``next_lease``) over frozen values; the clock is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from ipam.errors import AlreadyExists, Conflict, IpamError, NotFound
from ipam.records import Obj
from ipam.store.protocol import ObjectStore

__all__ = [
    "Clock",
    "ElectionConfig",
    "LeaderElector",
    "LeaseRecord",
    "SystemClock",
    "format_micro_time",
    "lease_object",
    "next_lease",
    "parse_lease",
]

LOG = logging.getLogger(__name__)

LEASE_API = "coordination.k8s.io/v1"
T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time (UTC), written into the Lease."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: all deadlines use it."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class ElectionConfig:
    name: str  # the Lease's name
    namespace: str  # and namespace
    identity: str  # this candidate (unique: the node name, or node name + pid)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    release_on_stop: bool = True  # give the Lease up when stopped, so another takes over at once

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election: identity must not be empty")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election: need 0 < retry_period < renew_deadline < lease_duration "
                f"(got {self.retry_period}, {self.renew_deadline}, {self.lease_duration})"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The election-relevant part of a Lease."""

    holder: str
    duration_seconds: int
    acquire_time: str
    renew_time: str
    transitions: int


def format_micro_time(t: datetime) -> str:
    """Kubernetes' MicroTime: ``2026-11-26T13:00:00.123456Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_lease(obj: Obj) -> LeaseRecord:
    spec = obj.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=str(spec.get("acquireTime") or ""),
        renew_time=str(spec.get("renewTime") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def lease_object(cfg: ElectionConfig, record: LeaseRecord, resource_version: str = "") -> Obj:
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    meta: dict[str, Any] = {"name": cfg.name, "namespace": cfg.namespace}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": LEASE_API, "kind": "Lease", "metadata": meta, "spec": spec}


def next_lease(
    current: LeaseRecord | None, identity: str, now: str, duration: int, expired: bool
) -> LeaseRecord | None:
    """What to write to hold the Lease now, or None when another candidate validly holds it.

    ``current`` is the Lease as read (None: there is none); ``expired`` says whether its holder has
    gone ``duration`` seconds without renewing, as measured by this candidate."""
    if current is None:
        return LeaseRecord(identity, duration, now, now, 0)
    if current.holder == identity:
        return replace(current, duration_seconds=duration, renew_time=now)
    if current.holder and not expired:
        return None
    return LeaseRecord(identity, duration, now, now, current.transitions + 1)


class LeaderElector:
    """Runs the election as an asyncio task: ``await elector.run()`` (cancel it to stop).

    ``on_started_leading`` / ``on_stopped_leading`` are called on the event loop; they must not block
    (start or cancel the controller tasks there).  ``on_stopped_leading`` fires exactly once after
    every ``on_started_leading``: when the Lease is lost, when renewing fails past the deadline, and
    when the elector is stopped while leading."""

    def __init__(
        self,
        store: ObjectStore,
        config: ElectionConfig,
        *,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._started = on_started_leading
        self._stopped = on_stopped_leading
        self._leading = False
        self.leader = ""  # the holder last observed ("" unknown or free)
        self._observed: tuple[LeaseRecord, str] | None = None  # (record, resourceVersion)
        self._observed_at = 0.0  # monotonic time the observed record was first seen

    @property
    def is_leader(self) -> bool:
        return self._leading

    # -- one attempt (blocking store calls, run in a worker thread) -------------------------------------

    def _attempt(self) -> bool:
        """Read the Lease, then create / renew / take it over if allowed.  True when we hold it."""
        cfg = self.config
        duration = max(1, round(cfg.lease_duration))
        now = format_micro_time(self.clock.now())
        try:
            obj = self.store.get("Lease", cfg.name, cfg.namespace)
        except NotFound:
            record = next_lease(None, cfg.identity, now, duration, True)
            assert record is not None
            try:
                created = self.store.create(lease_object(cfg, record))
            except AlreadyExists:
                return False  # another candidate created it first
            self._observe(parse_lease(created), created["metadata"]["resourceVersion"])
            return True
        current = parse_lease(obj)
        rv = str(obj["metadata"].get("resourceVersion") or "")
        self._observe(current, rv)
        expired = self.clock.monotonic() >= self._observed_at + max(current.duration_seconds, 1)
        record = next_lease(current, cfg.identity, now, duration, expired)
        if record is None:
            return False
        try:
            written = self.store.update(lease_object(cfg, record, rv))
        except (Conflict, NotFound):
            return False  # somebody else wrote first: read again next round
        self._observe(parse_lease(written), written["metadata"]["resourceVersion"])
        return True

    def _observe(self, record: LeaseRecord, rv: str) -> None:
        if self._observed is None or self._observed != (record, rv):
            self._observed = (record, rv)
            self._observed_at = self.clock.monotonic()
        self.leader = record.holder

    def _release(self) -> None:
        if self._observed is None:
            return
        record, rv = self._observed
        if record.holder != self.config.identity:
            return
        now = format_micro_time(self.clock.now())
        freed = LeaseRecord("", 1, now, now, record.transitions)
        with contextlib.suppress(IpamError):
            self.store.update(lease_object(self.config, freed, rv))

    async def _call(self, fn: Callable[[], T], timeout: float) -> T | None:
        """Run a blocking store call in a thread; None when it did not finish within ``timeout``
        (the thread is left to finish on its own) or failed with a store error."""
        if timeout <= 0:
            return None
        try:
            result = await asyncio.wait_for(asyncio.to_thread(fn), timeout)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for returns the result when the call completes just as the task
                # is cancelled, and the cancellation is lost: honour it here
                raise asyncio.CancelledError
            return result
        except TimeoutError:
            LOG.warning(
                "leader election %s: the store did not answer within %.1fs", self.config.name, timeout
            )
        except IpamError as err:
            LOG.warning("leader election %s: %s", self.config.name, err)
        return None

    # -- the task ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign, lead, and campaign again after losing the Lease, until cancelled."""
        cfg = self.config
        try:
            while True:
                while not await self._call(self._attempt, cfg.renew_deadline):
                    await self.clock.sleep(cfg.retry_period)
                self._leading = True
                LOG.info("leader election %s: %s is now the leader", cfg.name, cfg.identity)
                self._started()
                last_renew = self.clock.monotonic()
                while True:
                    await self.clock.sleep(cfg.retry_period)
                    deadline = last_renew + cfg.renew_deadline
                    ok = await self._call(self._attempt, deadline - self.clock.monotonic())
                    if ok and self.clock.monotonic() < deadline:
                        last_renew = self.clock.monotonic()
                        continue
                    lost = self.leader not in ("", cfg.identity)
                    if lost or self.clock.monotonic() >= deadline:
                        break
                LOG.warning("leader election %s: %s stopped leading", cfg.name, cfg.identity)
                self._leading = False
                self._stopped()
        finally:
            if self._leading:
                self._leading = False
                self._stopped()
                if cfg.release_on_stop:
                    with contextlib.suppress(Exception):
                        # bounded (one retry period, at least a second) so a stopping agent never
                        # waits long on a busy store; a release that does not make it lets the Lease expire
                        await asyncio.shield(self._call(self._release, max(cfg.retry_period, 1.0)))
