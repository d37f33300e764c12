"""The IP garbage collector against the real SQLite store: every release kind of the policy, live records
kept, endpoints deleted with the record only when decided, bounded scans, and pod tracing."""

from __future__ import annotations

import pytest

from ipam.controllers.gc import GarbageCollector, Released, node_ready_from_obj
from ipam.errors import StoreUnavailable
from ipam.gc_policy import GCSettings
from ipam.records import IPRecord, WatchEvent
from ipam.store.sqlite import SqliteStore
from tests.controllers.conftest import Clock, World

POOL = "p1"


@pytest.fixture
def gc(store: SqliteStore, clock: Clock, world: World) -> GarbageCollector:
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    world.node("node1")
    return GarbageCollector(store, settings=GCSettings(), clock=clock)


def released_ips(result: list[Released]) -> set[str]:
    return {rec.ip for rec, _ in result}


def test_pod_gone_releases_record_and_endpoint(gc: GarbageCollector, world: World) -> None:
    world.allocate(POOL, "10.0.1.1", "default", "web-a", "uid-a")
    world.claim_only(POOL, "10.0.1.2", "default", "orphan", "uid-o")  # no endpoint at all
    result = gc.scan_all()
    assert released_ips(result) == {"10.0.1.1", "10.0.1.2"}
    assert all("not found" in reason for _, reason in result)
    assert world.held(POOL) == set()
    assert not world.endpoint_exists("default", "web-a")


def test_live_pod_is_kept(gc: GarbageCollector, world: World) -> None:
    rs = world.app("ReplicaSet", "web-5d8f", {"replicas": 1})
    pod = world.pod("web-5d8f-x", owner=rs, pod_ips=("10.0.1.3",))
    world.allocate(POOL, "10.0.1.3", "default", "web-5d8f-x", pod["metadata"]["uid"])
    pending = world.pod("web-5d8f-y", owner=rs, phase="Pending")
    world.allocate(POOL, "10.0.1.4", "default", "web-5d8f-y", pending["metadata"]["uid"])
    assert gc.scan_all() == []
    assert world.held(POOL) == {"10.0.1.3", "10.0.1.4"}
    assert world.endpoint_exists("default", "web-5d8f-x")


def test_uid_differs_releases_the_old_record_only(gc: GarbageCollector, world: World) -> None:
    new = world.pod("web-b", pod_ips=("10.0.1.6",))
    world.allocate(POOL, "10.0.1.5", "default", "web-b", "old-uid")  # endpoint still of the old pod
    world.claim_only(POOL, "10.0.1.6", "default", "web-b", new["metadata"]["uid"])
    result = gc.scan_all()
    assert released_ips(result) == {"10.0.1.5"}
    assert "differs" in result[0][1]
    assert world.held(POOL) == {"10.0.1.6"}
    assert not world.endpoint_exists("default", "web-b")  # it was the old pod's


def test_finished_job_pod_is_released_after_its_grace(
    gc: GarbageCollector, world: World, clock: Clock
) -> None:
    job = world.app("Job", "batch1", {"completions": 1})
    done_at = world.stamp(10)

    def finished(name: str) -> str:
        pod = world.pod(
            name,
            owner=job,
            phase="Succeeded",
            spec={"restartPolicy": "Never", "terminationGracePeriodSeconds": 30},
            status={"containerStatuses": [{"name": "c", "state": {"terminated": {"finishedAt": done_at}}}]},
        )
        return str(pod["metadata"]["uid"])

    world.allocate(POOL, "10.0.1.7", "default", "batch1-a", finished("batch1-a"), owner_kind="Job")
    assert gc.scan_all() == []  # finished 10 s ago, grace 30 s
    clock.now += 21
    result = gc.scan_all()
    assert released_ips(result) == {"10.0.1.7"}
    assert "Succeeded past its grace period" in result[0][1]
    assert not world.endpoint_exists("default", "batch1-a")


def test_statefulset_scaled_down_releases_outside_ordinals(gc: GarbageCollector, world: World) -> None:
    world.app("StatefulSet", "db", {"replicas": 1})
    for ordinal, ip in ((0, "10.0.1.20"), (1, "10.0.1.21")):
        world.allocate(
            POOL,
            ip,
            "default",
            f"db-{ordinal}",
            f"uid-db-{ordinal}",
            owner_kind="StatefulSet",
            owner_name="db",
        )
    result = gc.scan_all()  # both pods are gone (restarting / scaled away)
    assert released_ips(result) == {"10.0.1.21"}
    assert "outside StatefulSet db's ordinals" in result[0][1]
    assert world.held(POOL) == {"10.0.1.20"}
    assert world.endpoint_exists("default", "db-0")
    assert not world.endpoint_exists("default", "db-1")


def test_bounded_scan_resumes_where_it_stopped(store: SqliteStore, clock: Clock, world: World) -> None:
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    world.pool("p2", "10.0.2.1-10.0.2.200")
    for i in range(3):
        world.claim_only(POOL, f"10.0.1.{i + 1}", "default", f"a{i}", f"u{i}")
        world.claim_only("p2", f"10.0.2.{i + 1}", "default", f"b{i}", f"v{i}")
    gc = GarbageCollector(store, settings=GCSettings(), clock=clock, max_records=4)
    first = gc.scan_all()
    assert len(first) == 4 and gc.scan_pending
    second = gc.scan_all()
    assert len(second) == 2 and not gc.scan_pending
    assert released_ips(first) | released_ips(second) == {f"10.0.{p}.{i}" for p in (1, 2) for i in (1, 2, 3)}


def test_error_on_one_record_does_not_stop_the_others(store: SqliteStore, clock: Clock, world: World) -> None:
    world.pool(POOL, "10.0.1.1-10.0.1.200")

    def node_ready(node: str) -> bool | None:
        if node == "bad-node":
            raise StoreUnavailable("node bad-node: cannot be read")
        return True

    bad = world.pod("bad", node="bad-node", phase="Failed", spec={"restartPolicy": "Never"})
    world.allocate(POOL, "10.0.1.30", "default", "bad", bad["metadata"]["uid"])
    world.claim_only(POOL, "10.0.1.31", "default", "gone", "u-gone")
    gc = GarbageCollector(store, settings=GCSettings(), clock=clock, node_ready=node_ready)
    assert released_ips(gc.scan_all()) == {"10.0.1.31"}
    assert world.held(POOL) == {"10.0.1.30"}


def test_endpoint_sweep(gc: GarbageCollector, world: World, store: SqliteStore) -> None:
    world.allocate(POOL, "10.0.1.40", "default", "stale", "u-stale")
    world.allocate(POOL, "10.0.1.41", "default", "alive", "u-alive")
    alive = world.pod("alive", pod_ips=("10.0.1.41",))
    # the records are gone (e.g. released by an admin) but the endpoints remain
    store.commit(
        releases=[
            IPRecord(POOL, "10.0.1.40", "default/stale", "u-stale"),
            IPRecord(POOL, "10.0.1.41", "default/alive", "u-alive"),
        ]
    )
    assert alive["metadata"]["uid"] != "u-alive"
    gc.scan_all()
    assert not world.endpoint_exists("default", "stale")
    assert world.endpoint_exists("default", "alive")  # its pod exists: not the GC's to remove


def test_trace_pods(gc: GarbageCollector, world: World, clock: Clock) -> None:
    pod = world.pod(
        "t1",
        phase="Failed",
        pod_ips=("10.0.1.50",),
        spec={"restartPolicy": "Never", "terminationGracePeriodSeconds": 10},
        status={
            "containerStatuses": [{"name": "c", "state": {"terminated": {"finishedAt": world.stamp(0)}}}]
        },
    )
    world.allocate(POOL, "10.0.1.50", "default", "t1", pod["metadata"]["uid"])
    world.allocate(POOL, "10.0.1.51", "default", "t2", "uid-t2")
    events = [
        WatchEvent("MODIFIED", pod, "1"),
        WatchEvent("DELETED", {"kind": "Pod", "metadata": {"namespace": "default", "name": "t2"}}, "2"),
    ]
    assert released_ips(gc.trace_pods(events)) == {"10.0.1.51"}
    assert gc.traced == 1 and gc.next_due() == clock.now + 10
    assert gc.trace_pods(()) == []  # not due yet
    clock.now += 11
    assert released_ips(gc.trace_pods(())) == {"10.0.1.50"}
    assert gc.traced == 0 and gc.next_due() is None
    assert world.held(POOL) == set()


def test_trace_stops_when_the_pod_runs_again(gc: GarbageCollector, world: World) -> None:
    pod = world.pod("r", phase="Failed", spec={"terminationGracePeriodSeconds": 30})
    failed = {
        **pod,
        "status": {
            **pod["status"],
            "containerStatuses": [{"name": "c", "state": {"terminated": {"finishedAt": world.stamp(0)}}}],
        },
    }
    gc.trace_pods([WatchEvent("MODIFIED", failed, "1")])
    assert gc.traced == 1
    gc.trace_pods([WatchEvent("MODIFIED", {**pod, "status": {"phase": "Running"}}, "2")])
    assert gc.traced == 0


def test_bounded_tracing_checks_at_most_max_checks(store: SqliteStore, clock: Clock, world: World) -> None:
    world.pool(POOL, "10.0.1.1-10.0.1.200")
    for i in range(5):
        world.claim_only(POOL, f"10.0.1.{i + 1}", "default", f"d{i}", f"u{i}")
    gc = GarbageCollector(store, settings=GCSettings(), clock=clock, max_checks=2, max_traced=4)
    events = [
        WatchEvent("DELETED", {"kind": "Pod", "metadata": {"namespace": "default", "name": f"d{i}"}}, str(i))
        for i in range(5)
    ]
    assert len(gc.trace_pods(events)) == 2  # the fifth pod did not fit: left to scan-all
    assert len(gc.trace_pods(())) == 2
    assert gc.trace_pods(()) == [] and gc.traced == 0
    assert world.held(POOL) == {"10.0.1.5"}


def test_node_ready_from_obj() -> None:
    assert node_ready_from_obj(None) is None
    assert node_ready_from_obj({"status": {}}) is None
    assert node_ready_from_obj({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}) is True
    assert node_ready_from_obj({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}) is False
