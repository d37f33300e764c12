"""Terminating objects: pods past their grace period and pools deleted while in use, in both stores.

Both backends keep an object that finalizers hold (or a pod deleted with a grace period) with
``metadata.deletionTimestamp`` set (the API server's rules, ``ipam.store.protocol``), so every test here runs
against the embedded store and the Kubernetes store (on the API emulator).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipam import admin
from ipam.controllers.gc import GarbageCollector
from ipam.controllers.pool import PoolController
from ipam.errors import Conflict, Invalid, NotFound
from ipam.gc_policy import GCSettings
from ipam.kinds import SPIDER_API
from ipam.model import FINALIZER
from ipam.records import Claim
from ipam.store.protocol import Store
from ipam.store.sqlite import SqliteStore
from ipam.workload import parse_timestamp
from tests.controllers.conftest import Clock, World
from tests.kube.backend import kube_backend

POOL = "p1"
REF = f"spiderippool.spiderpool.spidernet.io/{POOL}"


@dataclass(frozen=True)
class _EmulatorOptions:
    history: int = 10_000


@pytest.fixture(params=["sqlite", "kubernetes"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Clock]]:
    """A store of each backend and a clock at the current time (the emulator stamps with real time)."""
    clock = Clock(time.time())
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "state.db", clock=clock)
        try:
            yield store, clock
        finally:
            store.close()
    else:
        with kube_backend(tmp_path, _EmulatorOptions()) as kube:
            yield kube, clock


def terminating_pod(world: World, store: Store, name: str, ip: str) -> float:
    """A running pod that was just deleted (a finalizer holds it); returns its deletionTimestamp."""
    world.pod(name, pod_ips=(ip,), meta={"finalizers": ["test.spiderbgp.io/hold"]})
    store.delete("Pod", name, "default")
    pod = store.get("Pod", name, "default")
    world.allocate(POOL, ip, "default", name, pod["metadata"]["uid"])
    return parse_timestamp(pod["metadata"]["deletionTimestamp"])


def test_terminating_pod_is_released_after_its_grace(live: tuple[Store, Clock]) -> None:
    store, clock = live
    world = World(store, clock)
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    world.node("node1")
    deleted_at = terminating_pod(world, store, "t1", "10.0.1.1")
    gc = GarbageCollector(store, settings=GCSettings(), clock=clock)
    clock.now = deleted_at - 30  # within the grace period: kept, traced until it ends
    assert gc.scan_all() == []
    assert gc.check_pod("default", "t1") == [] and gc.next_due() == deleted_at
    clock.now = deleted_at + 1
    released = gc.trace_pods(())
    assert [(r.ip, reason) for r, reason in released] == [
        ("10.0.1.1", "pod default/t1 is terminating past its grace period")
    ]
    assert store.records(POOL) == []
    assert not world.endpoint_exists("default", "t1")


def test_gracefully_deleted_pod_is_released_after_deletion_time_plus_grace(
    live: tuple[Store, Clock],
) -> None:
    """``delete --grace-period=30`` keeps the pod, no finalizer needed; Spiderpool's GC waits until
    deletionTimestamp (which already includes the grace) plus deletionGracePeriodSeconds."""
    store, clock = live
    world = World(store, clock)
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    world.node("node1")
    uid = world.pod("g1", pod_ips=("10.0.1.7",))["metadata"]["uid"]
    world.allocate(POOL, "10.0.1.7", "default", "g1", uid)
    store.delete("Pod", "g1", "default", grace_period_seconds=30)
    meta = store.get("Pod", "g1", "default")["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 30
    stop = parse_timestamp(meta["deletionTimestamp"]) + 30
    assert stop - time.time() > 50  # now + 30 + 30, give or take the second the stamp rounds off
    gc = GarbageCollector(store, settings=GCSettings(), clock=clock)
    clock.now = stop - 1
    assert gc.scan_all() == []
    assert gc.check_pod("default", "g1") == [] and gc.next_due() == stop
    clock.now = stop + 1
    assert [r.ip for r, _ in gc.trace_pods(())] == ["10.0.1.7"]
    store.delete("Pod", "g1", "default", grace_period_seconds=0)  # the kubelet's final delete
    with pytest.raises(NotFound):
        store.get("Pod", "g1", "default")


def test_terminating_pod_on_a_node_gc_may_not_touch_is_kept(live: tuple[Store, Clock]) -> None:
    store, clock = live
    clock.now += 3600
    world = World(store, clock)
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    world.node("node1", ready="False")
    terminating_pod(world, store, "t2", "10.0.1.2")
    settings = GCSettings(terminating_on_not_ready_node=False)
    assert GarbageCollector(store, settings=settings, clock=clock).scan_all() == []
    released = GarbageCollector(store, settings=GCSettings(), clock=clock).scan_all()
    assert [r.ip for r, _ in released] == ["10.0.1.2"]


def test_pool_deletion_waits_for_its_last_record(live: tuple[Store, Clock]) -> None:
    store, clock = live
    world = World(store, clock)
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    assert store.get("SpiderIPPool", POOL)["metadata"]["finalizers"] == [FINALIZER]  # as the webhook
    world.claim_only(POOL, "10.0.1.1", "default", "a", "u-a")
    world.claim_only(POOL, "10.0.1.2", "default", "b", "u-b")
    message = admin.delete_object(store, "SpiderIPPool", POOL)
    assert message == f"{REF} deleted (terminating until its 2 allocated IPs are released)"
    assert store.get("SpiderIPPool", POOL)["metadata"]["deletionTimestamp"]
    controller = PoolController(store)
    assert controller.reconcile().deleted == []
    gc = GarbageCollector(store, settings=GCSettings(), clock=clock, max_records=1)
    assert len(gc.scan_all()) == 1  # one of the two records released
    assert controller.reconcile().deleted == []
    assert store.get("SpiderIPPool", POOL)
    assert len(gc.scan_all()) == 1
    assert controller.reconcile().deleted == [f"SpiderIPPool/{POOL}"]
    assert [p["metadata"]["name"] for p in store.list("SpiderIPPool")] == []


def test_a_terminating_pool_gives_ips_back_but_takes_none(live: tuple[Store, Clock]) -> None:
    store, clock = live
    world = World(store, clock)
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    held = world.claim_only(POOL, "10.0.1.1", "default", "a", "u-a")
    admin.delete_object(store, "SpiderIPPool", POOL)
    again = admin.delete_object(store, "SpiderIPPool", POOL)  # a second delete changes nothing
    assert again == f"{REF} deleted (terminating until its 1 allocated IPs are released)"
    version = store.usage(POOL).resource_version
    with pytest.raises(Conflict, match=rf'^SpiderIPPool "{POOL}": .*terminating'):
        store.commit(claims=[Claim(POOL, version, "10.0.1.2", "default/b", "u-b")])
    assert [r.ip for r in store.records(POOL)] == ["10.0.1.1"]
    store.commit(releases=[held])  # the last release: the pool controller lets it go
    assert store.records(POOL) == []
    assert store.get("SpiderIPPool", POOL)["metadata"]["deletionTimestamp"]
    assert PoolController(store).reconcile().deleted == [f"SpiderIPPool/{POOL}"]
    with pytest.raises(NotFound):
        store.get("SpiderIPPool", POOL)


def test_delete_object_removes_an_unused_pool_and_a_subnet_at_once(live: tuple[Store, Clock]) -> None:
    store, clock = live
    world = World(store, clock)
    world.subnet("s1", "10.0.0.0/16", ["10.0.0.1-10.0.9.255"])
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    assert store.get("SpiderSubnet", "s1")["metadata"]["finalizers"] == [FINALIZER]
    assert admin.delete_object(store, "SpiderIPPool", POOL) == f"{REF} deleted"
    assert (
        admin.delete_object(store, "SpiderSubnet", "s1") == "spidersubnet.spiderpool.spidernet.io/s1 deleted"
    )
    assert store.list("SpiderIPPool") == [] and store.list("SpiderSubnet") == []


def test_another_finalizer_keeps_an_empty_pool(live: tuple[Store, Clock]) -> None:
    store, clock = live
    world = World(store, clock)
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    pool = store.get("SpiderIPPool", POOL)
    pool["metadata"]["finalizers"] = [FINALIZER, "example.com/audit"]
    store.update(pool)
    message = admin.delete_object(store, "SpiderIPPool", POOL)
    assert message == f"{REF} deleted (terminating until its finalizers are removed: example.com/audit)"
    assert PoolController(store).reconcile().deleted == []
    pool = store.get("SpiderIPPool", POOL)
    assert pool["metadata"]["finalizers"] == ["example.com/audit"]
    pool["metadata"]["finalizers"] = []
    store.update(pool)
    with pytest.raises(NotFound):
        store.get("SpiderIPPool", POOL)


def test_a_pool_without_finalizer_in_use_is_refused_with_refuse_in_use(live: tuple[Store, Clock]) -> None:
    """A pool written straight through the store (no webhook) has no finalizer: deleting it would drop
    the records of IPs pods still use, so the CLI's delete refuses and changes nothing."""
    store, _ = live
    store.create(
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": POOL},
            "spec": {"subnet": "10.0.0.0/16", "ips": ["10.0.1.1-10.0.1.9"]},
        }
    )
    version = store.usage(POOL).resource_version
    store.commit(claims=[Claim(POOL, version, "10.0.1.1", "default/a", "u-a")])
    before = store.get("SpiderIPPool", POOL)
    with pytest.raises(Invalid, match=rf'^SpiderIPPool "{POOL}": metadata.finalizers: no finalizer keeps'):
        admin.delete_object(store, "SpiderIPPool", POOL, refuse_in_use=True)
    assert store.get("SpiderIPPool", POOL) == before
    assert admin.delete_object(store, "SpiderIPPool", POOL) == f"{REF} deleted"  # a controller's call
    with pytest.raises(NotFound):
        store.get("SpiderIPPool", POOL)
