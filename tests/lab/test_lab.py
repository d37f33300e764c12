"""End to end on the namespace lab built from lab/seed.clab.yml, driven as a user drives it: the
verbs write the store and the lab's long-running controller acts.  The demo path, agent restart,
router restart, node-router link flap and a 200-cycle pod churn, each ending with the invariants.

One lab per module (building it costs a few seconds); every test leaves it consistent, and the fixture
removes every namespace, process and file even when a test fails.  The lab is built from a caller
environment that names another store in ``SPIDERBGP_STORE``: nothing of the lab may use it."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ipam.store.sqlite import SqliteStore
from lab.build import REPO_ROOT, SEED_TOPOLOGY, Lab
from lab.demo import Demo
from lab.frr import wait_until
from lab.invariants import check_invariants, fetch_pages
from lab.netns import ProcRef, list_netns
from lab.verbs import apply_file, scale, wait_settled

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CONFIGS = REPO_ROOT / "configs"


@dataclass
class Running:
    lab: Lab
    store: SqliteStore
    foreign_store: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    base = tmp_path_factory.mktemp("lab")
    foreign = base / "callers-own.db"
    env = {**os.environ, "SPIDERBGP_STORE": str(foreign)}
    lab = Lab.create(run_dir=base / "run", env=env, topology_file=SEED_TOPOLOGY)
    store: SqliteStore | None = None
    prefix = lab.sandbox.prefix
    try:
        lab.up(timeout=60)
        store = SqliteStore(lab.store_path)
        yield Running(lab, store, foreign)
    finally:
        if store is not None:
            store.close()
        lab.down()
    assert not list_netns(prefix), "the lab left namespaces behind"


def apply(r: Running, name: str) -> None:
    apply_file(r.store, CONFIGS / name)


def settle(r: Running) -> None:
    assert wait_settled(r.store, timeout=120) == []


def scaled(r: Running, name: str, replicas: int) -> None:
    scale(r.store, name, replicas)
    settle(r)


def running_pods(r: Running, prefix: str = "") -> dict[str, Any]:
    return {
        p["metadata"]["name"]: p
        for p in r.store.list("Pod")
        if p["metadata"]["name"].startswith(prefix) and (p.get("status") or {}).get("phase") == "Running"
    }


def _diagnostics(r: Running) -> str:
    """What a failed invariant needs to be understood: the controller's log, each host's routes."""
    lines = [(r.lab.controller_dir / "controller.log").read_text()[-3000:]]
    for host in ("router", *r.lab.k8s_nodes):
        ns = r.lab.sandbox.name(host)
        for what in (["neigh"], ["route"], ["-br", "addr"]):
            res = subprocess.run(["ip", "-n", ns, *what], capture_output=True, text=True, check=False)
            lines.append(f"--- {host}: ip {' '.join(what)}\n{res.stdout.strip()}")
    return "\n".join(lines)


def assert_invariants(r: Running) -> None:
    settle(r)
    problems = check_invariants(r.lab, r.store, timeout=30)
    assert problems == [], "\n".join(problems) + "\n" + _diagnostics(r)


def test_demo_path(running: Running) -> None:
    out = io.StringIO()
    demo = Demo(running.lab, running.store, out)
    demo.run()
    assert demo.failures == [], out.getvalue()
    assert not running.foreign_store.exists(), "the caller's SPIDERBGP_STORE leaked into the lab"


def test_pod_churn_200_cycles(running: Running) -> None:
    r = running
    apply(r, "nginx-ippool-v4.yaml")
    apply(r, "nginx-deployment.yaml")
    scaled(r, "nginx", 0)  # start from none, so the loop below creates exactly 200 pods
    log = r.lab.controller_dir / "controller.log"
    created_before = log.read_text().count(" created")
    # no speed asserted here: each step has settle()'s liveness bound; bench/bench_churn.py times it
    for _ in range(20):  # 20 x (10 up, 10 down) = 200 create/delete cycles
        scaled(r, "nginx", 10)
        scaled(r, "nginx", 0)
    scaled(r, "nginx", 4)
    created = log.read_text().count(" created") - created_before
    assert created >= 204
    nodes = {p["spec"]["nodeName"] for p in running_pods(r, "nginx-").values()}
    assert nodes == set(r.lab.k8s_nodes), "pods ran on both nodes"
    assert_invariants(r)


def test_agent_restart_keeps_routes_and_serves_new_pods(running: Running) -> None:
    r = running
    apply(r, "nginx-ippool-v4.yaml")
    apply(r, "nginx-deployment.yaml")
    scaled(r, "nginx", 4)
    assert_invariants(r)
    before = r.lab.router.bgp_routes()
    r.lab.stop_cmd("node1", sig=signal.SIGKILL)
    wait_until(
        lambda: r.lab.router.bgp_peers().get("172.16.13.11", {}).get("state") != "Established",
        timeout=30,
        what="the router to see node1's session go down",
    )
    # graceful restart: the router keeps node1's routes while its agent is gone
    assert set(r.lab.router.bgp_routes()) == set(before)
    r.lab.start_cmd("node1")
    r.lab.router.wait_established({"172.16.13.11"}, timeout=60)
    scaled(r, "nginx", 6)
    assert_invariants(r)


def test_router_restart(running: Running) -> None:
    r = running
    apply(r, "nginx-ippool-v4.yaml")
    apply(r, "nginx-deployment.yaml")
    scaled(r, "nginx", 3)
    r.lab.router.restart(sig=signal.SIGKILL)
    r.lab.router.wait_established({"172.16.13.11", "172.16.13.21"}, timeout=90)
    assert_invariants(r)


def test_node_router_link_flap(running: Running) -> None:
    r = running
    apply(r, "nginx-ippool-v4.yaml")
    apply(r, "nginx-deployment.yaml")
    scaled(r, "nginx", 4)
    on_node2 = [
        str(p["status"]["podIP"])
        for p in running_pods(r, "nginx-").values()
        if p["spec"]["nodeName"] == "node2"
    ]
    assert on_node2, "no nginx pod runs on node2: the link flap would cut off nothing"
    r.lab.set_link("router", "eth2", up=False)
    try:
        answers = fetch_pages(r.lab, on_node2, timeout=1.0)
        assert all(v is None for v in answers.values()), "node2's pods cannot answer while its link is down"
        # a pod created while node2 is cut off is still allocated and announced once the link is back
        scaled(r, "nginx", 6)
    finally:
        r.lab.set_link("router", "eth2", up=True)
    r.lab.router.wait_established({"172.16.13.11", "172.16.13.21"}, timeout=90)
    assert_invariants(r)


def test_down_after_a_crash_removes_everything(tmp_path: Path) -> None:
    """`python -m lab up` killed half-way: `down` still removes every namespace, process and file."""
    run_dir = tmp_path / "crashed"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    up = subprocess.Popen(
        [sys.executable, "-m", "lab", "--run-dir", str(run_dir), "up"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state_file = run_dir / "state.json"
    state: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and up.poll() is None:
            if state_file.exists():
                state = json.loads(state_file.read_text())
                if state.get("agents"):
                    break
            time.sleep(0.05)
    finally:
        up.kill()
        up.wait()
    assert state.get("agents"), "the builder got as far as starting an agent"
    prefix = f"sbgp-{state['sandbox']['token']}-"
    pids = [ProcRef(pid, start) for pid, start in state["sandbox"]["procs"]]
    assert list_netns(prefix)
    down = subprocess.run(
        [sys.executable, "-m", "lab", "--run-dir", str(run_dir), "down"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert not list_netns(prefix)
    assert not any(p.alive() for p in pids)
    assert not run_dir.exists()
    assert not list(Path("/var/run/frr").glob(f"{prefix}*"))
