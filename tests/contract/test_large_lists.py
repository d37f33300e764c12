"""A list longer than one page of the Kubernetes API (500 objects) is one consistent snapshot on every
backend, even while another thread writes: every untouched object appears once, none twice."""

from __future__ import annotations

import threading

from ipam.records import Obj
from ipam.store.protocol import Store


def pod(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "nginx"}]},
    }


def test_a_list_of_600_is_one_snapshot_while_others_write(store: Store) -> None:
    for i in range(600):
        store.create(pod(f"p{i:04d}"))
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        """Replace the first 60 pods one by one: each create before its delete."""
        try:
            for i in range(60):
                store.create(pod(f"new{i:04d}"))
                store.delete("Pod", f"p{i:04d}", "default")
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        lists = 0
        while not done.is_set() or lists == 0:
            names = [o["metadata"]["name"] for o in store.list("Pod", namespace="default")]
            lists += 1
            assert len(names) == len(set(names))
            assert len(names) in (600, 601)  # 601 between a create and its delete, never fewer
            assert {f"p{i:04d}" for i in range(60, 600)} <= set(names)
    finally:
        thread.join()
    assert not errors, errors
    final = {o["metadata"]["name"] for o in store.list("Pod", namespace="default")}
    assert final == {f"p{i:04d}" for i in range(60, 600)} | {f"new{i:04d}" for i in range(60)}
