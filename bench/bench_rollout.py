"""Benchmark: requests lost while things change, on the seed lab with a steady client (issue 16).

    .venv/bin/python -m bench.bench_rollout [--pods 4] [--rate 40] [--trials 50] [--scale 50] [--json FILE]

The seed lab (``python -m lab up``: FRR router, node1 and node2 with their agents, the client, the lab's
controller), a Deployment ``web`` whose pods have an HTTP readinessProbe (``GET /healthz`` every 1 s,
the shortest Kubernetes allows) and ``lab.traffic`` in the client's namespace sending ``--rate``
requests a second, round robin over the Ready pods.  Scenarios:

1. restarts: both agents restarted one after the other, each waiting for the previous one's
   ``/readyz`` (a DaemonSet rolling update with maxUnavailable 1), with graceful restart; then the
   same without graceful restart (``gracefulRestart: 0``) as the reference.  Failed requests and the
   longest gap (first failure -> next success to one pod).
2. not ready: ``--trials`` times, one pod's probe made to fail (the pod server's ``/healthz`` answers
   503): time until the router's FIB has no route to it, and until it is back once the probe passes;
   also from the Pod's Ready=False written straight into the store (the kubelet's write: the agent,
   ExaBGP and FRR alone).  Reference: ``announceWhen: allocated`` (the route is never withdrawn).
3. scale: 2 -> ``--scale`` -> 2 while the client runs; requests to pods that were Running and Ready
   (for 1 s, and not terminating) must not fail; each new pod's first answer after it turned Ready.

Everything runs in namespaces this process creates (sbgp-<token>-*), removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bench import verdict
from ipam.store.sqlite import SqliteStore
from lab.build import Lab
from lab.frr import wait_until
from lab.netns import run
from lab.podserver import NodePodServer
from lab.traffic import Record, read_records, summarize
from lab.verbs import apply_file, delete_pod, scale, wait_settled

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
AGENT_CONFIG = "/etc/spiderbgp/agent.yaml"  # where the seed's agents read their config (lab/seed.clab.yml)
PROBED = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      annotations:
        ipam.spidernet.io/ippool: '{{"ipv4":["nginx-ippool-v4"]}}'
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: nginx
          readinessProbe:
            httpGet:
              path: /healthz
              port: 80
            periodSeconds: 1
"""


# ---- the harness (tests/agent/test_rollout.py uses it too) ------------------------------------------


@dataclass
class Cluster:
    lab: Lab
    store: SqliteStore
    work: Path


def is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )


def ready_pods(store: SqliteStore, prefix: str = "web-") -> dict[str, tuple[str, str]]:
    """name -> (ip, node) of the Running, Ready, not terminating pods whose name starts with prefix."""
    out: dict[str, tuple[str, str]] = {}
    for pod in store.list("Pod", namespace="default"):
        name = str(pod["metadata"]["name"])
        if name.startswith(prefix) and is_ready(pod):
            status = pod.get("status") or {}
            out[name] = (str(status.get("podIP", "")), str((pod.get("spec") or {}).get("nodeName", "")))
    return out


def web_pods(store: SqliteStore) -> list[str]:
    """Every web pod in the store, terminating ones too."""
    return [
        str(p["metadata"]["name"])
        for p in store.list("Pod", namespace="default")
        if p["metadata"]["name"].startswith("web-")
    ]


def targets_of(pods: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    return {ip: name for name, (ip, _node) in pods.items()}


def router_has(lab: Lab, ip: str) -> bool:
    """The router's kernel forwards to ``ip`` over BGP (one ``ip route`` call: a few ms, where
    vtysh's JSON takes tens, which would blur the withdrawal times)."""
    return f"{ip}/32" in lab.router.kernel_routes(families=(4,))


def agent_ready(lab: Lab, node: str) -> bool:
    """The node's agent answers 200 on /readyz (curl inside the node's namespace)."""
    health = str(lab.agent_config(node).get("healthAddress", "127.0.0.1:9710"))
    argv = ["curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", f"http://{health}/readyz"]
    return run(lab.ns(node), argv, check=False).stdout.strip() == "200"


def edit_agent_configs(lab: Lab, change: Callable[[dict[str, Any]], None]) -> None:
    """Change every node's agent config (the lab's own copy); takes effect at the next agent start."""
    for node in lab.k8s_nodes:
        path = lab.host_path(node, AGENT_CONFIG)
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data))


def rolling_restart(lab: Lab, *, timeout: float = 60.0) -> None:
    """Each node's agent stopped (SIGTERM) and started, the next only once this one is ready."""
    for node in lab.k8s_nodes:
        lab.stop_cmd(node)
        lab.start_cmd(node)
        wait_until(partial(agent_ready, lab, node), timeout=timeout, interval=0.05, what=f"{node} /readyz")


def wait_routes(cluster: Cluster, *, timeout: float = 60.0) -> dict[str, tuple[str, str]]:
    """Wait until the router routes exactly the Ready pods; returns them."""

    def settled() -> dict[str, tuple[str, str]] | None:
        pods = ready_pods(cluster.store, prefix="")
        routed = {p for p in cluster.lab.router.bgp_routes() if p.startswith("10.244.")}
        return pods if routed == {f"{ip}/32" for ip, _ in pods.values()} else None

    return wait_until(settled, timeout=timeout, interval=0.1, what="the router equal to the Ready pods")


@contextlib.contextmanager
def seed_cluster(work: Path, *, replicas: int) -> Iterator[Cluster]:
    """The seed lab with ``replicas`` probed web pods, Ready and routed; removed afterwards."""
    lab = Lab.create(run_dir=work / "run", env={})
    store: SqliteStore | None = None
    try:
        lab.up(timeout=90)
        store = SqliteStore(lab.store_path)
        apply_file(store, CONFIGS / "nginx-ippool-v4.yaml")
        manifest = work / "web.yaml"
        manifest.write_text(PROBED.format(replicas=replicas))
        apply_file(store, manifest)
        cluster = Cluster(lab, store, work)
        wait_until(lambda: len(ready_pods(store)) == replicas, timeout=120, interval=0.1, what="Ready pods")
        wait_routes(cluster)
        yield cluster
    finally:
        if store is not None:
            store.close()
        lab.down()


class Traffic:
    """``lab.traffic`` in the client's namespace; ``set_targets`` changes what it sends to."""

    def __init__(
        self, cluster: Cluster, name: str, targets: Mapping[str, str], *, rate: float = 40.0
    ) -> None:
        self.targets = cluster.work / f"{name}-targets.json"
        self.out = cluster.work / f"{name}-requests.jsonl"
        self.set_targets(targets)
        lab = cluster.lab
        argv = [sys.executable, "-m", "lab.traffic", "--targets", str(self.targets), "--out", str(self.out)]
        # 2 s: a slow answer on a loaded machine is not a lost request; a missing route fails at once
        argv += ["--rate", str(rate), "--duration", "900", "--timeout", "2"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
        self.proc = lab.sandbox.popen(lab.ns(lab.client), argv, cwd=REPO, env=env)
        wait_until(lambda: len(read_records(self.out)) >= 5, timeout=30, interval=0.05, what="traffic")

    def set_targets(self, targets: Mapping[str, str]) -> None:
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(targets)))
        tmp.replace(self.targets)  # the client never reads a half-written list

    def records(self) -> list[Record]:
        return read_records(self.out)

    def stop(self) -> list[Record]:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        return self.records()


# ---- the scenarios ----------------------------------------------------------------------------------


def _pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _set_graceful_restart(cfg: dict[str, Any], *, seconds: int) -> None:
    for peer in cfg["bgp"]["peers"]:
        peer["gracefulRestart"] = seconds


def _routed(lab: Lab, ip: str, want: bool) -> bool:
    return router_has(lab, ip) == want


def restarts(cluster: Cluster, *, rate: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, gr in (("graceful_restart", 120), ("no_graceful_restart", 0)):
        edit_agent_configs(cluster.lab, partial(_set_graceful_restart, seconds=gr))
        rolling_restart(cluster.lab)  # the sessions now negotiate (or not) graceful restart
        wait_routes(cluster)
        traffic = Traffic(cluster, f"restart-{label}", targets_of(ready_pods(cluster.store)), rate=rate)
        started = time.time()
        rolling_restart(cluster.lab)
        wait_routes(cluster)
        took = time.time() - started
        time.sleep(1.0)  # requests sent just before the routes settled get their answers
        summary = summarize(traffic.stop(), since=started)
        out[label] = {
            "requests": summary.total,
            "failed": summary.failed,
            "longest_gap_s": round(summary.longest_gap, 3),
            "rolling_restart_s": round(took, 2),
        }
        print(f"restarts, {label}: {summary.line()} (rolling restart {took:.1f} s)", flush=True)
    edit_agent_configs(cluster.lab, partial(_set_graceful_restart, seconds=120))
    rolling_restart(cluster.lab)
    return out


def not_ready(cluster: Cluster, *, trials: int) -> dict[str, Any]:
    lab, store = cluster.lab, cluster.store
    name, (ip, node) = sorted(ready_pods(store).items())[0]
    server = NodePodServer.connect(lab.node_dir(node) / "pods.sock")
    withdraw: list[float] = []
    back: list[float] = []
    direct: list[float] = []
    try:
        for _ in range(trials):
            t0 = time.monotonic()
            server.set_ready(name, False)  # the probe fails from its next run on
            wait_until(lambda: not router_has(lab, ip), timeout=10, interval=0.005, what="withdrawn")
            withdraw.append(time.monotonic() - t0)
            t0 = time.monotonic()
            server.set_ready(name, True)
            wait_until(lambda: router_has(lab, ip), timeout=10, interval=0.005, what="back")
            back.append(time.monotonic() - t0)
        for _ in range(trials):  # the kubelet's write itself: agent + ExaBGP + FRR
            for ready in (False, True):
                pod = store.get("Pod", name, "default")
                status = dict(pod["status"])
                status["conditions"] = [
                    {**c, "status": "True" if ready else "False"} if c.get("type") == "Ready" else c
                    for c in status.get("conditions") or []
                ]
                pod["status"] = status
                t0 = time.monotonic()
                store.update_status(pod)
                wait_until(partial(_routed, lab, ip, ready), timeout=10, interval=0.002, what="router")
                if not ready:
                    direct.append(time.monotonic() - t0)
    finally:
        server.set_ready(name, True)
    # the reference: announceWhen: allocated keeps announcing a pod that fails its probe
    edit_agent_configs(lab, lambda cfg: cfg["bgp"].update(announceWhen="allocated"))
    rolling_restart(lab)
    server.set_ready(name, False)
    wait_until(lambda: name not in ready_pods(store), timeout=10, interval=0.05, what="NotReady")
    time.sleep(3.0)
    still = router_has(lab, ip)
    server.set_ready(name, True)
    server.close()
    edit_agent_configs(lab, lambda cfg: cfg["bgp"].pop("announceWhen", None))
    rolling_restart(lab)
    out = {
        "trials": trials,
        "probe_fails_to_withdrawn_s": {"p50": _pct(withdraw, 0.5), "p99": _pct(withdraw, 0.99)},
        "probe_passes_to_announced_s": {"p50": _pct(back, 0.5), "p99": _pct(back, 0.99)},
        "pod_not_ready_to_withdrawn_s": {"p50": _pct(direct, 0.5), "p99": _pct(direct, 0.99)},
        "allocated_reference_withdrawn": not still,
    }
    print(f"not ready: {json.dumps(out)}", flush=True)
    return out


def scaling(cluster: Cluster, *, rate: float, peak: int) -> dict[str, Any]:
    """2 -> peak -> 2 with the client following the Ready pods (as a Service's endpoints do)."""
    store = cluster.store
    scale(store, "web", 2)
    wait_settled(store, timeout=120)
    wait_routes(cluster)
    traffic = Traffic(cluster, "scale", targets_of(ready_pods(store)), rate=rate)
    ready_since: dict[str, float] = {}  # ip -> when the poller first saw its pod Ready (unix time)
    gone_at: dict[str, float] = {}  # ip -> when it stopped being Ready (NotReady or terminating)
    routed_at: dict[str, float] = {}  # ip -> when the router's kernel first had its route

    def follow(until: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            now = time.time()
            pods = ready_pods(store)
            for ip in targets_of(pods):
                ready_since.setdefault(ip, now)
            for prefix in cluster.lab.router.kernel_routes(families=(4,)):
                routed_at.setdefault(prefix.removesuffix("/32"), now)
            for ip in ready_since:
                if ip not in targets_of(pods):
                    gone_at.setdefault(ip, now)
            traffic.set_targets(targets_of(pods))
            if time.monotonic() > deadline:
                raise TimeoutError("scaling did not settle")
            time.sleep(0.1)

    scale(store, "web", peak)
    follow(lambda: len(ready_pods(store)) >= peak, 300)
    time.sleep(3.0)
    scale(store, "web", 2)
    follow(lambda: len(web_pods(store)) == 2 == len(ready_pods(store)), 300)
    time.sleep(2.0)
    records = traffic.stop()
    # a request counts against us when its pod had been Ready for 1 s and stayed so for its timeout
    counted = [
        r
        for r in records
        if r.ip in ready_since
        and r.t >= ready_since[r.ip] + 1.0
        and (r.ip not in gone_at or r.t + 1.0 < gone_at[r.ip])
    ]
    failed = [r for r in counted if not r.ok]
    first_answer: list[float] = []
    for ip, since in ready_since.items():
        ok = [r.t for r in records if r.ip == ip and r.ok and r.t >= since]
        if ok:
            first_answer.append(min(ok) - since)
    to_route = [max(0.0, routed_at[ip] - since) for ip, since in ready_since.items() if ip in routed_at]
    out = {
        "peak": peak,
        "requests": len(records),
        "to_ready_pods": len(counted),
        "failed_to_ready_pods": len(failed),
        "ready_to_first_answer_s": {"p50": _pct(first_answer, 0.5), "p99": _pct(first_answer, 0.99)},
        # the poller sees Ready and the route in the same 0.1 s round: 0 means within that round
        "ready_to_routed_s": {"p50": _pct(to_route, 0.5), "p99": _pct(to_route, 0.99)},
        "client_asks_each_pod_every_s": round(peak / rate, 2),
    }
    print(f"scaling: {json.dumps(out)}", flush=True)
    return out


FLAPPY = """\
apiVersion: v1
kind: Pod
metadata:
  name: flappy
  annotations:
    ipam.spidernet.io/ippool: '{"ipv4":["nginx-ippool-v4"]}'
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 1
  containers:
    - name: web
      image: nginx
"""
DAMPING = {"halfLife": 5, "reuse": 750, "suppress": 2000, "maxSuppress": 20}


def bgp_routes(lab: Lab, node: str) -> dict[str, Any]:
    """``spiderbgp bgp routes -o json`` of the node's agent (over its socket)."""
    sock = lab.host_path(node, "/run/spiderbgp/agent.sock")
    cli = str(Path(sys.executable).parent / "spiderbgp")
    res = run(None, [cli, "bgp", "routes", "-o", "json", "--socket", str(sock)])
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def updates_from(lab: Lab, node: str) -> int:
    """UPDATE messages the router has received from the node's session."""
    peer = lab.bgp_address(node)
    data = lab.router.vtysh_json(f"show bgp neighbors {peer} json")
    return int(data[peer]["messageStats"]["updatesRecv"])


def _gone(store: SqliteStore, name: str) -> bool:
    return name not in {str(p["metadata"]["name"]) for p in store.list("Pod", namespace="default")}


def damping(cluster: Cluster, *, cycles: int, every: float) -> dict[str, Any]:
    """A bare pod deleted and re-created (same name; its address freed first, so it gets it back)
    ``cycles`` times, one every ``every`` seconds, with damping on: after which withdrawal its prefix
    is suppressed, until when, how many UPDATEs the router saw, and when it is announced again."""
    lab, store = cluster.lab, cluster.store
    edit_agent_configs(lab, lambda cfg: cfg["bgp"].update(damping=dict(DAMPING)))
    rolling_restart(lab)
    manifest = cluster.work / "flappy.yaml"
    manifest.write_text(FLAPPY)
    wait_routes(cluster)
    before = updates_from(lab, "node1")
    ips: set[str] = set()
    suppressed_at: int | None = None
    last_delete = time.monotonic()
    for i in range(cycles):
        began = time.monotonic()
        apply_file(store, manifest)
        pods = wait_until(
            lambda: ready_pods(store, "flappy") or None, timeout=30, interval=0.02, what="flappy"
        )
        ips.update(ip for ip, _node in pods.values())
        delete_pod(store, "flappy")
        last_delete = time.monotonic()
        wait_until(partial(_gone, store, "flappy"), timeout=30, interval=0.02, what="flappy gone")
        if suppressed_at is None and bgp_routes(lab, "node1").get("suppressed"):
            suppressed_at = i + 1
        time.sleep(max(0.0, every - (time.monotonic() - began)))
    held = bgp_routes(lab, "node1").get("suppressed") or []
    churn = updates_from(lab, "node1") - before
    # once more, and left running: announced when the penalty has decayed to the reuse threshold
    apply_file(store, manifest)
    pods = wait_until(lambda: ready_pods(store, "flappy") or None, timeout=30, interval=0.02, what="flappy")
    (ip,) = [v[0] for v in pods.values()]
    wait_until(lambda: router_has(lab, ip), timeout=60, interval=0.02, what="flappy's route back")
    back_after = time.monotonic() - last_delete
    delete_pod(store, "flappy")
    wait_until(partial(_gone, store, "flappy"), timeout=30, interval=0.05, what="flappy gone")
    edit_agent_configs(lab, lambda cfg: cfg["bgp"].pop("damping", None))
    rolling_restart(lab)
    out = {
        "cycles": cycles,
        "every_s": every,
        "params": DAMPING,
        "addresses_used": len(ips),
        "suppressed_after_withdrawal": suppressed_at,
        "suppressed_at_end": [{k: s[k] for k in ("prefix", "withdrawals", "until")} for s in held],
        "router_updates_during_churn": churn,
        "announced_again_after_last_withdrawal_s": round(back_after, 1),
    }
    print(f"damping: {json.dumps(out)}", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_rollout", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between two pod deletions")
    parser.add_argument("--phases", default="restarts,not_ready,scaling,damping")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    phases = set(args.phases.split(","))
    result: dict[str, Any] = {"rate_per_s": args.rate, "pods": args.pods}
    work = Path(f"/tmp/sbgp-bench-rollout-{os.getpid()}")
    work.mkdir(mode=0o700)
    try:
        with seed_cluster(work, replicas=args.pods) as cluster:
            if "restarts" in phases:
                result["restarts"] = restarts(cluster, rate=args.rate)
            if "not_ready" in phases:
                result["not_ready"] = not_ready(cluster, trials=args.trials)
            if "scaling" in phases:
                result["scaling"] = scaling(cluster, rate=args.rate, peak=args.scale)
            if "damping" in phases:
                result["damping"] = damping(cluster, cycles=args.cycles, every=args.every)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    print(
        "reference (issue 16): 0 failed requests through a rolling restart with graceful restart; "
        "a NotReady pod withdrawn within 1 s; with allocated it is never withdrawn",
        flush=True,
    )
    if "restarts" in result:
        # the reference must lose requests for the figure to show anything: 0 against 0 is missed
        gr, bare = result["restarts"]["graceful_restart"], result["restarts"]["no_graceful_restart"]
        verdict.report(verdict.Comparison("failed requests through a rolling restart, graceful restart",
                                          gr["failed"], "without graceful restart", bare["failed"],
                                          "requests", verdict.at_most(0.0)))  # fmt: skip
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
