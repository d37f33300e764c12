"""Leader election over a Lease: the pure decision, and two electors racing on the SQLite store and on
the Kubernetes store (through the API emulator), including a store that stops answering."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ipam.store.kube import KubeStore
from ipam.store.protocol import ObjectStore
from ipam.store.sqlite import SqliteStore
from spiderbgp.leader import (
    ElectionConfig,
    LeaderElector,
    LeaseRecord,
    format_micro_time,
    next_lease,
    parse_lease,
)
from tests.kube_emulator import KubeEmulator

FAST = {"lease_duration": 1.2, "renew_deadline": 0.6, "retry_period": 0.1}


# ------------------------------------------------------------------------------------- the decision


def test_no_lease_is_created_for_us() -> None:
    assert next_lease(None, "a", "T0", 15, False) == LeaseRecord("a", 15, "T0", "T0", 0)


def test_holder_renews_keeping_acquire_time_and_transitions() -> None:
    cur = LeaseRecord("a", 15, "T0", "T1", 3)
    assert next_lease(cur, "a", "T2", 15, False) == LeaseRecord("a", 15, "T0", "T2", 3)


def test_valid_lease_of_another_is_left_alone() -> None:
    assert next_lease(LeaseRecord("b", 15, "T0", "T1", 0), "a", "T2", 15, False) is None


def test_expired_or_released_lease_is_taken_over_counting_a_transition() -> None:
    cur = LeaseRecord("b", 15, "T0", "T1", 4)
    assert next_lease(cur, "a", "T9", 15, True) == LeaseRecord("a", 15, "T9", "T9", 5)
    free = LeaseRecord("", 1, "T0", "T1", 4)
    assert next_lease(free, "a", "T9", 15, False) == LeaseRecord("a", 15, "T9", "T9", 5)


def test_micro_time_format() -> None:
    t = datetime(2026, 11, 26, 13, 0, 1, 2345, tzinfo=UTC)
    assert format_micro_time(t) == "2026-11-26T13:00:01.002345Z"


def test_config_rejects_deadlines_in_the_wrong_order() -> None:
    with pytest.raises(ValueError, match="renew_deadline < lease_duration"):
        ElectionConfig("l", "ns", "a", lease_duration=5, renew_deadline=10, retry_period=2)


# ----------------------------------------------------------------------------------- two electors


class Candidate:
    """An elector with a log of its callbacks."""

    def __init__(self, store: ObjectStore, identity: str, **kw: object) -> None:
        self.log: list[str] = []
        cfg = ElectionConfig("spiderbgp-controller", "kube-system", identity, **FAST, **kw)  # type: ignore[arg-type]
        self.elector = LeaderElector(
            store,
            cfg,
            on_started_leading=lambda: self.log.append("start"),
            on_stopped_leading=lambda: self.log.append("stop"),
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.elector.run())

    async def stop(self) -> None:
        assert self.task is not None
        if self.task.done():
            return
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def wait_for(cond: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def sqlite_stores(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    a = SqliteStore(tmp_path / "state.db", poll_interval=0.01)
    b = SqliteStore(tmp_path / "state.db", poll_interval=0.01)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def kube_stores(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> tuple[KubeStore, KubeStore]:
    """Two agents as the DaemonSet's ServiceAccount: the Lease's Role in rbac.yaml must let them lead."""
    token = kube_emulator.agent_token
    return store_factory(token=token), store_factory(token=token)


@pytest.fixture(params=["sqlite", "kubernetes"])
def two_stores(
    request: pytest.FixtureRequest,
) -> tuple[ObjectStore, ObjectStore]:
    name = "sqlite_stores" if request.param == "sqlite" else "kube_stores"
    stores: tuple[ObjectStore, ObjectStore] = request.getfixturevalue(name)
    return stores


async def test_one_of_two_leads_and_the_other_takes_over_when_it_stops(
    two_stores: tuple[ObjectStore, ObjectStore],
) -> None:
    a, b = Candidate(two_stores[0], "node-a"), Candidate(two_stores[1], "node-b")
    a.start()
    try:
        await wait_for(lambda: a.elector.is_leader, 3)
        b.start()
        await asyncio.sleep(0.5)  # several renew periods: b must stay a candidate
        assert (a.elector.is_leader, b.elector.is_leader) == (True, False)
        assert b.elector.leader == "node-a"
        lease = parse_lease(two_stores[1].get("Lease", "spiderbgp-controller", "kube-system"))
        assert lease.holder == "node-a"
        assert lease.transitions == 0
        assert lease.duration_seconds == 1

        await a.stop()  # releases the Lease: b takes over without waiting for it to expire
        assert a.log == ["start", "stop"]
        # the release itself is what lets b in early (timing it would measure the machine's load)
        released = parse_lease(two_stores[0].get("Lease", "spiderbgp-controller", "kube-system"))
        assert released.holder in ("", "node-b"), released
        await wait_for(lambda: b.elector.is_leader, 5)
        lease = parse_lease(two_stores[0].get("Lease", "spiderbgp-controller", "kube-system"))
        assert (lease.holder, lease.transitions) == ("node-b", 1)
        await b.stop()
        assert b.log == ["start", "stop"]
    finally:  # never leave an elector running into the next test, also when an assertion failed
        for candidate in (a, b):
            if candidate.task is not None:
                await candidate.stop()


async def test_lease_not_released_is_taken_over_after_it_expires(
    two_stores: tuple[ObjectStore, ObjectStore],
) -> None:
    a = Candidate(two_stores[0], "node-a", release_on_stop=False)
    b = Candidate(two_stores[1], "node-b")
    a.start()
    await wait_for(lambda: a.elector.is_leader, 3)
    b.start()
    await asyncio.sleep(0.3)
    await a.stop()  # gone without a word, as a crashed node
    loop = asyncio.get_running_loop()
    began = loop.time()
    await wait_for(lambda: b.elector.is_leader, 5)
    waited = loop.time() - began
    assert 0.6 <= waited < 3.0, waited  # about the lease duration (1 s, as b observed it)
    lease = parse_lease(two_stores[1].get("Lease", "spiderbgp-controller", "kube-system"))
    assert (lease.holder, lease.transitions) == ("node-b", 1)
    await b.stop()


async def test_leader_stops_at_its_deadline_when_the_store_hangs(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    a = Candidate(store_factory(), "node-a")
    a.start()
    await wait_for(lambda: a.elector.is_leader, 3)
    loop = asyncio.get_running_loop()
    kube_emulator.faults.latency = 5.0  # every request now hangs for 8x the renew deadline (0.6 s)
    began = loop.time()
    # a generous liveness bound that is still shorter than any hung request: the leader stepped down
    # at its own deadline, not because a renewal finally answered (the figure is not asserted here)
    await wait_for(lambda: not a.elector.is_leader, 4)
    assert loop.time() - began < kube_emulator.faults.latency
    assert a.log == ["start", "stop"]
    kube_emulator.faults.latency = 0.0
    await wait_for(lambda: a.elector.is_leader, 8)  # the store is back: it leads again
    assert a.log == ["start", "stop", "start"]
    await a.stop()
    assert a.log == ["start", "stop", "start", "stop"]


async def test_leader_stops_when_the_api_server_is_gone(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    a = Candidate(store_factory(), "node-a")
    a.start()
    await wait_for(lambda: a.elector.is_leader, 3)
    kube_emulator.stop()  # connection refused from now on
    await wait_for(lambda: not a.elector.is_leader, 2)
    assert a.log == ["start", "stop"]
    await a.stop()
    assert a.log == ["start", "stop"]
