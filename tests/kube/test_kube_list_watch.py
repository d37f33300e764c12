"""Lists and watches as kube-apiserver serves them: paged lists from one consistent snapshot (410 when
the snapshot is compacted), BOOKMARK events, and a history compacted by time, through which the
informer and the store's watch recover."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from ipam.errors import Gone
from ipam.kinds import kind_info
from ipam.store.kube import KubeStore
from ipam.store.kube_api import KubeApi, resource_path
from ipam.store.kube_informer import Informer
from tests.kube_emulator import KubeEmulator

SPIDER = "spiderpool.spidernet.io/v2beta1"
Obj = dict[str, Any]
POD = kind_info("Pod")
POOL = kind_info("SpiderIPPool")


def pod(name: str, **labels: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }


def pool(name: str) -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.9"]},
    }


def get(emulator: KubeEmulator, path: str) -> tuple[int, Any]:
    return emulator.call("GET", path)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


class Clock:
    """The emulator's clock for compaction, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(kube_emulator: KubeEmulator) -> Iterator[KubeApi]:
    a = KubeApi(k8s.ApiClient(kube_emulator.configuration(kube_emulator.admin_token)))
    try:
        yield a
    finally:
        a.close()


# ------------------------------------------------------------------------------------- paging


def test_later_pages_come_from_the_first_pages_snapshot(kube_emulator: KubeEmulator) -> None:
    """With 600 pods, deleting p0000 between pages must not lose the untouched p0500 (it did when
    ``continue`` was an offset into the live list)."""
    for i in range(600):
        kube_emulator.put(pod(f"p{i:04d}"))
    path = resource_path(POD, "default")
    code, first = get(kube_emulator, path + "?limit=500")
    assert code == 200 and len(first["items"]) == 500
    assert first["metadata"]["remainingItemCount"] == 100
    kube_emulator.put(pod("p0550", changed="yes"))
    code, _ = get(kube_emulator, path + "/p0000")
    assert code == 200
    kube_emulator.put(pod("a-new-one"))
    deleted = kube_emulator.stored("Pod", "p0000", "default")
    assert deleted is not None
    _delete_direct(kube_emulator, "p0000")
    token = first["metadata"]["continue"]
    code, second = get(kube_emulator, f"{path}?limit=500&continue={token}")
    assert code == 200
    names = [o["metadata"]["name"] for o in first["items"] + second["items"]]
    assert names == [f"p{i:04d}" for i in range(600)]  # the snapshot: no a-new-one, p0000 still there
    p0550 = next(o for o in second["items"] if o["metadata"]["name"] == "p0550")
    assert p0550["metadata"]["labels"] == {}  # as it was at the first page
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert "continue" not in second["metadata"]


def _delete_direct(emulator: KubeEmulator, name: str) -> None:
    code, _ = emulator.call("DELETE", resource_path(POD, "default", name))
    assert code == 200


def test_a_compacted_continue_token_is_410_expired(kube_emulator: KubeEmulator) -> None:
    for i in range(5):
        kube_emulator.put(pod(f"p{i}"))
    path = resource_path(POD, "default")
    _, first = get(kube_emulator, path + "?limit=2")
    kube_emulator.put(pod("later"))
    kube_emulator.compact()
    code, body = get(kube_emulator, f"{path}?limit=2&continue={first['metadata']['continue']}")
    assert (code, body["reason"]) == (410, "Expired")
    assert body["message"].startswith("The provided continue parameter is too old")
    code, body = get(kube_emulator, f"{path}?limit=2&continue=bm90LWEtdG9rZW4=")
    assert (code, body["reason"]) == (400, "BadRequest")
    assert "continue key is not valid" in body["message"]


def test_the_store_lists_600_pods_in_pages_while_others_write(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """Every untouched pod is listed once, whatever the writer does between the pages."""
    for i in range(600):
        kube_emulator.put(pod(f"p{i:04d}"))
    store = store_factory()
    stop = threading.Event()
    wrote = [0]

    def writer() -> None:
        i = 0
        while not stop.is_set():
            kube_emulator.put(pod(f"new{i:05d}"))
            _delete_direct(kube_emulator, f"p{i:04d}")
            i += 1
            wrote[0] = i
            if i == 100:
                return

    kube_emulator.faults.latency = 0.02  # pages take a while, so the writer gets in between
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(3):
            listed = [o["metadata"]["name"] for o in store.list("Pod", namespace="default")]
            # one snapshot: each delete comes after its create, so 600 pods, or 601 between the two
            assert len(listed) == len(set(listed)) and len(listed) in (600, 601)
            assert set(f"p{i:04d}" for i in range(100, 600)) <= set(listed)
    finally:
        stop.set()
        thread.join()
        kube_emulator.faults.latency = 0.0
    assert wrote[0] > 0


def test_a_list_whose_snapshot_expires_is_read_again_whole(kube_emulator: KubeEmulator, api: KubeApi) -> None:
    """As client-go's pager: 410 on a continue token, then one list without a limit."""
    for i in range(6):
        kube_emulator.put(pod(f"p{i}"))
    kube_emulator.faults.latency = 0.5
    done: list[tuple[list[Obj], str]] = []
    thread = threading.Thread(target=lambda: done.append(api.list_all(POD, namespace="default", page_size=4)))
    before = kube_emulator.requests
    thread.start()
    try:
        wait_until(lambda: kube_emulator.requests >= before + 2)  # the second page is being served
        kube_emulator.put(pod("p6"))
        kube_emulator.compact()
    finally:
        thread.join()
        kube_emulator.faults.latency = 0.0
    items, rv = done[0]
    assert sorted(o["metadata"]["name"] for o in items) == [f"p{i}" for i in range(7)]
    assert rv == str(kube_emulator.revision)
    assert kube_emulator.requests - before == 3  # page 1, the expired page 2, the whole list


# ---------------------------------------------------------------------- bookmarks and compaction


def test_bookmarks_carry_the_revision_to_a_quiet_watch(api: KubeApi, kube_emulator: KubeEmulator) -> None:
    kube_emulator.bookmark_interval = 0.05
    start = kube_emulator.revision
    kube_emulator.put(pod("other-kind"))
    stream = api.watch(POOL, resource_version=str(start), timeout_seconds=1)
    try:
        first = next(iter(stream))
    finally:
        stream.close()
    assert first == {
        "type": "BOOKMARK",
        "object": {
            "apiVersion": SPIDER,
            "kind": "SpiderIPPool",
            "metadata": {"resourceVersion": str(start + 1)},
        },
    }


def _informer_resumes(bookmark_interval: float) -> Informer:
    """An informer of pools that watched through writes of other kinds, whose stream is then cut
    after a compaction.  Returns it once it has caught up again (stopped)."""
    emulator = KubeEmulator(bookmark_interval=bookmark_interval).start()
    api = KubeApi(k8s.ApiClient(emulator.configuration(emulator.agent_token)))
    inf = Informer(api, POOL).start()
    try:
        assert inf.wait_synced(10)
        emulator.put(pool("p1"))
        wait_until(lambda: inf.get("p1") is not None)
        for i in range(3):
            emulator.put(pod(f"x{i}"))  # not the informer's kind: only a bookmark tells it
        if bookmark_interval < 1:
            wait_until(lambda: inf.resource_version == str(emulator.revision))
        emulator.compact()
        emulator.faults.drop_watches(1)  # the next thing sent cuts the stream
        emulator.put(pool("p2"))
        wait_until(lambda: inf.get("p2") is not None)
        return inf
    finally:
        inf.stop()
        api.close()
        emulator.stop()


def test_with_bookmarks_the_informer_resumes_after_a_compaction_without_a_relist() -> None:
    inf = _informer_resumes(bookmark_interval=0.05)
    assert (inf.lists, inf.resumes >= 1) == (1, True)


def test_without_bookmarks_the_informer_relists_after_a_compaction() -> None:
    inf = _informer_resumes(bookmark_interval=3600)
    assert inf.lists == 2


def test_history_is_compacted_by_time_and_the_informer_relists() -> None:
    """etcd's compaction as kube-apiserver asks for it: every interval, the revisions older than the
    previous compaction's go; a watch resumed from one gets 410 and the informer lists again."""
    clock = Clock()
    emulator = KubeEmulator(compaction_interval=300, clock=clock).start()
    api = KubeApi(k8s.ApiClient(emulator.configuration(emulator.agent_token)))
    inf = Informer(api, POOL, max_backoff=0.05).start()
    try:
        assert inf.wait_synced(10)
        listed_at = int(inf.resource_version)
        emulator.faults.fail_requests(10**6, 503, frozenset({"GET"}))  # it cannot watch again for now
        emulator.faults.drop_watches(1)
        emulator.put(pool("p1"))
        wait_until(lambda: emulator.faults.errors_injected > 0)
        clock.now = 300  # the first compaction: up to the revision of the start (nothing)
        emulator.compact_if_due()
        assert emulator.compacted_revision < listed_at
        emulator.put(pool("p2"))
        clock.now = 600  # the second: everything before it, the informer's revision included
        emulator.compact_if_due()
        emulator.faults.fail_requests(0)
        wait_until(lambda: inf.get("p1") is not None and inf.get("p2") is not None)
        assert inf.lists == 2
    finally:
        inf.stop()
        api.close()
        emulator.stop()


def test_a_store_watch_from_a_compacted_revision_is_gone(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """The agent's endpoint watch (store.watch) re-reads everything on Gone; this is what it gets."""
    store = store_factory()
    since = store.revision()
    kube_emulator.put(pool("p1"))
    kube_emulator.compact()
    with pytest.raises(Gone):
        for _ in store.watch(["SpiderEndpoint", "SpiderIPPool"], since, timeout=1.0):
            pass


def test_a_store_watch_resumed_into_a_compaction_raises_gone(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """The agent's endpoint watch (``store.watch``) mid-way: its stream breaks, and by the time it is
    opened again the history is compacted; the iterator raises Gone, which the agent answers with a
    full re-read."""
    store = store_factory()
    since = store.revision()
    seen: list[str] = []
    raised: list[BaseException] = []

    def follow() -> None:
        try:
            for ev in store.watch(["SpiderEndpoint", "SpiderIPPool"], since, timeout=10.0):
                seen.append(ev.object["metadata"]["name"])
        except BaseException as err:
            raised.append(err)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        kube_emulator.put(pool("p1"))
        wait_until(lambda: seen == ["p1"])
        kube_emulator.faults.latency = 0.5  # the watch opened again waits in the server...
        kube_emulator.faults.drop_watches(1)
        before = kube_emulator.requests
        kube_emulator.put(pool("p2"))  # ... after this event cut its stream
        wait_until(lambda: kube_emulator.requests > before)
        kube_emulator.compact()  # ... while the history is compacted
    finally:
        thread.join(timeout=15)
        kube_emulator.faults.latency = 0.0
    assert len(raised) == 1 and isinstance(raised[0], Gone), raised
    assert seen == ["p1"]
