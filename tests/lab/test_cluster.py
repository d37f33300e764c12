"""The lab as a small cluster: every namespace and workload kind, a namespace deleted with its IPs
reclaimed, a failing pod that blocks nobody, scheduling constraints and node labels, and the
kubectl-like verbs of ``python -m lab`` as a user types them.

One lab per module, built by ``python -m lab up`` itself (so its long-running controller is the one
a user gets); the fixture takes it down even when a test fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipam.store.sqlite import SqliteStore
from lab.build import REPO_ROOT, Lab
from lab.frr import wait_until
from lab.invariants import check_invariants, fetch_pages
from lab.netns import list_netns
from lab.podserver import NodePodServer
from lab.verbs import apply_file, delete_file, delete_named, delete_pod, label_node, scale, wait_settled

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

MANIFESTS = Path(__file__).parent / "manifests"


@dataclass
class Cluster:
    run_dir: Path
    lab: Lab
    store: SqliteStore

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "lab", "--run-dir", str(self.run_dir), *args],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check:
            assert res.returncode == 0, f"lab {' '.join(args)}: {res.stderr}{res.stdout}"
        return res


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    run_dir = tmp_path_factory.mktemp("cluster") / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    up = subprocess.run(
        [sys.executable, "-m", "lab", "--run-dir", str(run_dir), "up"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lab: Lab | None = None
    store: SqliteStore | None = None
    try:
        assert up.returncode == 0, up.stderr
        lab = Lab.load(run_dir, env)
        store = SqliteStore(lab.store_path)
        yield Cluster(run_dir, lab, store)
    finally:
        if store is not None:
            store.close()
        log = run_dir / "controller" / "controller.log"
        if log.exists():  # shown by pytest when a test failed
            print(log.read_text()[-6000:])
        subprocess.run(
            [sys.executable, "-m", "lab", "--run-dir", str(run_dir), "down"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if lab is not None:
            assert not list_netns(lab.sandbox.prefix), "the lab left namespaces behind"


def pods(c: Cluster, namespace: str | None = None) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in c.store.list("Pod", namespace=namespace)}


def ip_of(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("podIP") or "")


def records(c: Cluster, pool: str) -> dict[str, str]:
    """ip -> namespace/pod of the pool's allocations."""
    return {r.ip: r.pod for r in c.store.records(pool)}


def assert_invariants(c: Cluster) -> None:
    problems = check_invariants(c.lab, c.store, timeout=30)
    assert problems == [], "\n".join(problems)


def test_every_kind_in_a_namespace_then_the_namespace_goes_with_its_ips(cluster: Cluster) -> None:
    c = cluster
    apply_file(c.store, MANIFESTS / "every-kind.yaml")
    assert wait_settled(c.store, namespace="shop", timeout=120) == []
    shop = pods(c, "shop")
    front = [n for n in shop if n.startswith("front-")]
    db = sorted(n for n in shop if n.startswith("db-"))
    logger = [shop[n] for n in shop if n.startswith("logger-")]
    migrate = [shop[n] for n in shop if n.startswith("migrate-")]
    assert len(front) == 2
    assert db == ["db-0", "db-1"]
    assert sorted(p["spec"]["nodeName"] for p in logger) == sorted(c.lab.k8s_nodes), "one per node"
    assert len(migrate) == 1 and migrate[0]["status"]["phase"] == "Succeeded"
    # the namespace's default pool serves the workloads, the bare pod's annotation its own pool
    in_default = records(c, "shop-v4")
    for name in front + db + [p["metadata"]["name"] for p in logger]:
        assert in_default.get(ip_of(shop[name])) == f"shop/{name}"
    assert records(c, "shop-static") == {ip_of(shop["toolbox"]): "shop/toolbox"}
    # the Job's pod ran to completion: its IP goes back to the pool (at its CNI DEL, or by the IP GC)
    done = f"shop/{migrate[0]['metadata']['name']}"
    wait_until(lambda: done not in records(c, "shop-v4").values(), timeout=60, what=f"{done}'s IP released")
    # kinds the lab does not act on are stored as the API server would
    assert c.store.get("ConfigMap", "shop-settings", "shop")["data"] == {"greeting": "hello"}
    assert c.store.get("Service", "front", "shop")["spec"]["ports"] == [{"port": 80}]
    assert_invariants(c)
    answers = fetch_pages(c.lab, [ip_of(shop["db-1"])])
    assert answers == {ip_of(shop["db-1"]): "shop/db-1"}

    print(delete_named(c.store, "ns", "shop"))
    assert wait_settled(c.store, timeout=120) == []
    assert pods(c, "shop") == {}
    # CNI DEL releases what it can; the IP GC (traceIntervalSeconds) reclaims any IP it kept
    wait_until(
        lambda: records(c, "shop-v4") == {} and records(c, "shop-static") == {},
        timeout=60,
        what="the namespace's IPs to be reclaimed",
    )
    assert c.store.list("Service", namespace="shop") == []
    assert_invariants(c)


def test_a_failing_pod_stays_pending_and_blocks_nobody(cluster: Cluster) -> None:
    c = cluster
    apply_file(c.store, MANIFESTS / "tiny-pool.yaml")
    failing = wait_settled(c.store, namespace="default", timeout=120)
    assert len(failing) == 1, failing
    stuck = [p for p in pods(c, "default").values() if (p.get("status") or {}).get("phase") == "Pending"]
    assert len(stuck) == 1
    waiting = stuck[0]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ContainerCreating"
    assert "tiny" in waiting["message"] and "CNI ADD" in waiting["message"]
    assert stuck[0]["status"]["message"] == waiting["message"]
    # a StatefulSet pod beside it is deleted and comes back with its identity and IP
    before = ip_of(pods(c, "default")["keeper-1"])
    delete_pod(c.store, "keeper-1")
    wait_settled(c.store, namespace="default", timeout=120)
    again = pods(c, "default")["keeper-1"]
    assert again["status"]["phase"] == "Running" and ip_of(again) == before
    # the failing pod is retried: once the pool has room, it runs
    apply_file(c.store, MANIFESTS / "tiny-pool-grown.yaml")
    name = stuck[0]["metadata"]["name"]
    wait_until(
        lambda: (pods(c, "default")[name].get("status") or {}).get("phase") == "Running",
        timeout=60,
        what=f"{name} to run once its pool has room",
    )
    assert ip_of(pods(c, "default")[name]) == "10.246.0.12"
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    assert_invariants(c)
    scale(c.store, "crowded", 0)
    scale(c.store, "keeper", 0)
    assert wait_settled(c.store, timeout=120) == []


def test_scheduling_constraints_and_node_labels(cluster: Cluster) -> None:
    c = cluster
    apply_file(c.store, MANIFESTS / "placement.yaml")
    failing = wait_settled(c.store, namespace="default", timeout=120)
    mine = pods(c, "default")
    assert mine["pinned"]["spec"]["nodeName"] == "node2"
    assert mine["chosen"]["spec"]["nodeName"] == "node1"
    master = mine["on-master"]
    assert "nodeName" not in master["spec"]
    assert master["status"]["conditions"][0]["message"] == (
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    )
    loners = [p for n, p in mine.items() if n.startswith("loner-")]
    placed = sorted(p["spec"].get("nodeName", "") for p in loners)
    assert placed == ["", "node1", "node2"], "two replicas on different nodes, the third nowhere"
    assert any("didn't match pod anti-affinity rules" in line for line in failing)
    # labelling a node lets the node-affinity pod run there
    print(label_node(c.store, "node1", ["node-role.kubernetes.io/master="]))
    wait_until(
        lambda: pods(c, "default")["on-master"]["spec"].get("nodeName") == "node1",
        timeout=60,
        what="on-master to be scheduled on the labelled node",
    )
    assert wait_settled(c.store, namespace="default", timeout=120) == [f for f in failing if "loner-" in f]
    assert_invariants(c)
    for name in ("pinned", "chosen", "on-master"):
        delete_pod(c.store, name)
    scale(c.store, "loner", 0)
    label_node(c.store, "node1", ["node-role.kubernetes.io/master-"])
    assert wait_settled(c.store, timeout=120) == []


def test_the_verbs_as_a_user_types_them(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    manifest = tmp_path / "app.yaml"
    manifest.write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "spiderpool.spidernet.io/v2beta1",
                    "kind": "SpiderIPPool",
                    "metadata": {"name": "verbs-v4"},
                    "spec": {"subnet": "10.248.0.0/16", "ips": ["10.248.0.10-10.248.0.20"]},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": "verbs",
                        "annotations": {"ipam.spidernet.io/default-ipv4-ippool": '["verbs-v4"]'},
                    },
                },
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "echo", "namespace": "verbs"},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": {"app": "echo"}},
                        "template": {
                            "metadata": {"labels": {"app": "echo"}},
                            "spec": {"containers": [{"name": "echo", "image": "nginx"}]},
                        },
                    },
                },
            ]
        )
    )
    assert "deployment.apps/echo created" in c.cli("apply", "-f", str(manifest)).stdout
    assert "deployment.apps/echo scaled" in c.cli("scale", "deploy/echo", "3", "-n", "verbs").stdout
    assert c.cli("wait", "-n", "verbs").stdout.strip().endswith("every pod is running")
    listed = json.loads(c.cli("get", "pods", "-A", "-o", "json").stdout)
    echo = [p for p in listed["items"] if p["metadata"]["namespace"] == "verbs"]
    assert len(echo) == 3 and all(p["status"]["phase"] == "Running" for p in echo)
    wide = c.cli("get", "pods", "-n", "verbs", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert {line.split()[5] for line in wide[1:]} == {ip_of(p) for p in echo}
    one = echo[0]["metadata"]["name"]
    shown = yaml.safe_load(c.cli("get", "pod", one, "-n", "verbs", "-o", "yaml").stdout)
    assert shown["metadata"]["name"] == one and shown["status"]["podIP"] == ip_of(echo[0])
    # user errors: one line, exit 1, nothing changed
    for args, needle in (
        (("scale", "deploy/nope", "2", "-n", "verbs"), 'no Deployment "nope"'),
        (("delete", "pod", "nope"), "nope"),
        (("get", "widgets"), 'unknown resource type "widgets"'),
        (("label", "node", "node9", "a=b"), "node9"),
        (("scale", "svc/front", "2"), "no spec.replicas"),
    ):
        res = c.cli(*args, check=False)
        assert res.returncode == 1, args
        assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr
    assert len(pods(c, "verbs")) == 3
    assert "deleted" in c.cli("delete", "-f", str(manifest)).stdout
    c.cli("wait")
    assert pods(c, "verbs") == {}
    wait_until(lambda: records(c, "verbs-v4") == {}, timeout=60, what="verbs-v4's IPs to be reclaimed")


def test_node_tools_see_the_node_and_an_agent_restarts(cluster: Cluster) -> None:
    c = cluster
    apply_file(c.store, MANIFESTS / "tiny-pool.yaml")
    sp = c.cli("exec", "node1", "--", "spiderbgp", "get", "sp").stdout.splitlines()
    assert sp[0].split()[:3] == ["NAME", "VERSION", "SUBNET"] and any(line.startswith("tiny ") for line in sp)
    status = c.cli("exec", "node2", "--", "spiderbgp", "bgp", "status").stdout
    assert "172.16.13.1" in status and "Established" in status
    pipename = next(w for w in status.split() if w.startswith("spiderbgp-"))
    summary = c.cli(
        "exec", "node2", "--", "exabgp", "cli", "--pipename", pipename, "show", "neighbor", "summary"
    )
    assert "established" in summary.stdout
    # the node's files are the node's: nothing appeared at the container paths of the host
    for path in (
        "/etc/spiderbgp",
        "/var/lib/spiderbgp",
        "/opt/cni/bin",
        "/etc/cni/net.d/10-spiderbgp.conflist",
    ):
        assert not Path(path).exists(), path
    # a DaemonSet-style restart of one agent: its session comes back and its pods keep being served
    scale(c.store, "keeper", 2)
    wait_settled(c.store, namespace="default", timeout=120)
    assert "agent on node1 restarted" in c.cli("restart", "agent", "node1").stdout
    assert_invariants(c)
    scale(c.store, "keeper", 0)
    scale(c.store, "crowded", 0)
    assert wait_settled(c.store, timeout=120) == []


def _remove(c: Cluster, *files: str) -> None:
    """``delete -f`` the example's files (last first), then wait until its pools and subnets are gone."""
    pools = [
        (d["kind"], d["metadata"]["name"])
        for f in files
        for d in yaml.safe_load_all((MANIFESTS / f).read_text())
        if d and d["kind"] in ("SpiderIPPool", "SpiderSubnet")
    ]
    kinds = ("SpiderIPPool", "SpiderSubnet")
    for f in reversed(files):
        delete_file(c.store, MANIFESTS / f)
    assert wait_settled(c.store, timeout=120) == []
    wait_until(
        lambda: not any((kind, p["metadata"]["name"]) in pools for kind in kinds for p in c.store.list(kind)),
        timeout=60,
        what=f"the pools {pools} to be released and removed",
    )


def test_spiderpool_examples_in_our_words(cluster: Cluster) -> None:
    """Spiderpool's docs/example, one directory at a time: every pod gets the IP its example intends."""
    c = cluster
    # statefulset: a Service beside it, the cluster default pool, the IP kept across a re-creation
    apply_file(c.store, MANIFESTS / "example-statefulset.yaml")
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    first = ip_of(pods(c, "default")["ledger-0"])
    assert first == "172.18.40.40"
    delete_pod(c.store, "ledger-0")
    wait_until(
        lambda: (
            ip_of(pods(c, "default").get("ledger-0") or {}) == first
            and pods(c, "default")["ledger-0"]["status"].get("phase") == "Running"
            and not pods(c, "default")["ledger-0"]["metadata"].get("deletionTimestamp")
        ),
        timeout=60,
        what="ledger-0 back with its IP",
    )
    assert_invariants(c)
    _remove(c, "example-statefulset.yaml")

    # ippool-multi: the bare pod is scheduled and served; the Deployment spills into the backup pool
    apply_file(c.store, MANIFESTS / "example-multi-pools.yaml")
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    assert ip_of(pods(c, "default")["placeholder"]) == "172.18.41.40"
    apply_file(c.store, MANIFESTS / "example-multi-pools-deploy.yaml")
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    got = sorted(ip_of(p) for n, p in pods(c, "default").items() if n.startswith("two-pools-"))
    assert got == ["172.18.41.41", "172.18.42.40"]
    assert_invariants(c)
    _remove(c, "example-multi-pools.yaml", "example-multi-pools-deploy.yaml")

    # ippool-affinity-node: label a node as master; each replica takes the pool of its node
    label_node(c.store, "node1", ["node-role.kubernetes.io/master="])
    try:
        apply_file(c.store, MANIFESTS / "example-node-affinity.yaml")
        assert wait_settled(c.store, namespace="default", timeout=120) == []
        by_node = {
            p["spec"]["nodeName"]: ip_of(p) for n, p in pods(c, "default").items() if n.startswith("by-role-")
        }
        assert by_node == {"node1": "172.18.43.40", "node2": "172.18.44.40"}
        assert_invariants(c)
        _remove(c, "example-node-affinity.yaml")
    finally:
        label_node(c.store, "node1", ["node-role.kubernetes.io/master-"])

    # reserved-ip: nine of ten addresses are reserved; one replica runs on the tenth, two wait
    apply_file(c.store, MANIFESTS / "example-reserved-ip.yaml")
    failing = wait_settled(c.store, namespace="default", timeout=120)
    assert len(failing) == 2 and all("example-reserving-v4" in line for line in failing), failing
    running = [
        ip_of(p) for n, p in pods(c, "default").items() if n.startswith("mostly-reserved-") and ip_of(p)
    ]
    assert running == ["172.18.45.50"]
    _remove(c, "example-reserved-ip.yaml")

    # spider-subnet: auto pools from a SpiderSubnet per family; the pod gets the lowest of both
    apply_file(c.store, MANIFESTS / "example-subnet-dual.yaml")
    wait_until(
        lambda: (
            [
                [ip["ip"] for ip in (p.get("status") or {}).get("podIPs") or []]
                for n, p in pods(c, "default").items()
                if n.startswith("from-subnets-")
            ]
            == [["172.19.41.1", "fc00:f853:ccd:e790:d::1"]]
        ),
        timeout=90,
        what="from-subnets to run with an address of each subnet",
    )
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    auto = [p for p in c.store.list("SpiderIPPool") if p["metadata"]["name"].startswith("auto")]
    assert sorted(int(p["status"]["totalIPCount"]) for p in auto) == [3, 3]  # 1 replica + 2 each
    assert_invariants(c)
    _remove(c, "example-subnet-dual.yaml")


def test_readiness_follows_the_probe(cluster: Cluster) -> None:
    c = cluster
    apply_file(c.store, MANIFESTS / "probed.yaml")

    def ready() -> bool:
        pod = pods(c, "default").get("probed") or {}
        return any(
            cond.get("type") == "Ready" and cond.get("status") == "True"
            for cond in (pod.get("status") or {}).get("conditions") or []
        )

    wait_until(ready, timeout=60, what="probed to pass its readiness probe")
    node = pods(c, "default")["probed"]["spec"]["nodeName"]
    with NodePodServer.connect(c.lab.node_dir(node) / "pods.sock") as server:
        server.set_ready("probed", False)
        wait_until(lambda: not ready(), timeout=30, what="Ready cleared once /healthz answers 503")
        assert pods(c, "default")["probed"]["status"]["phase"] == "Running"
        server.set_ready("probed", True)
        wait_until(ready, timeout=30, what="Ready again once /healthz answers 200")
    delete_pod(c.store, "probed")
    assert wait_settled(c.store, timeout=120) == []


def test_a_pending_pod_states_the_real_cause(cluster: Cluster) -> None:
    """An auto pool that the SpiderSubnet cannot hold: the pods say so, not "does not exist yet"."""
    c = cluster
    apply_file(c.store, MANIFESTS / "small-subnet.yaml")
    failing = wait_settled(c.store, namespace="default", timeout=120)
    greedy = [line for line in failing if "/greedy-" in line]
    assert len(greedy) == 3, failing
    assert all("insufficient free IPs in the subnet: 4 needed, 3 free" in line for line in greedy), greedy
    assert all('SpiderSubnet "small-subnet-v4"' in line for line in greedy), greedy
    scale(c.store, "greedy", 2)  # now 3 addresses are enough: the pool is made and the pods run
    wait_until(
        lambda: (
            sorted(ip_of(p) for n, p in pods(c, "default").items() if n.startswith("greedy-"))
            and all(
                (p.get("status") or {}).get("phase") == "Running"
                for n, p in pods(c, "default").items()
                if n.startswith("greedy-") and not p["metadata"].get("deletionTimestamp")
            )
        ),
        timeout=90,
        what="greedy's pods to run from the subnet's auto pool",
    )
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    running = [p for n, p in pods(c, "default").items() if n.startswith("greedy-")]
    assert len(running) == 2 and all(ip_of(p).startswith("10.250.0.") for p in running)
    scale(c.store, "greedy", 0)
    assert wait_settled(c.store, timeout=120) == []


def test_a_restarted_controller_picks_up_where_the_last_one_stopped(cluster: Cluster) -> None:
    c = cluster
    apply_file(c.store, MANIFESTS / "tiny-pool.yaml")
    scale(c.store, "crowded", 2)
    scale(c.store, "keeper", 2)
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    before = {n: ip_of(p) for n, p in pods(c, "default").items()}
    old = c.lab.controller
    assert old is not None
    old.signal(signal.SIGKILL)
    wait_until(lambda: not old.alive(), timeout=10, what="the controller to die")
    # pods keep running and being served without a controller
    assert_invariants(c)
    delete_pod(c.store, "keeper-0")  # nobody acts on it until a controller runs again
    assert "controller restarted" in c.cli("restart", "controller").stdout
    wait_until(
        lambda: (
            not (pods(c, "default").get("keeper-0") or {"metadata": {"deletionTimestamp": "x"}})[
                "metadata"
            ].get("deletionTimestamp")
            and ip_of(pods(c, "default")["keeper-0"]) == before["keeper-0"]
        ),
        timeout=60,
        what="keeper-0 torn down and re-created by the new controller",
    )
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    assert {n: ip_of(p) for n, p in pods(c, "default").items()} == before
    assert_invariants(c)
    scale(c.store, "crowded", 0)
    scale(c.store, "keeper", 0)
    assert wait_settled(c.store, timeout=120) == []


def _roller(version: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPPool",
            "metadata": {"name": "roller-v4"},
            "spec": {"subnet": "10.251.0.0/16", "ips": ["10.251.0.10-10.251.0.40"]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "roller"},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "roller"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "roller", "version": version},
                        "annotations": {"ipam.spidernet.io/ippool": '{"ipv4": ["roller-v4"]}'},
                    },
                    "spec": {"containers": [{"name": "roller", "image": f"nginx:{version}"}]},
                },
            },
        },
    ]


def test_a_new_pod_template_rolls_out(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    for version in ("1", "2"):
        manifest = tmp_path / f"roller-{version}.yaml"
        manifest.write_text(yaml.safe_dump_all(_roller(version)))
        apply_file(c.store, manifest)
        assert wait_settled(c.store, namespace="default", timeout=120) == []
    rollers = [p for n, p in pods(c, "default").items() if n.startswith("roller-")]
    assert len(rollers) == 4 and {p["metadata"]["labels"]["version"] for p in rollers} == {"2"}
    assert (
        len(
            [
                rs
                for rs in c.store.list("ReplicaSet", namespace="default")
                if rs["metadata"]["name"].startswith("roller-")
            ]
        )
        == 1
    )
    assert_invariants(c)
    scale(c.store, "roller", 0)
    assert wait_settled(c.store, timeout=120) == []
