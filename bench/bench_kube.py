"""Two agents racing on one SpiderIPPool through the Kubernetes API (the test emulator), with latency.

Each agent is what a node runs: an ``IpamService`` on its own ``KubeStore`` (own connections, informer
caches for pods, namespaces, pools and reserved IPs).  Both allocate for their own pods at the same
time from the same pool, as two nodes of a cluster do; every request to the API server is delayed by
``--latency-ms`` (5 ms by default: a round trip to a nearby API server with etcd behind it).

It prints allocations per second, the 409 conflicts per allocation (the pool's resourceVersion moved
under a claim: the service re-reads and retries) and the retries per allocation, the API requests per
allocation, and the same figures for one agent alone as the reference.  The run checks what it
measures: no IP twice, and the pool's allocatedIPCount equal to the allocations.

Ratios to the reference, with their targets (``bench.verdict``): the racing agents' allocations/s
together at least 1.0x one agent's (the race costs less than a second node brings: 1.14-1.67
measured on the 2-core build machine), and their API requests per allocation at most 1.5x one
agent's (6.4-6.6 vs 5.0 measured, 1.3: the conflicts' re-reads and retries).

Run: ``.venv/bin/python -m bench.bench_kube [--pods N] [--latency-ms MS] [--agents K]``
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass

from bench.verdict import Comparison, at_least, at_most, report
from ipam.errors import AllocationError
from ipam.records import Obj
from ipam.service import AllocateRequest, IpamService, IpamSettings
from ipam.store.kube import KubeStore
from tests.kube_emulator import KubeEmulator

SPIDER = "spiderpool.spidernet.io/v2beta1"
CACHED = ("Pod", "Namespace", "SpiderIPPool", "SpiderReservedIP")


@dataclass(frozen=True)
class Result:
    agents: int
    allocations: int
    seconds: float
    conflicts: int  # Conflicts the services saw (each one a re-read and retry of the whole attempt)
    store_retries: int  # 409s retried inside the stores (endpoint writes)
    failed_adds: int  # ADDs that gave up (retryable AllocationError) and were repeated, as the kubelet does
    requests: int

    @property
    def rate(self) -> float:
        return self.allocations / self.seconds

    def line(self) -> str:
        n = self.allocations
        return (
            f"{self.agents} agent(s)  {n:5d} allocations  {self.seconds:6.2f} s  {n / self.seconds:7.1f} alloc/s  "
            f"conflicts/alloc {self.conflicts / n:5.3f}  retries/alloc {(self.conflicts + self.store_retries) / n:5.3f}  "
            f"repeated ADDs {self.failed_adds}  API requests/alloc {self.requests / n:4.1f}"
        )


def pod(name: str, node: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": ["bench"]})},
        },
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
    }


def run(agents: int, pods_per_agent: int, latency: float) -> Result:
    emulator = KubeEmulator(history=100_000).start()
    stores: list[KubeStore] = []
    try:
        admin = KubeStore.connect(emulator.configuration(emulator.admin_token))
        stores.append(admin)
        admin.create(
            {
                "apiVersion": SPIDER,
                "kind": "SpiderIPPool",
                "metadata": {"name": "bench"},
                "spec": {"ipVersion": 4, "subnet": "10.244.0.0/16", "ips": ["10.244.0.1-10.244.254.254"]},
            }
        )
        nodes = [f"node{i}" for i in range(agents)]
        uids = {}
        for node in nodes:
            for i in range(pods_per_agent):
                created = admin.create(pod(f"{node}-{i}", node))
                uids[created["metadata"]["name"]] = created["metadata"]["uid"]
        conflicts = [0]
        lock = threading.Lock()

        def seen() -> None:
            with lock:
                conflicts[0] += 1

        services = {}
        for node in nodes:
            # each agent as the DaemonSet's ServiceAccount, authorized by configs/kubernetes/rbac.yaml
            store = KubeStore.connect(emulator.configuration(emulator.agent_token), cached_kinds=CACHED)
            stores.append(store)
            services[node] = IpamService(
                store, node_name=node, settings=IpamSettings(enable_ipv6=False), on_conflict=seen
            )
        emulator.faults.latency = latency
        failed = [0]
        ips: list[str] = []
        start = threading.Barrier(agents + 1)

        def agent(node: str) -> None:
            start.wait()
            for i in range(pods_per_agent):
                name = f"{node}-{i}"
                while True:
                    try:
                        a = services[node].allocate(
                            AllocateRequest(f"c-{name}", "eth0", "default", name, uids[name])
                        )
                        break
                    except AllocationError as err:
                        if not err.retryable:
                            raise
                        with lock:
                            failed[0] += 1
                with lock:
                    ips.append(a.ips[0].ip)

        threads = [threading.Thread(target=agent, args=(node,)) for node in nodes]
        for t in threads:
            t.start()
        requests_before = emulator.requests
        start.wait()
        began = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - began
        requests = emulator.requests - requests_before
        emulator.faults.latency = 0.0
        if len(set(ips)) != len(ips):
            raise SystemExit("FAILED: an IP was handed out twice")
        stored = emulator.stored("SpiderIPPool", "bench")
        assert stored is not None
        if stored["status"]["allocatedIPCount"] != len(ips):
            raise SystemExit("FAILED: allocatedIPCount does not match the allocations")
        return Result(
            agents=agents,
            allocations=len(ips),
            seconds=seconds,
            conflicts=conflicts[0],
            store_retries=sum(s.retries for s in stores),
            failed_adds=failed[0],
            requests=requests,
        )
    finally:
        for s in stores:
            s.close()
        emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=100, help="pods per agent (default 100)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added to every API request")
    parser.add_argument("--agents", type=int, default=2, help="agents racing (default 2)")
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    print(f"KubeStore through the API emulator, {args.latency_ms:g} ms per request, one pool")
    alone = run(1, args.pods * args.agents, latency)
    print("reference: " + alone.line(), flush=True)
    racing = run(args.agents, args.pods, latency)
    print("racing:    " + racing.line())
    report(Comparison(f"{args.agents} agents racing", racing.rate, "one agent alone", alone.rate,
                      "allocations/s", at_least(1.0), digits=1))  # fmt: skip
    report(Comparison(f"{args.agents} agents racing", racing.requests / racing.allocations,
                      "one agent alone", alone.requests / alone.allocations, "API requests/allocation",
                      at_most(1.5), digits=1))  # fmt: skip


if __name__ == "__main__":
    main()
