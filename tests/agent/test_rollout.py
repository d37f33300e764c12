"""Zero lost requests through agent restarts, readiness changes and scaling, on the seed lab with
traffic (marker ``lab``): the lab's client sends a steady stream of requests to the Ready pods
(``lab.traffic``) while agents restart, pods turn NotReady and the Deployment scales.
bench/bench_rollout.py (whose harness this uses) runs the same scenarios longer and prints the figures,
with the references (no graceful restart, announceWhen: allocated).

One lab (router, two nodes with their agents, client, the lab's controller) is shared by the module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from bench.bench_rollout import (
    Cluster,
    Traffic,
    ready_pods,
    rolling_restart,
    router_has,
    scaling,
    seed_cluster,
    targets_of,
)
from lab.frr import wait_until
from lab.podserver import NodePodServer
from lab.traffic import summarize

pytestmark = [pytest.mark.lab, pytest.mark.netns]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with seed_cluster(tmp_path_factory.mktemp("rollout"), replicas=4) as built:
        yield built


def test_agents_restarted_one_after_the_other_lose_no_request(cluster: Cluster) -> None:
    """Graceful restart: the router keeps forwarding to the pods while each agent restarts, and the
    next agent restarts only once the previous one's /readyz says 200 (the DaemonSet's rolling
    update with maxUnavailable: 1)."""
    traffic = Traffic(cluster, "restart", targets_of(ready_pods(cluster.store)))
    try:
        rolling_restart(cluster.lab)
        begun = time.time()
        wait_until(lambda: any(r.t > begun + 2 for r in traffic.records()), timeout=30, interval=0.1)
    finally:
        records = traffic.stop()
    summary = summarize(records)
    assert summary.total >= 100, summary
    assert summary.failed == 0, (summary, [r for r in records if not r.ok][:5])


def test_a_pod_whose_probe_fails_is_withdrawn_and_comes_back(cluster: Cluster) -> None:
    lab, store = cluster.lab, cluster.store
    pods = ready_pods(store)
    name, (ip, node) = sorted(pods.items())[0]
    server = NodePodServer.connect(lab.node_dir(node) / "pods.sock")
    try:
        for _ in range(3):
            server.set_ready(name, False)  # its probe fails from now on
            wait_until(lambda: not router_has(lab, ip), timeout=10, interval=0.02, what=f"{ip} withdrawn")
            assert name not in ready_pods(store)
            server.set_ready(name, True)
            wait_until(lambda: router_has(lab, ip), timeout=10, interval=0.02, what=f"{ip} back")
    finally:
        server.set_ready(name, True)
        server.close()
    assert all(router_has(lab, other_ip) for other, (other_ip, _) in pods.items() if other != name)


def test_scaling_up_and_down_fails_no_request_to_a_ready_pod(cluster: Cluster) -> None:
    result = scaling(cluster, rate=40.0, peak=8)
    assert result["to_ready_pods"] > 0
    assert result["failed_to_ready_pods"] == 0, result
