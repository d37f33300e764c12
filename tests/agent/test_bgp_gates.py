"""The real agent (``spiderbgp agent``) announcing to real FRR through real ExaBGP, in namespaces:
``bgp.announceWhen``, the BGP part of ``/readyz`` and flap damping, with Pod status written into the
SQLite store as the kubelet writes it.

One lab (router + node namespaces, FRR) is shared by the module; each test starts its own agent in
the node namespace (its health endpoint is reached with curl inside that namespace) and stops it by
PID.  The CNI plugin runs as a process against the agent's socket; the pod's host route is added in
the node namespace as the ptp plugin adds it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipam.store.sqlite import SqliteStore
from lab.frr import wait_until
from lab.netns import run
from tests.agent.conftest import SPIDERBGP, Plugin, added_ip, namespace_doc, pod_doc, pool_doc
from tests.bgp.labkit import NODE_AS, NODE_V4, ROUTER_AS, ROUTER_V4, BgpLab, bgp_lab, frr_config

pytestmark = pytest.mark.netns

SUPPRESSED = "spiderbgp_bgp_damping_suppressed_prefixes"
HEALTH = "127.0.0.1:9710"  # inside the node namespace, which is new for each lab


@dataclass
class Env:
    lab: BgpLab
    db: Path
    store: SqliteStore


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with bgp_lab() as lab:
        lab.start_frr(frr_config())
        db = lab.work / "state.db"
        store = SqliteStore(db)
        try:
            store.create(namespace_doc())
            store.create(pool_doc())
            store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}})
            yield Env(lab, db, store)
        finally:
            store.close()


@dataclass
class Agent:
    env: Env
    proc: subprocess.Popen[bytes]
    log: Path
    socket: Path

    def http(self, path: str) -> tuple[int, str]:
        res = run(
            self.env.lab.node_ns,
            ["curl", "-s", "-m", "3", "-w", "\n%{http_code}", f"http://{HEALTH}{path}"],
            check=False,
        )
        body, _, code = res.stdout.rpartition("\n")
        return int(code or 0), body

    def metric(self, name: str) -> float:
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def bgp_routes(self) -> dict[str, Any]:
        res = subprocess.run(
            [SPIDERBGP, "bgp", "routes", "-o", "json", "--socket", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        data: dict[str, Any] = json.loads(res.stdout)
        return data

    def bgp_routes_text(self, *args: str) -> str:
        res = subprocess.run(
            [SPIDERBGP, "bgp", "routes", *args, "--socket", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_agent(env: Env, name: str, **bgp: Any) -> Agent:
    work = env.lab.work / name
    work.mkdir()
    config = {
        "nodeName": "node1",
        "store": str(env.db),
        "socketPath": str(work / "agent.sock"),
        "healthAddress": HEALTH,
        "log": {"level": "info"},
        "ipam": {"leaderElection": {"enabled": False}},
        "bgp": {
            "asn": NODE_AS,
            "nextHop": NODE_V4,
            "runtimeDir": str(work / "rt"),
            "reconcileInterval": 0,
            "peers": [{"address": ROUTER_V4, "asn": ROUTER_AS, "holdTime": 9, "gracefulRestart": 30}],
            **bgp,
        },
    }
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    log = work / "agent.log"
    with log.open("wb") as out:
        proc = env.lab.sandbox.popen(env.lab.node_ns, [SPIDERBGP, "agent", "--config", str(path)], stdout=out)
    agent = Agent(env, proc, log, work / "agent.sock")
    wait_until(
        lambda: agent.socket.exists() or proc.poll() is not None,
        timeout=30,
        interval=0.05,
        what="agent socket",
    )
    assert proc.poll() is None, log.read_text()
    return agent


@pytest.fixture
def agents(env: Env) -> Iterator[list[Agent]]:
    made: list[Agent] = []
    try:
        yield made
    finally:
        for agent in made:
            agent.stop()


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    target = tmp_path / "cni-bin"
    res = subprocess.run([SPIDERBGP, "install-cni", "--dir", str(target)], capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return Plugin(target / "spiderpool")


def set_ready(store: SqliteStore, name: str, ready: bool) -> None:
    pod = store.get("Pod", name, "default")
    pod["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    store.update_status(pod)


def new_pod(env: Env, agent: Agent, plugin: Plugin, name: str) -> tuple[str, str]:
    """A pod object (Running, not Ready), its CNI ADD through the agent, its host route: (uid, ip)."""
    uid = str(env.store.create(pod_doc(name))["metadata"]["uid"])
    ip = added_ip(plugin.add(agent.socket, name, uid))
    env.lab.add_host_route(ip)
    return uid, ip


def router_has(env: Env, ip: str) -> bool:
    return f"{ip}/32" in env.lab.router_routes()


def wait_router(env: Env, ip: str, present: bool, timeout: float = 15.0) -> float:
    """Seconds until the router's FIB has (or no longer has) ``ip``/32."""
    started = time.monotonic()
    wait_until(lambda: router_has(env, ip) == present, timeout=timeout, interval=0.02, what=f"{ip} {present}")
    return time.monotonic() - started


def updates_received(env: Env) -> int:
    data = env.lab.router.vtysh_json(f"show bgp neighbors {NODE_V4} json") if env.lab.router else {}
    return int(data[NODE_V4]["messageStats"]["updatesRecv"])


def network_condition(env: Env) -> tuple[str, str, str] | None:
    """The Node's NetworkUnavailable condition: (status, reason, message)."""
    for c in env.store.get("Node", "node1").get("status", {}).get("conditions", []):
        if c["type"] == "NetworkUnavailable":
            return c["status"], c["reason"], c["message"]
    return None


def condition_is(env: Env, status: str) -> tuple[str, str, str] | None:
    found = network_condition(env)
    return found if found is not None and found[0] == status else None


def announced_or_held(env: Env, agent: Agent, ip: str) -> bool:
    return router_has(env, ip) or agent.metric(SUPPRESSED) == 1


def not_ready_reason(agent: Agent) -> str | None:
    """/readyz's body once it says 503 because of BGP."""
    code, body = agent.http("/readyz")
    return body if code == 503 and body.startswith("bgp:") else None


def test_ready_gates_the_announcement_and_readyz_waits_for_bgp(
    env: Env, agents: list[Agent], plugin: Plugin
) -> None:
    agent = start_agent(env, "ready")
    agents.append(agent)
    code, body = agent.http("/readyz")
    # 503 until the session is Established and the initial routes and End-of-RIB are out
    wait_until(lambda: agent.http("/readyz")[0] == 200, timeout=30, interval=0.05, what="/readyz 200")
    assert code == 200 or body.startswith("bgp: "), body
    # the node-level counterpart: the Node's NetworkUnavailable condition follows
    up = wait_until(partial(condition_is, env, "False"), timeout=10, interval=0.05)
    assert up[1] == "SpiderbgpIsUp"

    _, ip_a = new_pod(env, agent, plugin, "gate-a")
    _, ip_b = new_pod(env, agent, plugin, "gate-b")
    set_ready(env.store, "gate-b", True)
    wait_router(env, ip_b, True)
    # b's route was seen after a's and b is announced: a (routed, not Ready) was judged and held back
    assert not router_has(env, ip_a)
    assert agent.metric('spiderbgp_bgp_convergence_seconds_count{stage="allocated_to_route"}') >= 2

    set_ready(env.store, "gate-a", True)
    wait_router(env, ip_a, True)
    set_ready(env.store, "gate-a", False)  # the probe fails
    wait_router(env, ip_a, False)
    assert router_has(env, ip_b)
    set_ready(env.store, "gate-a", True)
    wait_router(env, ip_a, True)

    # the host route goes (requireHostRoute): withdrawn although the pod stays Ready; back with it
    env.lab.del_host_route(ip_a)
    wait_router(env, ip_a, False)
    env.lab.add_host_route(ip_a)
    wait_router(env, ip_a, True)
    assert agent.metric('spiderbgp_bgp_convergence_seconds_count{stage="route_to_withdrawn"}') == 1

    # terminating: withdrawn while the address is still allocated (before the CNI DEL releases it)
    env.store.delete("Pod", "gate-a", "default", grace_period_seconds=30)
    wait_router(env, ip_a, False)
    assert any(r.ip == ip_a for r in env.store.records("pool4"))
    assert plugin.delete(agent.socket, "gate-a").rc == 0
    env.store.delete("Pod", "gate-a", "default", grace_period_seconds=0)

    assert agent.metric('spiderbgp_bgp_convergence_seconds_count{stage="unready_to_withdrawn"}') >= 2
    assert agent.metric('spiderbgp_bgp_convergence_seconds_count{stage="ready_to_announced"}') >= 3
    wide = agent.bgp_routes()
    ages = {r["prefix"]: r["ageSeconds"] for r in wide["routes"]}
    assert ages[f"{ip_b}/32"] is not None and ages[f"{ip_b}/32"] >= 0
    assert wide["suppressed"] == []
    table = agent.bgp_routes_text("-o", "wide")
    assert "| AGE" in table and f"{ip_b}/32" in table and "Suppressed" not in table


def test_allocated_announces_without_readiness(env: Env, agents: list[Agent], plugin: Plugin) -> None:
    agent = start_agent(env, "allocated", announceWhen="allocated")
    agents.append(agent)
    _, ip = new_pod(env, agent, plugin, "alloc-a")  # never Ready
    wait_router(env, ip, True)
    set_ready(env.store, "alloc-a", False)
    wait_until(lambda: agent.http("/readyz")[0] == 200, timeout=30, interval=0.05, what="/readyz 200")
    assert router_has(env, ip)  # the reference: with allocated, a NotReady pod is never withdrawn


def test_readyz_names_the_peer_that_is_not_established(env: Env, agents: list[Agent]) -> None:
    missing = "172.16.13.99"  # nobody answers there
    agent = start_agent(
        env, "peerless", peers=[{"address": missing, "asn": ROUTER_AS, "holdTime": 9, "gracefulRestart": 0}]
    )
    agents.append(agent)
    body = wait_until(partial(not_ready_reason, agent), timeout=20, interval=0.05)
    assert f"BGP peer {missing} is not Established" in body
    down = wait_until(partial(condition_is, env, "True"), timeout=10, interval=0.05)
    assert down[1] == "SpiderbgpNotReady" and (missing in down[2] or "starting" in down[2]), down


def test_damping_suppresses_a_pod_recreated_over_and_over(
    env: Env, agents: list[Agent], plugin: Plugin
) -> None:
    # penalty 1000 a withdrawal, suppressed above 1400: a 2nd withdrawal within one half-life (6 s,
    # ample for a cycle on a loaded machine) suppresses; the ceiling 750 * 2^(12/6) = 3000 decays to
    # 750 within 12 s of the last withdrawal
    damping = {"halfLife": 6, "reuse": 750, "suppress": 1400, "maxSuppress": 12}
    agent = start_agent(env, "damping", damping=damping)
    agents.append(agent)
    wait_until(lambda: agent.http("/readyz")[0] == 200, timeout=30, interval=0.05, what="/readyz 200")
    # the router has taken in this session's replay and End-of-RIB (stale routes of earlier tests gone)
    want = {r["prefix"] for r in agent.bgp_routes()["routes"]}
    env.lab.wait_router_routes(lambda got: set(got) == want, what="the router equal to the agent")
    before = updates_received(env)
    ip = ""
    seen: set[str] = set()
    for _ in range(20):
        _, ip = new_pod(env, agent, plugin, "flappy")
        seen.add(ip)
        set_ready(env.store, "flappy", True)
        # a fresh prefix (and one not yet suppressed) goes out at once; a suppressed one is held
        wait_until(partial(announced_or_held, env, agent, ip), timeout=15, interval=0.02)
        env.store.delete("Pod", "flappy", "default", grace_period_seconds=30)  # terminating
        wait_router(env, ip, False)
        last_withdrawal = dt.datetime.now(dt.UTC)
        assert plugin.delete(agent.socket, "flappy").rc == 0
        env.store.delete("Pod", "flappy", "default", grace_period_seconds=0)
    assert len(seen) == 1, seen  # the lowest free address: the same prefix every time
    suppressed = agent.bgp_routes()["suppressed"]
    assert [s["prefix"] for s in suppressed] == [f"{ip}/32"], suppressed
    assert suppressed[0]["withdrawals"] == 20 and suppressed[0]["until"]
    assert agent.metric(SUPPRESSED) == 1
    assert agent.metric("spiderbgp_bgp_damping_suppressions_total") == 1
    text = agent.bgp_routes_text()
    assert "Suppressed by flap damping:" in text and f"| {ip}/32" in text, text
    # never longer than maxSuppress after the last withdrawal (until is printed to the second)
    until = dt.datetime.fromisoformat(suppressed[0]["until"])
    assert until - last_withdrawal <= dt.timedelta(seconds=12 + 1)
    churn_updates = updates_received(env) - before
    # the configured limit: 2 announcements and 2 withdrawals, then nothing while suppressed
    assert churn_updates <= 4, churn_updates

    # a 21st pod stays Ready: it is held back until the penalty decays, then announced
    _, ip = new_pod(env, agent, plugin, "flappy")
    set_ready(env.store, "flappy", True)
    assert not router_has(env, ip)
    wait_router(env, ip, True, timeout=30)
    assert dt.datetime.now(dt.UTC) >= until - dt.timedelta(seconds=1)
    assert agent.bgp_routes()["suppressed"] == []
    assert agent.metric(SUPPRESSED) == 0
