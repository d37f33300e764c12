"""Two agent processes (node1, node2) sharing one SQLite file: concurrent ADDs through the plugin, one
leader under the Lease and its hand-over, and the leader's IP GC end to end."""

from __future__ import annotations

import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ipam.records import Obj
from ipam.store.sqlite import SqliteStore
from tests.agent.conftest import (
    POOL,
    AgentFactory,
    AgentProcess,
    Plugin,
    add_pods,
    added_ip,
    cli,
    eventually,
    read_store,
    seed,
)

LEASE_SECONDS = 3.0
RETRY_SECONDS = 0.5


def lease(db: Path) -> Obj:
    store = SqliteStore(db)
    try:
        return store.get("Lease", "spiderbgp-controller", "kube-system")
    finally:
        store.close()


def the_leader(a: AgentProcess, b: AgentProcess, timeout: float = 5.0) -> tuple[AgentProcess, AgentProcess]:
    """(leader, follower) once exactly one of them says spiderbgp_leader 1."""
    eventually(lambda: a.leader_metric() + b.leader_metric() == 1, timeout, "exactly one leader")
    return (a, b) if a.leader_metric() == 1 else (b, a)


def pool_row(db: Path) -> list[str]:
    lines = cli(db, "get", "sp").stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "VERSION", "SUBNET", "ALLOCATED-IP-COUNT"], lines
    return lines[1].split()


@pytest.mark.slow
def test_two_agents_share_one_database(db: Path, agents: AgentFactory, plugin: Plugin) -> None:
    pods = [(f"n1-{i:02d}", "node1") for i in range(32)] + [(f"n2-{i:02d}", "node2") for i in range(32)]
    uids = seed(db, pods)
    node = {"node1": agents("node1"), "node2": agents("node2")}

    with ThreadPoolExecutor(16) as pool:
        futures = {
            name: pool.submit(plugin.add, node[host].socket_path, name, uids[name]) for name, host in pods
        }
        ips = {name: added_ip(f.result()) for name, f in futures.items()}

    assert len(set(ips.values())) == 64, Counter(ips.values()).most_common(3)
    records, pool_obj = read_store(db)
    assert {r.pod.partition("/")[2]: r.ip for r in records} == ips
    assert {r.pod_uid for r in records} == set(uids.values())
    assert pool_obj["status"]["allocatedIPCount"] == 64
    assert pool_row(db)[3] == "64"
    endpoints = cli(db, "get", "se").stdout.splitlines()[1:]
    assert {line.split()[0]: line.split()[-1] for line in endpoints} == dict(pods)
    assert cli(db, "ipam", "check").rc == 0
    metrics = {n: a.metrics() for n, a in node.items()}
    assert all(m["spiderbgp_ipam_allocations_total"] == 32 for m in metrics.values()), metrics

    # one leader, and the Lease names it
    leader, follower = the_leader(node["node1"], node["node2"])
    spec = lease(db)["spec"]
    assert spec["holderIdentity"] == leader.node and spec["leaseDurationSeconds"] == 3
    transitions = int(spec.get("leaseTransitions") or 0)

    # SIGTERM to the leader: it gives the Lease up, the other takes it well within the lease duration
    assert leader.stop() == 0, leader.log()
    eventually(lambda: follower.leader_metric() == 1, LEASE_SECONDS, "take-over after SIGTERM")
    assert lease(db)["spec"]["holderIdentity"] == follower.node
    assert int(lease(db)["spec"]["leaseTransitions"]) == transitions + 1

    # the stopped agent comes back as a follower; SIGKILL the new leader: no Lease given up, so the
    # other waits for it to expire (never before: that would be two leaders), then takes over
    leader.start()
    leader.wait_ready()
    # the holder renews twice while the returned agent runs (so it has campaigned meanwhile): the
    # Lease stays with the holder
    renewed = [lease(db)["spec"]["renewTime"]]
    for _ in range(2):
        eventually(
            lambda: lease(db)["spec"]["renewTime"] != renewed[-1],
            LEASE_SECONDS * 5,
            "the holder renewing the Lease",
        )
        renewed.append(lease(db)["spec"]["renewTime"])
    assert lease(db)["spec"]["holderIdentity"] == follower.node
    assert leader.leader_metric() == 0 and follower.leader_metric() == 1
    follower.signal(signal.SIGKILL)
    follower.wait(10)
    killed_at = time.monotonic()
    # a generous liveness bound (the take-over time is bench_kube's figure, not asserted here)
    eventually(lambda: leader.leader_metric() == 1, LEASE_SECONDS * 5, "take-over after SIGKILL")
    waited = time.monotonic() - killed_at
    assert waited >= LEASE_SECONDS - 2 * RETRY_SECONDS, (
        f"took the Lease after {waited:.2f}s, before it expired"
    )
    assert lease(db)["spec"]["holderIdentity"] == leader.node

    # the survivor still serves its node's pods: repeated ADD gives the same IP
    name = next(n for n, h in pods if h == leader.node)
    assert added_ip(plugin.add(leader.socket_path, name, uids[name])) == ips[name]


@pytest.mark.slow
def test_leader_gc_releases_ip_of_deleted_pod(db: Path, agents: AgentFactory, plugin: Plugin) -> None:
    """A pod deleted from the store without CNI DEL: the leader's GC releases its IP within seconds,
    whichever node it was on, and leaves the other pods alone."""
    pods = [("gc-a", "node1"), ("gc-b", "node2"), ("keep-a", "node1"), ("keep-b", "node2")]
    uids = seed(db, pods)
    node = {
        "node1": agents("node1", gc_trace=0.2),
        "node2": agents("node2", gc_trace=0.2),
    }
    ips = {name: added_ip(plugin.add(node[host].socket_path, name, uids[name])) for name, host in pods}
    assert pool_row(db)[3] == "4"
    leader, follower = the_leader(node["node1"], node["node2"])
    before = leader.metrics()

    # delete the follower's pod first (the leader releases an IP of another node), then the leader's
    gc_pod = {"node1": "gc-a", "node2": "gc-b"}
    for name in (gc_pod[follower.node], gc_pod[leader.node]):
        deleted = cli(db, "delete", "pod", name)
        assert deleted.rc == 0, deleted.stderr
        gone = ips[name]
        eventually(
            lambda: all(r.ip != gone for r in read_store(db)[0]),  # noqa: B023 (called in this iteration)
            5.0,
            f"GC releases {name}'s {gone}",
        )
    records, pool_obj = read_store(db)
    assert {r.pod.partition("/")[2]: r.ip for r in records} == {n: ips[n] for n in ("keep-a", "keep-b")}
    assert pool_obj["status"]["allocatedIPCount"] == 2
    assert pool_row(db)[3] == "2"
    eventually(lambda: "gc-" not in cli(db, "get", "se").stdout, 5.0, "GC removes the SpiderEndpoints")
    assert cli(db, "ipam", "check").rc == 0

    after = leader.metrics()
    gc_before = sum(v for k, v in before.items() if k.startswith("spiderbgp_ipam_gc_released_total"))
    gc_after = sum(v for k, v in after.items() if k.startswith("spiderbgp_ipam_gc_released_total"))
    assert gc_after - gc_before == 2, {k: v for k, v in after.items() if "gc_released" in k}
    assert after[f'spiderbgp_ipam_pool_allocated_ips{{pool="{POOL}"}}'] == 2
    assert not any(
        k.startswith("spiderbgp_ipam_gc_released_total") and v for k, v in follower.metrics().items()
    ), "only the leader collects"
    # the released IPs are free again: a new pod gets the lowest of them
    new_uid = add_pods(db, [("fresh", follower.node)])["fresh"]
    assert added_ip(plugin.add(follower.socket_path, "fresh", new_uid)) == min(
        (ips["gc-a"], ips["gc-b"]), key=lambda ip: tuple(int(p) for p in ip.split("."))
    )
