"""Benchmark: the seed lab scaled to 1,000 pods on this machine, until every pod is routable.

    .venv/bin/python -m bench.bench_lab [--pods 1000] [--back-to 2] [--timeout 900] [--json FILE]
                                        [--block-size 26]

Builds the seed lab (``lab/seed.clab.yml``: FRR router, node1 and node2 with their agents, the
client, the lab's controller) in namespaces ``sbgp-<token>-*``, applies the seed's pool and nginx
Deployment (2 replicas), then ``scale nginx N`` as ``python -m lab scale`` does and measures, from
that write:

* until every pod is Running (the controller wrote its status),
* until every pod's /32 is in the router's kernel FIB (``proto bgp``),
* until the client got the pod's name from every pod over HTTP (``lab.probe``),

with pods/s for the last (the figure of merit: new pods per second until routable), the CPU seconds
each part of the lab spent meanwhile (the controller apart from the CNI plugins it ran); then each
agent's and each ExaBGP's resident set, the pod servers', and the router's prefix count; then
``scale nginx 2`` until only 2 pods run and every other route is withdrawn from the router.

The agents run ``advertise: host`` (their seed configs with that one field set) and the pool has no
blocks.  With ``--block-size N`` the bench runs twice, one lab after the other: that host-mode run as
the reference, then the agents in ``advertise: block`` with the pool annotated
``spiderbgp.io/block-size: "N"`` (issue 15); a pod counts as in the FIB when a route of the router's
FIB covers it (its block or its /32), and the two runs' router prefixes and times until every pod is
routable are printed side by side (targets: prefixes <= 2% of host mode's, time <= 1.10x).

Context, not a like-for-like reference: Spiderpool publishes 1,000 pods in 207 s on a 10-node
cluster (its whole pod start-up: scheduling, image, containers, IPAM), 4.8 pods/s.  Everything is
removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import netaddr
import yaml

from bench import verdict
from ipam.blocks import BLOCK_SIZE_ANNOTATION
from ipam.store.sqlite import SqliteStore
from lab.build import REPO_ROOT, SEED_TOPOLOGY, Lab
from lab.invariants import fetch_pages
from lab.netns import NETNS_DIR, list_netns
from lab.verbs import apply_file, scale, wait_settled

CONFIGS = REPO_ROOT / "configs"
SPIDERPOOL_PODS, SPIDERPOOL_SECONDS = 1000, 207.0  # Spiderpool's published figure, 10-node cluster
DEPLOYMENT = "nginx"
POLL = 1.0


@dataclass
class Progress:
    """When each milestone was first seen, per pod (seconds since the scale write)."""

    running: dict[str, float] = field(default_factory=dict)  # pod name -> t
    in_fib: dict[str, float] = field(default_factory=dict)  # pod IP -> t
    answered: dict[str, float] = field(default_factory=dict)  # pod IP -> t


@dataclass
class Result:
    advertise: str
    block_size: int | None
    pods: int
    running_s: float
    fib_s: float
    routable_s: float
    pods_per_s: float
    scale_back_s: float
    router_prefixes: int
    rss_mib: dict[str, float]
    pods_per_node: dict[str, int]
    cpu_s: dict[str, float]  # CPU seconds per part of the lab during the scale up
    spiderpool_pods_per_s: float = SPIDERPOOL_PODS / SPIDERPOOL_SECONDS


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _lab_netns_inodes(lab: Lab) -> set[int]:
    inodes: set[int] = set()
    for name in list_netns(lab.sandbox.prefix):
        try:
            inodes.add((NETNS_DIR / name).stat().st_ino)
        except OSError:
            continue
    return inodes


def _netns_inode(pid: int) -> int | None:
    try:
        return Path(f"/proc/{pid}/ns/net").stat().st_ino
    except OSError:
        return None


def _pod_servers(lab: Lab) -> list[int]:
    inodes = _lab_netns_inodes(lab)
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and "lab.podserver" in _cmdline(int(p.name))
        and _netns_inode(int(p.name)) in inodes
    ]


def memory(lab: Lab) -> dict[str, float]:
    """Resident sets in MiB: each agent, its ExaBGP (with the relay), and the pod servers (the
    ``lab.podserver`` processes inside the lab's namespaces)."""
    out: dict[str, float] = {}
    for node, ref in sorted(lab.agents.items()):
        out[f"{node} agent"] = _rss_kib(ref.pid) / 1024
        kids = _children(ref.pid)
        out[f"{node} exabgp + relay"] = (
            sum(_rss_kib(p) for p in {*kids, *(g for k in kids for g in _children(k))}) / 1024
        )
    inodes = _lab_netns_inodes(lab)
    servers = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and "lab.podserver" in _cmdline(int(p.name))
        and _netns_inode(int(p.name)) in inodes
    ]
    out["pod servers"] = sum(_rss_kib(p) for p in servers) / 1024
    out["pod server processes"] = float(len(servers))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int, *, children: bool) -> float:
    """utime + stime (+ the waited-for children's, with ``children``) of ``pid`` in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = raw[raw.rindex(")") + 2 :].split()  # f[11..14]: utime stime cutime cstime
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / _TICK


def cpu(lab: Lab) -> dict[str, float]:
    """CPU seconds so far per part of the lab; the programs the controller ran and waited for (the
    CNI plugins hostroute, spiderpool and tuning, ``ip``, the namespace commands) apart from its own."""
    out: dict[str, float] = {}
    if lab.controller is not None:
        own = _cpu_s(lab.controller.pid, children=False)
        out["controller (Python)"] = own
        out["CNI plugins, ip, netns commands"] = _cpu_s(lab.controller.pid, children=True) - own
    for node, ref in sorted(lab.agents.items()):
        out[f"{node} agent"] = _cpu_s(ref.pid, children=False)
        kids = _children(ref.pid)
        out[f"{node} exabgp + relay"] = sum(
            _cpu_s(p, children=True) for p in {*kids, *(g for k in kids for g in _children(k))}
        )
    out["router FRR"] = sum(_cpu_s(ref.pid, children=False) for ref in lab.router.pids().values())
    out["pod servers"] = sum(_cpu_s(p, children=False) for p in _pod_servers(lab))
    me = resource.getrusage(resource.RUSAGE_SELF)
    probes = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["bench (polls, client probes)"] = me.ru_utime + me.ru_stime + probes.ru_utime + probes.ru_stime
    return out


def _running_pods(store: SqliteStore) -> dict[str, str]:
    """name -> IPv4 of the Deployment's Running, non-terminating pods."""
    out: dict[str, str] = {}
    for pod in store.list("Pod", namespace="default"):
        meta, status = pod["metadata"], pod.get("status") or {}
        if (
            meta["name"].startswith(f"{DEPLOYMENT}-")
            and status.get("phase") == "Running"
            and not meta.get("deletionTimestamp")
            and status.get("podIP")
        ):
            out[meta["name"]] = str(status["podIP"])
    return out


def in_fib(ip: str, fib: Mapping[str, str], lengths: frozenset[int]) -> bool:
    """Whether a route of the router's kernel FIB (prefix -> gateway) covers ``ip``: its /32 or,
    with blocks, the block it lies in (``lengths``: the IPv4 prefix lengths in the FIB)."""
    return any(str(netaddr.IPNetwork(f"{ip}/{n}").cidr) in fib for n in lengths)


def fib_lengths(fib: Mapping[str, str]) -> frozenset[int]:
    return frozenset(int(p.split("/")[1]) for p in fib if ":" not in p and "/" in p)


def wait_routable(
    lab: Lab, store: SqliteStore, n: int, *, timeout: float, clock: Callable[[], float] = time.monotonic
) -> Progress:
    """Poll until ``n`` pods run, are in the router's FIB and answered the client."""
    start = clock()
    prog = Progress()
    while True:
        now = clock() - start
        pods = _running_pods(store)
        for name in pods:
            prog.running.setdefault(name, now)
        fib = lab.router.kernel_routes(families=(4,))
        lengths = fib_lengths(fib)
        for ip in pods.values():
            if ip not in prog.in_fib and in_fib(ip, fib, lengths):
                prog.in_fib.setdefault(ip, now)
        ask = [ip for ip in pods.values() if ip in prog.in_fib and ip not in prog.answered]
        if ask:
            answers = fetch_pages(lab, ask, timeout=2.0)
            names = {ip: name for name, ip in pods.items()}
            now = clock() - start
            for ip, got in answers.items():
                if got == names.get(ip):
                    prog.answered.setdefault(ip, now)
        done = len(pods) >= n and all(ip in prog.answered for ip in pods.values())
        print(
            f"   t={now:6.1f}s running {len(pods):5d}  in FIB {len(prog.in_fib):5d}  answered {len(prog.answered):5d}",
            flush=True,
        )
        if done:
            return prog
        if now > timeout:
            raise TimeoutError(
                f"after {timeout:.0f}s: {len(pods)} running, {len(prog.answered)} answered of {n}"
            )
        time.sleep(POLL)


def scaled_back(routes: set[str], pods: Mapping[str, str], *, blocks: bool) -> bool:
    """Whether the router's routes into the pool are only the remaining pods' ones: their /32s
    exactly; with blocks, no /32 of a gone pod (the emptied blocks stay claimed for the leader's
    grace period, so still announced) and every pod covered."""
    hosts = {f"{ip}/32" for ip in pods.values()}
    if not blocks:
        return routes == hosts
    fib = dict.fromkeys(routes, "")
    lengths = fib_lengths(fib)
    return {p for p in routes if p.endswith("/32")} <= hosts and all(
        in_fib(ip, fib, lengths) for ip in pods.values()
    )


def wait_scaled_back(lab: Lab, store: SqliteStore, n: int, *, timeout: float, blocks: bool = False) -> float:
    start = time.monotonic()
    while True:
        pods = _running_pods(store)
        ours = {p for p in lab.router.bgp_routes(families=("ipv4",)) if p.startswith("10.244.")}
        if len(pods) == n and scaled_back(ours, pods, blocks=blocks) and not _terminating(store):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"scale back: {len(pods)} pods, {len(ours)} routes after {timeout:.0f}s")
        time.sleep(POLL)


def _terminating(store: SqliteStore) -> int:
    return sum(1 for p in store.list("Pod", namespace="default") if p["metadata"].get("deletionTimestamp"))


def _last(values: Mapping[str, float]) -> float:
    return max(values.values()) if values else 0.0


def seed_topology_with(advertise: str, out_dir: Path) -> Path:
    """A copy of the seed topology in ``out_dir`` whose agents' configs (copied beside it) have
    ``bgp.advertise`` set; every other bind still points at the repository's files."""
    text = SEED_TOPOLOGY.read_text()
    for node in ("node1", "node2"):
        config = yaml.safe_load((CONFIGS / f"agent-{node}.yaml").read_text())
        config["bgp"]["advertise"] = advertise
        (out_dir / f"agent-{node}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        text = text.replace(f"- ../configs/agent-{node}.yaml:", f"- {out_dir}/agent-{node}.yaml:")
    path = out_dir / SEED_TOPOLOGY.name
    path.write_text(text.replace("- ../", f"- {REPO_ROOT}/"))
    return path


def seed_pool_with(block_size: int | None, out_dir: Path) -> Path:
    """The seed's pool manifest, annotated with ``block_size`` when given."""
    source = CONFIGS / "nginx-ippool-v4.yaml"
    if block_size is None:
        return source
    pool = yaml.safe_load(source.read_text())
    pool["metadata"].setdefault("annotations", {})[BLOCK_SIZE_ANNOTATION] = str(block_size)
    path = out_dir / source.name
    path.write_text(yaml.safe_dump(pool, sort_keys=False))
    return path


def run_bench(
    *, pods: int, back_to: int, timeout: float, run_dir: Path, block_size: int | None = None
) -> Result:
    advertise = "host" if block_size is None else "block"
    files = run_dir.parent / f"files-{advertise}"
    files.mkdir(parents=True, exist_ok=True)
    lab = Lab.create(run_dir=run_dir, env={}, topology_file=seed_topology_with(advertise, files))
    prefix = lab.sandbox.prefix
    store: SqliteStore | None = None
    try:
        t = time.monotonic()
        lab.up(timeout=120)
        print(f"   lab up in {time.monotonic() - t:.1f}s (advertise: {advertise})", flush=True)
        store = SqliteStore(lab.store_path)
        apply_file(store, seed_pool_with(block_size, files))
        apply_file(store, CONFIGS / "nginx-deployment.yaml")
        wait_settled(store, timeout=120)
        before = len(_running_pods(store))
        print(f"==> scale {DEPLOYMENT} {before} -> {pods}", flush=True)
        cpu_before = cpu(lab)
        scale(store, DEPLOYMENT, pods)
        prog = wait_routable(lab, store, pods, timeout=timeout)
        cpu_after = cpu(lab)
        routable = _last(prog.answered)
        rss = memory(lab)
        prefixes = len(lab.router.bgp_routes())
        per_node: dict[str, int] = {}
        for pod in store.list("Pod", namespace="default"):
            node = str((pod.get("spec") or {}).get("nodeName") or "-")
            per_node[node] = per_node.get(node, 0) + 1
        print(f"==> scale {DEPLOYMENT} {back_to}", flush=True)
        scale(store, DEPLOYMENT, back_to)
        back = wait_scaled_back(lab, store, back_to, timeout=timeout, blocks=block_size is not None)
        return Result(
            advertise=advertise,
            block_size=block_size,
            pods=pods,
            running_s=_last(prog.running),
            fib_s=_last(prog.in_fib),
            routable_s=routable,
            pods_per_s=(pods - before) / routable if routable else 0.0,  # the new pods
            scale_back_s=back,
            router_prefixes=prefixes,
            rss_mib=rss,
            pods_per_node=dict(sorted(per_node.items())),
            cpu_s={k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
        )
    finally:
        if store is not None:
            store.close()
        lab.down()
        left = list_netns(prefix)
        if left:
            print(f"warning: namespaces left behind: {left[:3]}", file=sys.stderr)


def report(r: Result) -> str:
    sp = r.spiderpool_pods_per_s
    new = max(1, round(r.pods_per_s * r.routable_s))
    mode = f"advertise: {r.advertise}" + (f", block-size /{r.block_size}" if r.block_size else "")
    lines = [
        f"pods scaled to:                          {r.pods}  ({mode})",
        f"  all Running:                           {r.running_s:7.1f} s",
        f"  all pods in the router's FIB:          {r.fib_s:7.1f} s",
        f"  all answered the client (routable):    {r.routable_s:7.1f} s   -> {r.pods_per_s:.1f} pods/s",
        f"  Spiderpool, published (context):       {SPIDERPOOL_SECONDS:7.1f} s   -> {sp:.1f} pods/s "
        f"({SPIDERPOOL_PODS} pods, 10-node cluster, whole pod start-up; not like-for-like)",
        f"  ours / Spiderpool's pods/s:            {r.pods_per_s / sp:7.2f}",
        f"pods per node:                           {', '.join(f'{k} {v}' for k, v in r.pods_per_node.items())}",
        f"router prefixes at {r.pods} pods:         {r.router_prefixes}",
        f"scale back to 2, all routes withdrawn:   {r.scale_back_s:7.1f} s",
        "resident memory at full scale (MiB):",
        *(f"  {k:<36} {v:8.1f}" for k, v in r.rss_mib.items()),
        f"CPU during the scale up (s; per new pod in ms), {sum(r.cpu_s.values()):.1f} s in all:",
        *(f"  {k:<36} {v:8.1f}  {v / new * 1000:7.1f}" for k, v in r.cpu_s.items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_lab", description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--back-to", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for each phase")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--block-size",
        type=int,
        help="also run with the pool annotated spiderbgp.io/block-size: N and the agents in "
        "advertise: block, and compare with the host-mode run (e.g. 26)",
    )
    args = parser.parse_args(argv)
    if args.pods < 1 or args.back_to < 0:
        parser.error("--pods must be at least 1 and --back-to at least 0")
    if args.block_size is not None and not 16 <= args.block_size <= 32:
        parser.error("--block-size must be between the seed pool's /16 and /32")
    sizes: list[int | None] = [None] if args.block_size is None else [None, args.block_size]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        for size in sizes:
            try:
                results.append(
                    run_bench(
                        pods=args.pods,
                        back_to=args.back_to,
                        timeout=args.timeout,
                        run_dir=Path(tmp) / f"run-{size or 'host'}",
                        block_size=size,
                    )
                )
            except (TimeoutError, OSError, RuntimeError) as exc:
                print(f"bench_lab: {exc}", file=sys.stderr)
                return 1
    for result in results:
        print(report(result))
    host = results[0]
    context = "Spiderpool's published (10-node cluster, whole pod start-up; not like-for-like)"
    verdict.report(verdict.Comparison("new pods/s until routable", host.pods_per_s, context,
                                      host.spiderpool_pods_per_s, "pods/s", None, 1))  # fmt: skip
    if len(results) == 2:
        block = results[1]
        verdict.report(verdict.Comparison(
            f"router prefixes at {block.pods} pods, block-size /{block.block_size}", block.router_prefixes,
            "host mode, same run", host.router_prefixes, "prefixes", verdict.at_most(0.02)))  # fmt: skip
        verdict.report(verdict.Comparison(
            f"time until every pod routable, block-size /{block.block_size}", block.routable_s,
            "host mode, same run", host.routable_s, "s", verdict.at_most(1.10), 1))  # fmt: skip
    if args.json is not None:
        data: list[dict[str, Any]] = [asdict(r) for r in results]
        args.json.write_text(json.dumps(data if len(data) > 1 else data[0], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
