"""The ObjectStore contract (ipam.store.protocol), run against every backend of conftest.BACKENDS."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

from ipam.errors import AlreadyExists, Conflict, Gone, Invalid, NotFound
from ipam.records import Obj
from ipam.store.protocol import Store

from .conftest import BackendOptions, MakeStore

SPIDER = "spiderpool.spidernet.io/v2beta1"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def pool(name: str, *, labels: dict[str, str] | None = None, ips: list[str] | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": meta,
        # default and disable as the CRD defaults them, so the API server returns the spec as sent
        "spec": {
            "subnet": "10.0.0.0/16",
            "ips": ips or ["10.0.0.1-10.0.0.9"],
            "default": False,
            "disable": False,
        },
    }


def pod(namespace: str, name: str, *, labels: dict[str, str] | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        meta["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "nginx"}]},
    }


def lease(name: str, holder: str) -> Obj:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


def names(objs: list[Obj]) -> list[tuple[str, str]]:
    return [(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs]


# ---------------------------------------------------------------------------------------------- create / get


def test_create_fills_server_metadata(store: Store) -> None:
    created = store.create(pool("p1", labels={"team": "a"}))
    meta = created["metadata"]
    assert meta["name"] == "p1"
    assert meta["labels"] == {"team": "a"}
    assert isinstance(meta["uid"], str) and meta["uid"]
    assert isinstance(meta["resourceVersion"], str) and meta["resourceVersion"]
    assert TIMESTAMP.match(meta["creationTimestamp"]), meta["creationTimestamp"]
    assert meta["generation"] == 1
    assert created["apiVersion"] == SPIDER and created["kind"] == "SpiderIPPool"
    assert created["spec"] == pool("p1")["spec"]

    got = store.get("SpiderIPPool", "p1")
    assert got["metadata"] == meta
    assert got["spec"] == created["spec"]

    other = store.create(pool("p2"))
    assert other["metadata"]["uid"] != meta["uid"]
    assert other["metadata"]["resourceVersion"] != meta["resourceVersion"]


def test_returned_objects_are_copies(store: Store) -> None:
    obj = pool("p1")
    created = store.create(obj)
    obj["spec"]["ips"].append("10.0.0.99")
    created["spec"]["ips"].append("10.0.0.98")
    got = store.get("SpiderIPPool", "p1")
    got["spec"]["ips"].clear()
    assert store.get("SpiderIPPool", "p1")["spec"]["ips"] == ["10.0.0.1-10.0.0.9"]


def test_create_twice_is_already_exists_and_changes_nothing(store: Store) -> None:
    first = store.create(pool("p1"))
    revision = store.revision()
    changed = pool("p1", ips=["10.0.1.1"])
    with pytest.raises(AlreadyExists) as err:
        store.create(changed)
    assert 'SpiderIPPool "p1" already exists' in str(err.value)
    assert store.revision() == revision
    assert store.get("SpiderIPPool", "p1")["spec"] == first["spec"]


def test_same_name_in_other_namespace_or_kind_is_a_different_object(store: Store) -> None:
    store.create(pod("default", "web"))
    store.create(pod("other", "web"))
    store.create(lease("web", "me"))
    assert store.get("Pod", "web", "default")["metadata"]["namespace"] == "default"
    assert store.get("Pod", "web", "other")["metadata"]["namespace"] == "other"
    assert store.get("Lease", "web", "kube-system")["spec"]["holderIdentity"] == "me"


def test_get_missing_is_not_found(store: Store) -> None:
    store.create(pod("default", "web"))
    with pytest.raises(NotFound) as err:
        store.get("SpiderIPPool", "nope")
    assert str(err.value) == 'SpiderIPPool "nope" not found'
    with pytest.raises(NotFound) as err2:
        store.get("Pod", "web", "elsewhere")
    assert err2.value.namespace == "elsewhere"


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"metadata": {"name": "x"}, "spec": {}}, "kind"),
        ({"kind": "NoSuchKind", "metadata": {"name": "x"}}, "kind"),
        ({"kind": "SpiderIPPool", "spec": {}}, "metadata"),
        ({"kind": "SpiderIPPool", "metadata": {"labels": {}}, "spec": {}}, "metadata.name"),
        ({"kind": "Pod", "metadata": {"name": "x"}, "spec": {}}, "metadata.namespace"),
    ],
)
def test_malformed_object_is_invalid_and_stores_nothing(store: Store, obj: Obj, field: str) -> None:
    revision = store.revision()
    with pytest.raises(Invalid) as err:
        store.create(obj)
    assert err.value.field == field
    assert "\n" not in str(err.value)
    assert store.revision() == revision
    assert store.list("SpiderIPPool") == []


# ---------------------------------------------------------------------------------------------- list


def test_list_sorted_and_filtered_by_namespace_and_labels(store: Store) -> None:
    store.create(pod("zeta", "a", labels={"app": "web", "tier": "front"}))
    store.create(pod("alpha", "b", labels={"app": "web"}))
    store.create(pod("alpha", "a", labels={"app": "db"}))
    store.create(pod("zeta", "0"))
    store.create(pool("web"))

    assert names(store.list("Pod")) == [("alpha", "a"), ("alpha", "b"), ("zeta", "0"), ("zeta", "a")]
    assert names(store.list("Pod", namespace="zeta")) == [("zeta", "0"), ("zeta", "a")]
    assert names(store.list("Pod", namespace="none")) == []
    assert names(store.list("Pod", labels={"app": "web"})) == [("alpha", "b"), ("zeta", "a")]
    assert names(store.list("Pod", labels={"app": "web", "tier": "front"})) == [("zeta", "a")]
    assert names(store.list("Pod", namespace="alpha", labels={"app": "web"})) == [("alpha", "b")]
    assert names(store.list("Pod", labels={"app": "cache"})) == []
    assert names(store.list("SpiderIPPool")) == [("", "web")]
    assert store.list("SpiderSubnet") == []


def test_list_returns_full_objects(store: Store) -> None:
    created = store.create(pool("p1", labels={"x": "y"}))
    (listed,) = store.list("SpiderIPPool")
    assert listed["metadata"] == created["metadata"]
    assert listed["spec"] == created["spec"]


# ---------------------------------------------------------------------------------------------- update


def test_update_with_current_version_replaces_spec_and_metadata(store: Store) -> None:
    created = store.create(pool("p1", labels={"a": "1"}))
    obj = store.get("SpiderIPPool", "p1")
    obj["spec"]["ips"] = ["10.0.0.1-10.0.0.20"]
    obj["metadata"]["labels"] = {"b": "2"}
    obj["metadata"]["annotations"] = {"note": "grown"}
    updated = store.update(obj)
    meta = updated["metadata"]
    assert updated["spec"]["ips"] == ["10.0.0.1-10.0.0.20"]
    assert meta["labels"] == {"b": "2"} and meta["annotations"] == {"note": "grown"}
    assert meta["resourceVersion"] != created["metadata"]["resourceVersion"]
    assert meta["uid"] == created["metadata"]["uid"]
    assert meta["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert meta["generation"] == 2
    assert store.get("SpiderIPPool", "p1")["metadata"] == meta


def test_update_with_stale_version_is_conflict_and_changes_nothing(store: Store) -> None:
    store.create(pool("p1"))
    first = store.get("SpiderIPPool", "p1")
    second = store.get("SpiderIPPool", "p1")
    first["spec"]["ips"] = ["10.0.0.5"]
    winner = store.update(first)
    second["spec"]["ips"] = ["10.0.0.6"]
    revision = store.revision()
    with pytest.raises(Conflict) as err:
        store.update(second)
    assert "p1" in str(err.value)
    assert store.revision() == revision
    assert store.get("SpiderIPPool", "p1")["spec"]["ips"] == ["10.0.0.5"]
    assert (
        store.get("SpiderIPPool", "p1")["metadata"]["resourceVersion"]
        == winner["metadata"]["resourceVersion"]
    )


def test_update_missing_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.update(pod("default", "ghost"))
    with pytest.raises(NotFound):
        store.update_status({**pod("default", "ghost"), "status": {"phase": "Running"}})


def test_generation_follows_spec_only(store: Store) -> None:
    store.create(pod("default", "web"))
    obj = store.get("Pod", "web", "default")
    obj["metadata"]["labels"] = {"new": "label"}
    obj = store.update(obj)
    assert obj["metadata"]["generation"] == 1
    obj["status"] = {"phase": "Running"}
    obj = store.update_status(obj)
    assert obj["metadata"]["generation"] == 1
    obj["spec"]["nodeName"] = "node2"
    obj = store.update(obj)
    assert obj["metadata"]["generation"] == 2


def test_update_keeps_status_of_kinds_with_status_subresource(store: Store) -> None:
    store.create(pod("default", "web"))
    obj = store.get("Pod", "web", "default")
    obj["status"] = {"phase": "Running", "podIP": "10.0.0.7"}
    with_status = store.update_status(obj)
    assert with_status["status"] == {"phase": "Running", "podIP": "10.0.0.7"}

    with_status["status"] = {"phase": "Failed"}
    with_status["spec"]["nodeName"] = "node9"
    updated = store.update(with_status)
    assert updated["spec"]["nodeName"] == "node9"
    assert updated["status"] == {"phase": "Running", "podIP": "10.0.0.7"}
    assert store.get("Pod", "web", "default")["status"] == {"phase": "Running", "podIP": "10.0.0.7"}


def test_update_status_changes_only_status(store: Store) -> None:
    created = store.create(pod("default", "web", labels={"a": "1"}))
    obj = store.get("Pod", "web", "default")
    obj["spec"]["nodeName"] = "elsewhere"
    obj["metadata"]["labels"] = {"b": "2"}
    obj["status"] = {"phase": "Pending"}
    result = store.update_status(obj)
    assert result["status"] == {"phase": "Pending"}
    assert result["spec"] == created["spec"]
    assert result["metadata"]["labels"] == {"a": "1"}
    assert result["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]


def test_update_status_with_stale_version_is_conflict(store: Store) -> None:
    store.create(pod("default", "web"))
    stale = store.get("Pod", "web", "default")
    fresh = store.get("Pod", "web", "default")
    fresh["status"] = {"phase": "Running"}
    store.update_status(fresh)
    stale["status"] = {"phase": "Failed"}
    with pytest.raises(Conflict):
        store.update_status(stale)
    assert store.get("Pod", "web", "default")["status"] == {"phase": "Running"}


def test_update_replaces_status_of_kinds_without_status_subresource(store: Store) -> None:
    endpoint = {
        "apiVersion": SPIDER,
        "kind": "SpiderEndpoint",
        "metadata": {"name": "web", "namespace": "default"},
        "status": {
            "current": {"uid": "u1", "node": "node1"},
            "ownerControllerType": "Pod",
            "ownerControllerName": "web",
        },
    }
    store.create(endpoint)
    obj = store.get("SpiderEndpoint", "web", "default")
    obj["status"] = {
        "current": {"uid": "u2", "node": "node2"},
        "ownerControllerType": "Pod",
        "ownerControllerName": "web",
    }
    store.update(obj)
    assert store.get("SpiderEndpoint", "web", "default")["status"] == obj["status"]


def test_update_without_resource_version_is_unconditional(store: Store) -> None:
    store.create(pod("default", "web"))
    obj = store.get("Pod", "web", "default")
    other = store.get("Pod", "web", "default")
    other["metadata"]["labels"] = {"first": "write"}
    store.update(other)
    del obj["metadata"]["resourceVersion"]
    obj["metadata"]["labels"] = {"second": "write"}
    assert store.update(obj)["metadata"]["labels"] == {"second": "write"}


def test_update_cannot_change_server_fields(store: Store) -> None:
    created = store.create(lease("l1", "a"))
    obj = store.get("Lease", "l1", "kube-system")
    obj["metadata"]["uid"] = "forged"
    obj["metadata"]["creationTimestamp"] = "1999-01-01T00:00:00Z"
    obj["spec"]["holderIdentity"] = "b"
    updated = store.update(obj)
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert updated["spec"]["holderIdentity"] == "b"


# ---------------------------------------------------------------------------------------------- delete


def test_delete_with_precondition(store: Store) -> None:
    created = store.create(lease("l1", "a"))
    store.update({**created, "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15}})
    with pytest.raises(Conflict):
        store.delete("Lease", "l1", "kube-system", resource_version=created["metadata"]["resourceVersion"])
    current = store.get("Lease", "l1", "kube-system")
    store.delete("Lease", "l1", "kube-system", resource_version=current["metadata"]["resourceVersion"])
    with pytest.raises(NotFound):
        store.get("Lease", "l1", "kube-system")
    with pytest.raises(NotFound):
        store.delete("Lease", "l1", "kube-system")


def test_delete_without_precondition_and_recreate(store: Store) -> None:
    first = store.create(pool("p1"))
    store.delete("SpiderIPPool", "p1")
    assert store.list("SpiderIPPool") == []
    again = store.create(pool("p1"))
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert again["metadata"]["generation"] == 1


# ---------------------------------------------------------------------------------------------- watch


def test_watch_sees_every_change_in_order(store: Store) -> None:
    store.create(pod("default", "before"))
    start = store.revision()
    a = store.create(pod("default", "a"))
    b = store.create(pool("p1"))
    a["metadata"]["labels"] = {"changed": "yes"}
    a2 = store.update(a)
    store.create(lease("l1", "x"))  # a kind nobody watches below
    store.delete("Pod", "a", "default")

    events = list(store.watch(["Pod", "SpiderIPPool"], start, timeout=0.2))
    assert [(e.type, e.object["kind"], e.object["metadata"]["name"]) for e in events] == [
        ("ADDED", "Pod", "a"),
        ("ADDED", "SpiderIPPool", "p1"),
        ("MODIFIED", "Pod", "a"),
        ("DELETED", "Pod", "a"),
    ]
    assert events[0].revision == a["metadata"]["resourceVersion"]
    assert events[1].revision == b["metadata"]["resourceVersion"]
    assert events[2].revision == a2["metadata"]["resourceVersion"]
    assert events[2].object["metadata"]["labels"] == {"changed": "yes"}
    assert len({e.revision for e in events}) == 4

    # resuming from any event's revision gives exactly what followed it
    later = list(store.watch(["Pod", "SpiderIPPool"], events[1].revision, timeout=0.2))
    assert [(e.type, e.revision) for e in later] == [(e.type, e.revision) for e in events[2:]]
    assert list(store.watch(["Pod"], events[-1].revision, timeout=0.1)) == []


def test_watch_waits_for_new_events_and_ends_after_quiet_timeout(store: Store) -> None:
    start = store.revision()

    def writer() -> None:
        time.sleep(0.3)
        store.create(pod("default", "late"))

    thread = threading.Thread(target=writer)
    began = time.monotonic()
    thread.start()
    try:
        events = list(store.watch(["Pod"], start, timeout=1.5))
    finally:
        thread.join()
    elapsed = time.monotonic() - began
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [("ADDED", "late")]
    assert 1.5 <= elapsed < 6, elapsed


def test_watch_from_compacted_revision_is_gone(make_store: MakeStore) -> None:
    store = make_store(BackendOptions(history=5))
    first = store.create(pod("default", "p0"))
    for i in range(1, 30):
        store.create(pod("default", f"p{i}"))
    with pytest.raises(Gone):
        list(store.watch(["Pod"], first["metadata"]["resourceVersion"], timeout=0.1))
    # the documented recovery: list, then watch from the current revision
    now = store.revision()
    assert len(store.list("Pod")) == 30
    store.create(pod("default", "p30"))
    assert [e.object["metadata"]["name"] for e in store.watch(["Pod"], now, timeout=0.2)] == ["p30"]
