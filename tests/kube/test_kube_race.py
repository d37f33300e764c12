"""Two agents allocating from one pool at once through the API (emulated), with conflicts injected on
top of the real ones: no IP is handed out twice, and the pool's records and counts stay exact.

Each agent is what a node runs: an ``IpamService`` on its own ``KubeStore`` (own HTTP connections and
informer caches).  A retryable AllocationError is retried the way the kubelet retries a failed CNI ADD.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from ipam.errors import AllocationError
from ipam.records import Obj
from ipam.service import AllocateRequest, Allocation, IpamService, IpamSettings, ReleaseRequest
from ipam.store.kube import KubeStore
from tests.kube_emulator import KubeEmulator

MakeStore = Callable[..., KubeStore]
SPIDER = "spiderpool.spidernet.io/v2beta1"
CACHED = ("Pod", "Namespace", "SpiderIPPool", "SpiderReservedIP")
PODS_PER_NODE = 15


def pool() -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": "shared"},
        "spec": {"ipVersion": 4, "subnet": "10.244.0.0/16", "ips": ["10.244.100.1-10.244.100.200"]},
    }


def pod(name: str, node: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": ["shared"]})},
        },
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
    }


def add(service: IpamService, name: str, uid: str) -> Allocation:
    """CNI ADD as the kubelet drives it: retried while the error says it is worth retrying."""
    for _ in range(30):
        try:
            return service.allocate(AllocateRequest(f"c-{name}", "eth0", "default", name, uid))
        except AllocationError as err:
            if not err.retryable:
                raise
    raise AssertionError(f"{name}: no IP after 30 ADDs")


def test_two_agents_racing_on_one_pool_never_share_an_ip(
    kube_emulator: KubeEmulator, store_factory: MakeStore
) -> None:
    admin = store_factory()
    admin.create(pool())
    uids: dict[str, str] = {}
    for node in ("node-a", "node-b"):
        for i in range(PODS_PER_NODE):
            created = admin.create(pod(f"{node}-{i}", node))
            uids[created["metadata"]["name"]] = created["metadata"]["uid"]
    conflicts = {"node-a": 0, "node-b": 0}

    def agent(node: str) -> IpamService:
        def seen() -> None:
            conflicts[node] += 1

        return IpamService(
            store_factory(cached_kinds=CACHED),
            node_name=node,
            settings=IpamSettings(enable_ipv6=False),
            on_conflict=seen,
        )

    agents = {node: agent(node) for node in ("node-a", "node-b")}
    kube_emulator.faults.conflict_every = 4  # on top of the real races: every 4th write is refused
    results: dict[str, Allocation] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(node: str) -> None:
        try:
            barrier.wait()
            for i in range(PODS_PER_NODE):
                name = f"{node}-{i}"
                results[name] = add(agents[node], name, uids[name])
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=run, args=(node,)) for node in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    kube_emulator.faults.conflict_every = 0

    ips = [a.ips[0].ip for a in results.values()]
    assert len(ips) == 2 * PODS_PER_NODE
    assert len(set(ips)) == len(ips), "an IP was handed out twice"
    assert kube_emulator.faults.conflicts_injected > 0
    assert sum(conflicts.values()) > 0

    # the pool, as the API server holds it, says exactly the same
    stored = kube_emulator.stored("SpiderIPPool", "shared")
    assert stored is not None
    records = json.loads(stored["status"]["allocatedIPs"])
    assert stored["status"]["allocatedIPCount"] == len(records) == len(ips)
    assert {ip: rec["pod"] for ip, rec in records.items()} == {
        a.ips[0].ip: f"default/{name}" for name, a in results.items()
    }
    # lowest-free allocation with no holes: the first N addresses of the pool
    assert sorted(ips, key=lambda ip: int(ip.rsplit(".", 1)[1])) == [
        f"10.244.100.{i}" for i in range(1, len(ips) + 1)
    ]
    for name, a in results.items():
        ep = admin.get("SpiderEndpoint", name, "default")
        assert ep["status"]["current"]["ips"][0]["ipv4"] == a.ips[0].address

    # both agents release their pods' IPs at once (after the pods are gone), again under conflicts
    for name in results:
        admin.delete("Pod", name, "default")
    kube_emulator.faults.conflict_every = 3

    def release(node: str) -> None:
        try:
            for i in range(PODS_PER_NODE):
                name = f"{node}-{i}"
                req = ReleaseRequest(f"c-{name}", "eth0", "default", name, uids[name])
                for _ in range(30):
                    try:
                        agents[node].release(req)
                        break
                    except AllocationError as err:
                        if not err.retryable:
                            raise
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=release, args=(node,)) for node in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    kube_emulator.faults.conflict_every = 0
    stored = kube_emulator.stored("SpiderIPPool", "shared")
    assert stored is not None
    assert "allocatedIPs" not in stored["status"]
    assert stored["status"]["allocatedIPCount"] == 0
    assert admin.list("SpiderEndpoint") == []
