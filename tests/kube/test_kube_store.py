"""What the Kubernetes store does beyond the shared contract: where records live, HTTP failures,
retries that re-read, the record limit, finalizers, and the informer cache (resume, re-list on 410)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from ipam.errors import Conflict, NotFound, StoreUnavailable
from ipam.kinds import kind_info
from ipam.records import Claim, IPRecord, Obj
from ipam.store.kube import KubeStore, PoolFull
from ipam.store.kube_api import resource_path
from tests.kube_emulator import KubeEmulator, parse_label_selector

SPIDER = "spiderpool.spidernet.io/v2beta1"
MakeStore = Callable[..., KubeStore]


def pool(name: str, ips: str = "10.0.0.1-10.0.0.100", **labels: str) -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": name, "labels": labels},
        "spec": {"subnet": "10.0.0.0/24", "ips": [ips]},
    }


def pod(name: str, namespace: str = "default", **labels: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "nginx"}]},
    }


def http(
    emulator: KubeEmulator, method: str, path: str, body: Obj | None = None, *, token: str | None = None
) -> tuple[int, Any]:
    """One raw request, as the cluster admin unless ``token`` says who."""
    return emulator.call(method, path, body, token=token)


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


# ------------------------------------------------------------------------------ the emulator itself


def test_emulator_status_subresource_and_unconditional_update_rules(kube_emulator: KubeEmulator) -> None:
    path = resource_path(kind_info("SpiderIPPool"))
    code, created = http(kube_emulator, "POST", path, {**pool("p1"), "status": {"allocatedIPCount": 7}})
    assert code == 201 and "status" not in created  # status is dropped on create
    item = f"{path}/p1"
    changed = {**created, "spec": {**created["spec"], "default": True}, "status": {"allocatedIPCount": 1}}
    code, out = http(kube_emulator, "PUT", item, changed)
    assert code == 200 and out["spec"]["default"] is True and "status" not in out
    assert out["metadata"]["generation"] == 2
    code, out2 = http(
        kube_emulator, "PUT", item + "/status", {**out, "spec": {}, "status": {"allocatedIPCount": 2}}
    )
    assert code == 200 and out2["status"] == {"allocatedIPCount": 2} and out2["spec"]["default"] is True
    assert out2["metadata"]["generation"] == 2
    code, err = http(kube_emulator, "PUT", item, changed)  # stale resourceVersion
    assert (code, err["reason"], err["code"]) == (409, "Conflict", 409)
    no_rv = {**out2, "metadata": {k: v for k, v in out2["metadata"].items() if k != "resourceVersion"}}
    code, err = http(kube_emulator, "PUT", item, no_rv)  # custom resources need a resourceVersion
    assert (code, err["reason"]) == (422, "Invalid")


def test_emulator_finalizers_hold_deletion(kube_emulator: KubeEmulator) -> None:
    path = resource_path(kind_info("SpiderIPPool"))
    obj = pool("p1")
    obj["metadata"]["finalizers"] = ["spiderpool.spidernet.io"]
    http(kube_emulator, "POST", path, obj)
    code, held = http(kube_emulator, "DELETE", f"{path}/p1", {"kind": "DeleteOptions"})
    assert code == 200 and held["metadata"]["deletionTimestamp"]
    held["metadata"]["finalizers"] = []
    code, _ = http(kube_emulator, "PUT", f"{path}/p1", held)
    assert code == 200
    assert kube_emulator.stored("SpiderIPPool", "p1") is None


def test_emulator_label_selectors() -> None:
    sel = parse_label_selector("app in (a, b),tier!=db,!legacy,env")
    assert sel.matches({"app": "a", "env": "x"})
    assert not sel.matches({"app": "c", "env": "x"})
    assert not sel.matches({"app": "a", "env": "x", "tier": "db"})
    assert not sel.matches({"app": "a", "env": "x", "legacy": ""})
    assert not sel.matches({"app": "a"})
    assert parse_label_selector("a notin (x)").matches({})
    with pytest.raises(ValueError):
        parse_label_selector("a in x")


def test_emulator_watch_turns_label_changes_into_added_and_deleted(kube_emulator: KubeEmulator) -> None:
    path = resource_path(kind_info("Pod"), "default")
    start = kube_emulator.revision
    _, a = http(kube_emulator, "POST", path, pod("a", app="x"))
    a["metadata"]["labels"] = {"app": "y"}
    http(kube_emulator, "PUT", f"{path}/a", a)
    query = f"?watch=1&resourceVersion={start}&timeoutSeconds=1&labelSelector=app%3Dx"
    auth = {"Authorization": f"Bearer {kube_emulator.admin_token}"}
    req = urllib.request.Request(kube_emulator.url + path + query, headers=auth)
    with urllib.request.urlopen(req, timeout=5) as resp:
        events = [json.loads(line) for line in resp]
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]


# ----------------------------------------------------------------------------- records and HTTP


def test_records_live_in_the_pool_status_as_spiderpool_writes_them(
    kube_emulator: KubeEmulator, kube_store: KubeStore
) -> None:
    kube_store.create(pool("p1"))
    version = kube_store.usage("p1").resource_version
    kube_store.commit(claims=[Claim("p1", version, "10.0.0.1", "default/a", "uid-a")])
    stored = kube_emulator.stored("SpiderIPPool", "p1")
    assert stored is not None
    assert stored["status"]["allocatedIPs"] == '{"10.0.0.1":{"pod":"default/a","podUid":"uid-a"}}'
    assert stored["status"]["allocatedIPCount"] == 1
    kube_store.commit(releases=[IPRecord("p1", "10.0.0.1", "default/a", "uid-a")])
    stored = kube_emulator.stored("SpiderIPPool", "p1")
    assert stored is not None
    assert "allocatedIPs" not in stored["status"]  # absent when empty, as Spiderpool leaves it
    assert stored["status"]["allocatedIPCount"] == 0


def test_records_written_by_another_writer_are_read(
    kube_emulator: KubeEmulator, kube_store: KubeStore
) -> None:
    obj = pool("p1")
    obj["status"] = {"allocatedIPs": '{"10.0.0.7":{"pod":"ns/x","podUid":"u"}}', "allocatedIPCount": 1}
    kube_emulator.put(obj)  # as the Spiderpool agent would have left it
    assert kube_store.records("p1") == [IPRecord("p1", "10.0.0.7", "ns/x", "u")]
    assert kube_store.records_of_pod("ns", "x") == [IPRecord("p1", "10.0.0.7", "ns/x", "u")]


def test_malformed_allocated_ips_is_one_line_naming_the_field(
    kube_emulator: KubeEmulator, kube_store: KubeStore
) -> None:
    obj = pool("p1")
    obj["status"] = {"allocatedIPs": "{not json"}
    kube_emulator.put(obj)
    with pytest.raises(Exception, match=r'SpiderIPPool "p1": status.allocatedIPs: not valid JSON') as err:
        kube_store.usage("p1")
    assert "\n" not in str(err.value)


def test_server_errors_on_reads_are_retried(kube_emulator: KubeEmulator, kube_store: KubeStore) -> None:
    kube_store.create(pool("p1"))
    kube_emulator.faults.fail_requests(2, 500)
    assert kube_store.get("SpiderIPPool", "p1")["metadata"]["name"] == "p1"
    kube_emulator.faults.fail_requests(100, 503)
    with pytest.raises(StoreUnavailable, match="503"):
        kube_store.get("SpiderIPPool", "p1")
    kube_emulator.faults.fail_requests(0)


def test_server_error_on_a_write_is_unavailable_and_writes_nothing(
    kube_emulator: KubeEmulator, kube_store: KubeStore
) -> None:
    kube_emulator.faults.fail_requests(1, 500, frozenset({"POST"}))
    with pytest.raises(StoreUnavailable) as err:
        kube_store.create(pool("p1"))
    assert "\n" not in str(err.value)
    assert kube_emulator.stored("SpiderIPPool", "p1") is None


def test_unreachable_server_is_unavailable_in_one_line() -> None:
    emulator = KubeEmulator().start()
    url = emulator.url
    cfg = emulator.configuration()
    emulator.stop()
    store = KubeStore.connect(cfg)
    try:
        with pytest.raises(StoreUnavailable) as err:
            store.get("SpiderIPPool", "p1")
        assert url in str(err.value) and "\n" not in str(err.value)
    finally:
        store.close()


def test_injected_conflict_on_a_claim_goes_back_to_the_caller(
    kube_emulator: KubeEmulator, kube_store: KubeStore
) -> None:
    kube_store.create(pool("p1"))
    version = kube_store.usage("p1").resource_version
    kube_emulator.faults.conflict_on_writes(1)
    with pytest.raises(Conflict):
        kube_store.commit(claims=[Claim("p1", version, "10.0.0.1", "default/a", "uid-a")])
    assert kube_store.records("p1") == []
    # the caller re-reads and tries again
    version = kube_store.usage("p1").resource_version
    kube_store.commit(claims=[Claim("p1", version, "10.0.0.1", "default/a", "uid-a")])
    assert [r.ip for r in kube_store.records("p1")] == ["10.0.0.1"]


def test_releases_and_unconditional_writes_re_read_and_retry_on_conflict(
    kube_emulator: KubeEmulator, kube_store: KubeStore
) -> None:
    kube_store.create(pool("p1"))
    version = kube_store.usage("p1").resource_version
    kube_store.commit(claims=[Claim("p1", version, "10.0.0.1", "default/a", "uid-a")])
    kube_emulator.faults.conflict_on_writes(1, 2)
    kube_store.commit(releases=[IPRecord("p1", "10.0.0.1", "default/a", "uid-a")])
    assert kube_store.records("p1") == []
    assert kube_store.retries == 2
    kube_emulator.faults.conflict_on_writes(1)
    obj = kube_store.get("SpiderIPPool", "p1")
    del obj["metadata"]["resourceVersion"]
    obj["spec"]["default"] = True
    assert kube_store.update(obj)["spec"]["default"] is True
    assert kube_store.retries == 3
    kube_emulator.faults.conflict_every = 1  # every write conflicts: bounded, then Conflict
    with pytest.raises(Conflict):
        kube_store.update(obj)
    assert kube_store.retries == 3 + 4  # Backoff(): 5 attempts


def test_record_limit_refuses_the_claim_and_writes_nothing(store_factory: MakeStore) -> None:
    store = store_factory(max_pool_records=3)
    store.create(pool("p1"))
    for i in range(1, 4):
        version = store.usage("p1").resource_version
        store.commit(claims=[Claim("p1", version, f"10.0.0.{i}", f"default/p{i}", f"u{i}")])
    version = store.usage("p1").resource_version
    with pytest.raises(PoolFull) as err:
        store.commit(claims=[Claim("p1", version, "10.0.0.4", "default/p4", "u4")])
    assert str(err.value).startswith('SpiderIPPool "p1": status.allocatedIPs: holds 3 records')
    assert err.value.retryable is False
    assert store.usage("p1").resource_version == version
    assert len(store.records("p1")) == 3


def test_deleting_an_endpoint_lets_go_of_spiderpools_finalizer(
    kube_emulator: KubeEmulator, kube_store: KubeStore
) -> None:
    ep = {
        "apiVersion": SPIDER,
        "kind": "SpiderEndpoint",
        "metadata": {"name": "a", "namespace": "default", "finalizers": ["spiderpool.spidernet.io"]},
        "status": {
            "current": {"uid": "u", "node": "n", "ips": []},
            "ownerControllerType": "Pod",
            "ownerControllerName": "a",
        },
    }
    kube_store.commit(endpoint=ep)
    kube_store.commit(delete_endpoint=("default", "a"))
    assert kube_emulator.stored("SpiderEndpoint", "a", "default") is None
    kube_store.commit(delete_endpoint=("default", "a"))  # absent: nothing to do


def test_creating_in_a_missing_namespace_names_the_namespace(kube_store: KubeStore) -> None:
    with pytest.raises(NotFound) as err:
        kube_store.create(pod("a", namespace="nowhere"))
    assert str(err.value) == 'Namespace "nowhere" not found'


# ----------------------------------------------------------------------------- watch and informer


def test_store_watch_resumes_over_dropped_streams(kube_emulator: KubeEmulator, kube_store: KubeStore) -> None:
    start = kube_store.revision()
    for i in range(5):
        kube_store.create(pod(f"p{i}"))
    kube_emulator.faults.drop_watches(2, after_events=2)
    events = list(kube_store.watch(["Pod"], start, timeout=0.5))
    assert [e.object["metadata"]["name"] for e in events] == [f"p{i}" for i in range(5)]
    assert kube_emulator.faults.watches_dropped == 2


def test_informer_serves_reads_and_follows_other_writers(
    kube_emulator: KubeEmulator, store_factory: MakeStore
) -> None:
    cached = store_factory(cached_kinds=["Pod", "SpiderIPPool"])
    other = store_factory()
    cached.create(pod("a", app="web"))
    assert cached.get("Pod", "a", "default")["metadata"]["labels"] == {"app": "web"}  # its own write
    other.create(pod("b", app="web"))
    wait_until(lambda: len(cached.list("Pod", labels={"app": "web"})) == 2)
    requests = kube_emulator.requests
    for _ in range(20):
        cached.get("Pod", "b", "default")
    assert kube_emulator.requests == requests  # served from memory
    other.delete("Pod", "a", "default")
    wait_until(lambda: [o["metadata"]["name"] for o in cached.list("Pod")] == ["b"])
    with pytest.raises(NotFound):
        cached.get("Pod", "a", "default")
    # the write path still checks the server: a claim on a stale pool version is refused
    cached.create(pool("p1"))
    stale = cached.usage("p1").resource_version
    other.commit(claims=[Claim("p1", other.usage("p1").resource_version, "10.0.0.1", "default/b", "u")])
    with pytest.raises(Conflict):
        cached.commit(claims=[Claim("p1", stale, "10.0.0.2", "default/a", "v")])


def test_informer_resumes_after_drops_and_relists_after_410(
    kube_emulator: KubeEmulator, store_factory: MakeStore
) -> None:
    cached = store_factory(cached_kinds=["Pod"])
    informer = cached.informer("Pod")
    assert informer is not None and informer.lists == 1
    kube_emulator.faults.drop_watches(1)
    kube_emulator.put(pod("a"))  # wakes the open stream, which the fault then cuts
    wait_until(lambda: cached.list("Pod") != [])
    assert informer.lists == 1 and informer.resumes >= 1  # resumed from its resourceVersion
    # history forgotten while the stream is down: the resume gets 410, so it lists again
    kube_emulator.faults.drop_watches(1)
    kube_emulator.put(pod("b"))
    kube_emulator.compact()
    kube_emulator.put(pod("c"))
    wait_until(lambda: len(cached.list("Pod")) == 3)
    wait_until(lambda: informer.lists == 2)
