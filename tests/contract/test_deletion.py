"""The deletion contract (ipam.store.protocol): finalizers, terminating objects and graceful pod deletion, the
API server's rules, held by every backend of conftest.BACKENDS."""

from __future__ import annotations

import calendar
import time
from typing import Any

import pytest

from ipam.errors import Conflict, Invalid, NotFound
from ipam.records import Claim, IPRecord, Obj
from ipam.store.protocol import Store

SPIDER = "spiderpool.spidernet.io/v2beta1"
FINALIZER = "spiderpool.spidernet.io"
HOLD = "example.com/hold"


def pool(name: str, *, finalizers: list[str] | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name}
    if finalizers is not None:
        meta["finalizers"] = finalizers
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": meta,
        "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.200"]},
    }


def pod(name: str, *, finalizers: list[str] | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if finalizers is not None:
        meta["finalizers"] = finalizers
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "nginx"}]},
    }


def lease(name: str) -> Obj:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }


def seconds(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def changes(store: Store, kinds: list[str], since: str) -> list[tuple[str, str, bool]]:
    """(event type, name, terminating) of every change after ``since``."""
    return [
        (e.type, e.object["metadata"]["name"], bool(e.object["metadata"].get("deletionTimestamp")))
        for e in store.watch(kinds, since, timeout=0.2)
    ]


def gone(store: Store, kind: str, name: str, namespace: str = "") -> bool:
    try:
        store.get(kind, name, namespace)
    except NotFound:
        return True
    return False


# ---------------------------------------------------------------------------------------------- finalizers


def test_delete_of_an_object_with_finalizers_makes_it_terminating_once(store: Store) -> None:
    created = store.create(pool("p1", finalizers=[FINALIZER]))
    assert created["metadata"]["finalizers"] == [FINALIZER]
    start = store.revision()
    began = time.time()
    store.delete("SpiderIPPool", "p1", resource_version=created["metadata"]["resourceVersion"])
    held = store.get("SpiderIPPool", "p1")
    meta = held["metadata"]
    assert began - 2 <= seconds(meta["deletionTimestamp"]) <= time.time() + 1
    assert meta["deletionGracePeriodSeconds"] == 0
    assert meta["finalizers"] == [FINALIZER]
    assert meta["resourceVersion"] != created["metadata"]["resourceVersion"]
    assert [o["metadata"]["name"] for o in store.list("SpiderIPPool")] == ["p1"]
    store.delete("SpiderIPPool", "p1")  # again: nothing changes
    assert store.get("SpiderIPPool", "p1") == held
    assert changes(store, ["SpiderIPPool"], start) == [("MODIFIED", "p1", True)]


def test_delete_of_an_object_without_finalizers_removes_it(store: Store) -> None:
    store.create(pool("p1"))
    start = store.revision()
    store.delete("SpiderIPPool", "p1")
    assert gone(store, "SpiderIPPool", "p1")
    assert changes(store, ["SpiderIPPool"], start) == [("DELETED", "p1", False)]


def test_removing_the_last_finalizer_of_a_terminating_object_removes_it(store: Store) -> None:
    store.create(pool("p1", finalizers=[FINALIZER, HOLD]))
    store.delete("SpiderIPPool", "p1")
    start = store.revision()
    held = store.get("SpiderIPPool", "p1")
    held["metadata"]["finalizers"] = [HOLD]
    kept = store.update(held)
    assert kept["metadata"]["finalizers"] == [HOLD] and kept["metadata"]["deletionTimestamp"]
    assert not gone(store, "SpiderIPPool", "p1")
    kept["metadata"]["finalizers"] = []
    store.update(kept)
    assert gone(store, "SpiderIPPool", "p1")
    assert changes(store, ["SpiderIPPool"], start) == [("MODIFIED", "p1", True), ("DELETED", "p1", True)]
    store.create(pool("p1"))  # the name is free again
    assert not store.get("SpiderIPPool", "p1")["metadata"].get("deletionTimestamp")


def test_removing_finalizers_of_an_object_not_being_deleted_keeps_it(store: Store) -> None:
    created = store.create(pool("p1", finalizers=[FINALIZER]))
    created["metadata"]["finalizers"] = []
    updated = store.update(created)
    assert not updated["metadata"].get("finalizers")
    assert not gone(store, "SpiderIPPool", "p1")


def test_no_new_finalizer_on_a_terminating_object(store: Store) -> None:
    store.create(pod("a", finalizers=[HOLD]))
    store.delete("Pod", "a", "default")
    before = store.get("Pod", "a", "default")
    wanted = store.get("Pod", "a", "default")
    wanted["metadata"]["finalizers"] = [HOLD, FINALIZER]
    with pytest.raises(Invalid) as err:
        store.update(wanted)
    assert err.value.field == "metadata.finalizers" and "a" in err.value.name
    assert store.get("Pod", "a", "default") == before


def test_deletion_metadata_belongs_to_the_store(store: Store) -> None:
    """create drops a caller's deletionTimestamp; update can neither set nor clear it."""
    given = pod("a", finalizers=[HOLD])
    given["metadata"]["deletionTimestamp"] = "2020-01-01T00:00:00Z"
    given["metadata"]["deletionGracePeriodSeconds"] = 5
    created = store.create(given)
    assert "deletionTimestamp" not in created["metadata"]
    assert "deletionGracePeriodSeconds" not in created["metadata"]
    assert created["metadata"]["finalizers"] == [HOLD]  # kept at create
    created["metadata"]["deletionTimestamp"] = "2020-01-01T00:00:00Z"
    created["metadata"]["labels"] = {"x": "1"}
    updated = store.update(created)
    assert updated["metadata"]["labels"] == {"x": "1"}
    assert "deletionTimestamp" not in updated["metadata"]

    store.delete("Pod", "a", "default")
    held = store.get("Pod", "a", "default")
    stamp = held["metadata"]["deletionTimestamp"]
    del held["metadata"]["deletionTimestamp"]
    held["metadata"]["labels"] = {"x": "2"}
    after = store.update(held)
    assert after["metadata"]["deletionTimestamp"] == stamp
    assert after["metadata"]["labels"] == {"x": "2"}


# ---------------------------------------------------------------------------------------------- graceful pods


def test_graceful_pod_delete_keeps_the_pod_until_the_final_delete(store: Store) -> None:
    store.create(pod("a"))
    start = store.revision()
    began = time.time()
    store.delete("Pod", "a", "default", grace_period_seconds=30)
    meta = store.get("Pod", "a", "default")["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 30
    assert began + 28 <= seconds(meta["deletionTimestamp"]) <= time.time() + 31
    # the kubelet still writes status while the pod terminates; that does not remove it
    current = store.get("Pod", "a", "default")
    current["status"] = {"phase": "Running"}
    store.update_status(current)
    store.delete("Pod", "a", "default")  # no grace given: nothing to shorten
    store.delete("Pod", "a", "default", grace_period_seconds=60)  # a longer grace is ignored
    assert store.get("Pod", "a", "default")["metadata"]["deletionGracePeriodSeconds"] == 30
    store.delete("Pod", "a", "default", grace_period_seconds=0)  # the kubelet's final delete
    assert gone(store, "Pod", "a", "default")
    assert [t for t, _, _ in changes(store, ["Pod"], start)] == ["MODIFIED", "MODIFIED", "DELETED"]


def test_a_shorter_grace_moves_the_deletion_time_back(store: Store) -> None:
    store.create(pod("a"))
    store.delete("Pod", "a", "default", grace_period_seconds=60)
    first = store.get("Pod", "a", "default")["metadata"]
    store.delete("Pod", "a", "default", grace_period_seconds=10)
    second = store.get("Pod", "a", "default")["metadata"]
    assert second["deletionGracePeriodSeconds"] == 10
    assert seconds(second["deletionTimestamp"]) == seconds(first["deletionTimestamp"]) - 50


def test_finalizers_outlast_the_final_delete_of_a_graceful_pod(store: Store) -> None:
    store.create(pod("a", finalizers=[HOLD]))
    store.delete("Pod", "a", "default", grace_period_seconds=30)
    store.delete("Pod", "a", "default", grace_period_seconds=0)
    held = store.get("Pod", "a", "default")
    assert held["metadata"]["deletionGracePeriodSeconds"] == 0
    held["metadata"]["finalizers"] = []
    store.update(held)
    assert gone(store, "Pod", "a", "default")


def test_removing_the_finalizer_of_a_pod_in_its_grace_period_keeps_it(store: Store) -> None:
    store.create(pod("a", finalizers=[HOLD]))
    store.delete("Pod", "a", "default", grace_period_seconds=30)
    held = store.get("Pod", "a", "default")
    held["metadata"]["finalizers"] = []
    store.update(held)
    assert store.get("Pod", "a", "default")["metadata"]["deletionGracePeriodSeconds"] == 30
    store.delete("Pod", "a", "default", grace_period_seconds=0)
    assert gone(store, "Pod", "a", "default")


def test_grace_zero_or_no_grace_removes_a_pod_at_once(store: Store) -> None:
    store.create(pod("a"))
    store.create(pod("b"))
    store.delete("Pod", "a", "default", grace_period_seconds=0)
    store.delete("Pod", "b", "default")
    assert gone(store, "Pod", "a", "default") and gone(store, "Pod", "b", "default")


def test_other_kinds_ignore_the_grace_period(store: Store) -> None:
    store.create(lease("l1"))
    store.delete("Lease", "l1", "kube-system", grace_period_seconds=30)
    assert gone(store, "Lease", "l1", "kube-system")


def test_a_negative_grace_period_is_refused(store: Store) -> None:
    store.create(pod("a"))
    with pytest.raises(Invalid) as err:
        store.delete("Pod", "a", "default", grace_period_seconds=-1)
    assert err.value.field == "gracePeriodSeconds"
    assert not store.get("Pod", "a", "default")["metadata"].get("deletionTimestamp")


def test_delete_precondition_holds_for_a_terminating_object(store: Store) -> None:
    created = store.create(pod("a", finalizers=[HOLD]))
    store.delete("Pod", "a", "default")
    with pytest.raises(Conflict):
        store.delete("Pod", "a", "default", resource_version=created["metadata"]["resourceVersion"])


# ---------------------------------------------------------------------------------------------- pools


def test_a_terminating_pool_takes_releases_but_no_claims(store: Store) -> None:
    store.create(pool("p1", finalizers=[FINALIZER]))
    version = store.usage("p1").resource_version
    store.commit(claims=[Claim("p1", version, "10.0.0.1", "default/a", "u-a")])
    store.delete("SpiderIPPool", "p1")
    usage = store.usage("p1")
    assert list(usage.allocated) == [0x0A000001]
    with pytest.raises(Conflict, match=r'^SpiderIPPool "p1": .*terminating'):
        store.commit(claims=[Claim("p1", usage.resource_version, "10.0.0.2", "default/b", "u-b")])
    assert [r.ip for r in store.records("p1")] == ["10.0.0.1"]
    store.commit(releases=[IPRecord("p1", "10.0.0.1", "default/a", "u-a")])
    after = store.get("SpiderIPPool", "p1")
    assert store.records("p1") == [] and after["status"]["allocatedIPCount"] == 0
    assert after["metadata"]["deletionTimestamp"]  # its finalizer still holds it
    assert store.usage("p1").resource_version != usage.resource_version


def test_a_pool_removed_with_records_takes_them_along(store: Store) -> None:
    """Removing a pool drops its records (in Kubernetes they live in its status): a new pool of the
    same name starts empty and the IPs are free for any pool."""
    store.create(pool("p1", finalizers=[FINALIZER]))
    version = store.usage("p1").resource_version
    store.commit(claims=[Claim("p1", version, "10.0.0.1", "default/a", "u-a")])
    store.delete("SpiderIPPool", "p1")
    held = store.get("SpiderIPPool", "p1")
    held["metadata"]["finalizers"] = []
    store.update(held)
    assert gone(store, "SpiderIPPool", "p1")
    store.create(pool("p1"))
    assert store.records("p1") == [] and list(store.usage("p1").allocated) == []
    store.commit(claims=[Claim("p1", store.usage("p1").resource_version, "10.0.0.1", "default/b", "u-b")])
    assert [r.pod for r in store.records("p1")] == ["default/b"]


def endpoint(name: str, finalizers: list[str]) -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderEndpoint",
        "metadata": {"name": name, "namespace": "default", "finalizers": finalizers},
        "status": {
            "current": {"uid": "u-" + name, "node": "node1", "ips": []},
            "ownerControllerType": "Pod",  # required by the SpiderEndpoint CRD
            "ownerControllerName": name,
        },
    }


def test_commit_delete_endpoint_drops_spiderpools_finalizer_and_deletes(store: Store) -> None:
    """As Spiderpool's agent after a release: its finalizer goes and the endpoint is deleted; another
    finalizer keeps it, terminating."""
    store.commit(endpoint=endpoint("a", [FINALIZER]))
    store.commit(endpoint=endpoint("b", [FINALIZER, HOLD]))
    assert store.get("SpiderEndpoint", "a", "default")["metadata"]["finalizers"] == [FINALIZER]
    store.commit(delete_endpoint=("default", "a"))
    store.commit(delete_endpoint=("default", "b"))
    assert gone(store, "SpiderEndpoint", "a", "default")
    held = store.get("SpiderEndpoint", "b", "default")["metadata"]
    assert held["finalizers"] == [HOLD] and held["deletionTimestamp"]


def test_finalizers_must_be_a_list_of_strings(store: Store) -> None:
    """A malformed finalizers field is refused; it can neither hide nor remove a terminating object."""
    bad = pod("a")
    bad["metadata"]["finalizers"] = "example.com/hold"
    with pytest.raises(Invalid):
        store.create(bad)
    store.create(pod("a", finalizers=[HOLD]))
    store.delete("Pod", "a", "default")
    held = store.get("Pod", "a", "default")
    held["metadata"]["finalizers"] = HOLD
    with pytest.raises(Invalid):
        store.update(held)
    assert store.get("Pod", "a", "default")["metadata"]["finalizers"] == [HOLD]
