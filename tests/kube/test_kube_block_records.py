"""Block pools on the Kubernetes store (issue 15): records in the SpiderIPBlocks, not the pool, so no
per-pool record cap, nodes in their own blocks do not conflict, and the leader keeps the pool's count."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ipam.block_claims import list_blocks
from ipam.blocks import BLOCK_KIND
from ipam.controllers.blocks import BlockReturn
from ipam.model import decode_allocated_ips
from ipam.service import IpamService, IpamSettings
from ipam.store.kube import KubeStore
from spiderbgp.agent import CACHED_KINDS
from spiderbgp.config import GcConfig, IpamConfig
from spiderbgp.leadership import ControllerThread
from tests.kube_emulator import KubeEmulator
from tests.service.world import SPIDER_API, World

SETTINGS = IpamSettings(enable_ipv6=False, conflict_retries=60, backoff_seconds=0.001)


def _block_pool(store: KubeStore, name: str, subnet: str, ips: str, size: str) -> None:
    store.create(
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": name, "annotations": {"spiderbgp.io/block-size": size}},
            "spec": {"subnet": subnet, "ips": [ips]},
        }
    )


def test_a_block_pool_holds_more_records_than_one_pool_object_may(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    admin = store_factory(token=kube_emulator.admin_token)
    # pods are created as the test goes: read from the server, the pools and blocks from the caches
    store = store_factory(
        token=kube_emulator.agent_token, max_pool_records=50, cached_kinds=("SpiderIPPool", "SpiderIPBlock")
    )
    _block_pool(admin, "bp", "10.8.0.0/22", "10.8.0.1-10.8.3.254", "26")
    world = World(admin)
    svc = IpamService(store, node_name="node1", settings=SETTINGS)
    ips = []
    for i in range(120):
        world.pod(f"p{i}", node="node1")
        ips.append(svc.allocate(world.add(f"p{i}", v4=["bp"])).ips[0].ip)
    assert len(set(ips)) == 120 and ips[0] == "10.8.0.1" and ips[-1] == "10.8.0.120"
    assert len(store.records("bp")) == 120  # past max_pool_records=50: the cap is a plain pool's
    stored = kube_emulator.stored("SpiderIPPool", "bp")
    assert stored is not None and "allocatedIPs" not in stored.get("status", {})
    blocks = list_blocks(admin)
    assert [b.node for b in blocks] == ["node1", "node1"]
    held = [decode_allocated_ips(admin.get(BLOCK_KIND, b.name)["status"].get("allocatedIPs")) for b in blocks]
    assert [len(h) for h in held] == [63, 57]  # .0 of the first /26 is the subnet's own address
    # a read sums the blocks; the stored count (kubectl get sp, allocated_ips=False) is the leader's
    assert store.get("SpiderIPPool", "bp")["status"]["allocatedIPCount"] == 120
    assert [p["status"]["allocatedIPCount"] for p in admin.list("SpiderIPPool")] == [120]
    assert "allocatedIPCount" not in store.get("SpiderIPPool", "bp", allocated_ips=False).get("status", {})
    # the leader (as the agent's ServiceAccount) writes the count kubectl get sp prints
    assert BlockReturn(store, clock=lambda: 0.0).counts().updated == ["SpiderIPPool bp"]
    stored = kube_emulator.stored("SpiderIPPool", "bp")
    assert stored is not None and stored["status"]["allocatedIPCount"] == 120


def test_three_nodes_on_one_block_pool_do_not_conflict(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    admin = store_factory(token=kube_emulator.admin_token)
    _block_pool(admin, "bp", "10.9.0.0/24", "10.9.0.1-10.9.0.254", "27")
    world = World(admin)
    nodes = ("node1", "node2", "node3")
    stores = {n: store_factory(token=kube_emulator.agent_token, cached_kinds=CACHED_KINDS) for n in nodes}
    seen = dict.fromkeys(nodes, 0)

    def counter(node: str) -> Callable[[], None]:
        def count() -> None:
            seen[node] += 1

        return count

    services = {
        n: IpamService(stores[n], node_name=n, settings=SETTINGS, on_conflict=counter(n)) for n in nodes
    }
    requests = {}
    for n in nodes:
        for i in range(20):
            world.pod(f"{n}-{i}", node=n)
            requests[f"{n}-{i}"] = world.add(f"{n}-{i}", v4=["bp"])
    got: dict[str, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(nodes))

    def run(node: str) -> None:
        start.wait()
        try:
            for i in range(20):
                got[f"{node}-{i}"] = services[node].allocate(requests[f"{node}-{i}"]).ips[0].ip
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(got.values())) == 60
    blocks = list_blocks(admin)
    assert sorted(b.node for b in blocks) == ["node1", "node2", "node3"]  # 20 pods fit one /27 each
    # the only conflicts a node may meet are block claims lost to another node (one per block at most)
    assert sum(seen.values()) + sum(s.conflicts for s in stores.values()) <= len(nodes)
    for pod, ip in got.items():
        block = next(
            b for b in blocks if b.start <= int(ip.rpartition(".")[2]) + (10 << 24 | 9 << 16) <= b.end
        )
        assert block.node == pod.partition("-")[0]


def _stored_count(kube_emulator: KubeEmulator, pool: str) -> object:
    stored = kube_emulator.stored("SpiderIPPool", pool)
    return None if stored is None else (stored.get("status") or {}).get("allocatedIPCount")


def _wait_until(cond: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``cond`` held (polled); AssertionError after ``timeout``."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, "condition not reached"
        threading.Event().wait(0.02)
    return time.monotonic() - start


def test_the_leaders_controller_thread_keeps_the_stored_count_as_blocks_change(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """The leader follows block watch events: within its reconcile delay (a watch batch, at most 1 s)
    the stored allocatedIPCount, what kubectl get sp prints, follows allocations and releases."""
    admin = store_factory(token=kube_emulator.admin_token)
    _block_pool(admin, "bp", "10.7.0.0/24", "10.7.0.1-10.7.0.254", "28")
    leader_store = store_factory(token=kube_emulator.agent_token, cached_kinds=CACHED_KINDS)
    node_store = store_factory(
        token=kube_emulator.agent_token, cached_kinds=("SpiderIPPool", "SpiderIPBlock")
    )
    world = World(admin)
    svc = IpamService(node_store, node_name="node1", settings=SETTINGS)
    leader = ControllerThread(
        leader_store, IpamConfig(gc=GcConfig(trace_interval_seconds=0.2)), on_released=lambda _: None
    )
    leader.start()
    try:
        _wait_until(lambda: _stored_count(kube_emulator, "bp") == 0, 10.0)  # the first full pass
        adds = []
        for i in range(20):
            world.pod(f"p{i}", node="node1")
            adds.append(world.add(f"p{i}", v4=["bp"]))
            svc.allocate(adds[-1])
        assert len(list_blocks(admin)) == 2  # /28s: 15 then 5 (10.7.0.0 is the subnet's own)
        assert _wait_until(lambda: _stored_count(kube_emulator, "bp") == 20, 10.0) < 5.0
        for i, add in enumerate(adds[:7]):
            world.delete_pod(f"p{i}")
            assert len(svc.release(world.delete_request(add)).records) == 1
        assert len(node_store.records("bp")) == 13, _stored_count(kube_emulator, "bp")
        assert _wait_until(lambda: _stored_count(kube_emulator, "bp") == 13, 10.0) < 5.0
        assert admin.get("SpiderIPPool", "bp")["status"]["allocatedIPCount"] == 13
    finally:
        leader.stop(timeout=5.0)


def test_records_of_a_pod_come_from_the_cached_blocks_naming_it_read_again(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """records_of_pod with a block cache reads only the blocks naming the pod, from the server: a
    record another process released is gone at once, whatever the cache still holds."""
    admin = store_factory(token=kube_emulator.admin_token)
    _block_pool(admin, "bp", "10.6.0.0/24", "10.6.0.1-10.6.0.254", "28")
    store = store_factory(token=kube_emulator.agent_token, cached_kinds=("SpiderIPPool", "SpiderIPBlock"))
    world = World(admin)
    svc = IpamService(store, node_name="node1", settings=SETTINGS)
    for i in range(20):  # two blocks
        world.pod(f"p{i}", node="node1")
        svc.allocate(world.add(f"p{i}", v4=["bp"]))
    [rec] = store.records_of_pod("default", "p17")
    assert (rec.pool, rec.ip) == ("bp", "10.6.0.18")
    requests = kube_emulator.requests
    assert store.records_of_pod("default", "nobody") == []
    assert kube_emulator.requests - requests == 1  # the plain pools' list; no block names the pod
    requests = kube_emulator.requests
    assert [(r.ip, r.pod) for r in store.records_of_pod("default", "p3")] == [("10.6.0.4", "default/p3")]
    assert kube_emulator.requests - requests == 2  # and one GET of the block naming it
    admin.commit(releases=[rec])  # another process (the cache may not have seen it yet)
    assert store.records_of_pod("default", "p17") == []
