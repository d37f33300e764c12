"""The watch's resume point (``progress``) and its node filter (``pods_on_node``), on both stores.

A watcher of a few kinds that nothing changes for a while must still be able to resume after the
store has compacted the history past the last event it saw: ``progress`` carries the store's revision
to it (Kubernetes: BOOKMARK events; the embedded store: its revision at an empty poll).
"""

from __future__ import annotations

import threading
from functools import partial

from ipam.records import WatchEvent
from lab.frr import wait_until

from .conftest import BackendOptions, MakeStore
from .test_object_store import pod, pool


def _on(node: str, name: str) -> dict[str, object]:
    obj = pod("default", name)
    obj["spec"]["nodeName"] = node
    return obj


def _reached(marks: list[str], rev: int) -> bool:
    return bool(marks) and int(marks[-1]) >= rev


def test_a_quiet_watch_follows_the_store_and_resumes_after_compaction(make_store: MakeStore) -> None:
    store = make_store(BackendOptions(history=5))
    since = store.revision()
    marks: list[str] = []
    seen: list[WatchEvent] = []
    done = threading.Event()

    def follow() -> None:
        while not done.is_set():
            seen.extend(
                store.watch(
                    ["SpiderIPPool"], marks[-1] if marks else since, timeout=0.2, progress=marks.append
                )
            )

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        for i in range(12):  # other kinds change: twice the history goes by, no pool event
            rev = int(store.create(pod("default", f"p{i}"))["metadata"]["resourceVersion"])
            wait_until(partial(_reached, marks, rev), timeout=10, interval=0.02, what=f"progress to {rev}")
    finally:
        done.set()
        thread.join(timeout=15)
    assert seen == []
    assert [int(m) for m in marks] == sorted({int(m) for m in marks})  # forward only
    created = store.create(pool("quiet"))
    events = list(store.watch(["SpiderIPPool"], marks[-1], timeout=0.3))  # not Gone: the history kept it
    assert [(e.type, e.object["metadata"]["name"], e.revision) for e in events] == [
        ("ADDED", "quiet", created["metadata"]["resourceVersion"])
    ]


def test_a_pod_watch_on_one_node_sees_only_that_nodes_pods(make_store: MakeStore) -> None:
    store = make_store(BackendOptions())
    since = store.revision()
    store.create(_on("node2", "elsewhere"))
    store.create(_on("node1", "here"))
    store.create(pool("p"))
    store.delete("Pod", "elsewhere", "default")
    store.delete("Pod", "here", "default")
    events = list(store.watch(["Pod", "SpiderIPPool"], since, timeout=0.5, pods_on_node="node1"))
    assert [(e.type, e.object["kind"], e.object["metadata"]["name"]) for e in events] == [
        ("ADDED", "Pod", "here"),
        ("ADDED", "SpiderIPPool", "p"),
        ("DELETED", "Pod", "here"),
    ]
