"""Benchmark: the BGP speaker beside a Calico-style BIRD and beside raw ExaBGP, on this machine.

    .venv/bin/python -m bench.bench_bgp [--pods 200] [--bulk 2000] [--runs 3] [--json FILE]

Topology (namespaces sbgp-<token>-*, all removed at the end):

    router  br0 172.16.13.1/24              FRR (zebra + bgpd), AS 23000
      |-- node1 eth0 172.16.13.11           our speaker (ExaBGP child + relay), AS 64512, pods 10.244.0.0/16
      `-- node2 eth0 172.16.13.21           BIRD 2, Calico-style (kernel protocol with learn), pods 10.245.0.0/16

Convergence (per pod, node1 and node2 taking turns in the same run, 0.15 s apart):
  (a) host route appears on the node (``ip -ts monitor route`` in the node) -> the BGP UPDATE carrying
      the prefix on the wire (tcpdump in the router namespace, capture timestamps);
  (b) host route appears on the node -> the route in the router's kernel table (``ip -ts monitor route``
      in the router).  The route appearing is what the CNI ptp plugin's ADD does right before it returns.
  Also (a) measured the way lab-notes §8 did: from handing the ``route add`` command to ``ip`` to the
  UPDATE on the wire.  The routes are added by one long-running ``ip -batch -`` per node, fed a line
  at a time: the speaker lives in this process, and a thread running ``ip route add`` here (its
  exec, pipes and wait, holding the GIL in turns) would slow the speaker in a way no agent is slowed
  when a CNI plugin, another process, adds the route.
Bulk: N host routes on a node; the speaker restarted without graceful restart: time from the start
until the router's kernel holds all N again; the same for raw ExaBGP (with its default reactor
speed) fed the N routes by a trivial helper, and for BIRD restarted with N kernel routes to learn.
Memory: resident set of ExaBGP + relay, and of this process (which hosts the speaker), with N routes.

Targets (issue 4), each on a figure beside its reference from the same run (``bench.verdict`` lines
after the JSON): (a) p50 at most 2x BIRD's (not reachable with ExaBGP 5.0, whose own Python takes
1.5-1.8 ms per API command: printed as missed), (a) p99 at most 20 ms above BIRD's, (b) p50 at most
5 ms above BIRD's, bulk restart at most 1.2x raw ExaBGP's; bulk BIRD as context.  Lines: ExaBGP's
ack of 1,000 announcements in the speaker's lines of NLRI_PER_LINE prefixes at most 0.5x the time in
lines of 500 (which wait for ExaBGP's idle tick), through the speaker's ExaBGP with its session up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.verdict import Comparison, at_most, report, within
from bgp_speaker.commands import NLRI_PER_LINE, RouteAttributes, announce_commands
from bgp_speaker.config import parse_bgp_config
from bgp_speaker.kernel import NetlinkRouteSource
from bgp_speaker.render import exabgp_environment
from bgp_speaker.speaker import BgpSpeaker
from lab.frr import FrrRouter, wait_until
from lab.netns import Netns, ProcRef, Sandbox, add_address, ip_netns_exec, kill_procs, run, set_sysctl

VENV_BIN = Path(sys.executable).parent
ROUTER, NODE1, NODE2 = "172.16.13.1", "172.16.13.11", "172.16.13.21"
POOL1, POOL2 = "10.244.0.0/16", "10.245.0.0/16"

FRR_CONF = f"""frr version 8.4
frr defaults traditional
hostname router
!
router bgp 23000
 bgp router-id {ROUTER}
 no bgp ebgp-requires-policy
 no bgp network import-check
 bgp log-neighbor-changes
 neighbor {NODE1} remote-as 64512
 neighbor {NODE2} remote-as 64512
 address-family ipv4 unicast
  neighbor {NODE1} activate
  neighbor {NODE2} activate
 exit-address-family
exit
"""

BIRD_CONF = f"""router id {NODE2};
protocol device {{ scan time 2; }}
protocol kernel {{
    learn;
    scan time 2;
    ipv4 {{ import all; export none; }};
}}
protocol bgp tor {{
    local {NODE2} as 64512;
    neighbor {ROUTER} as 23000;
    ipv4 {{ import none; export where net ~ [ {POOL2}+ ]; }};
}}
"""

RAW_FEEDER = """import os, sys, time
lines = open(sys.argv[1]).read().splitlines()
for line in lines:
    sys.stdout.write(line + "\\n")
sys.stdout.flush()
while os.read(0, 65536):
    pass
"""


# ---- timestamps ------------------------------------------------------------------------------------


def _ts(text: str) -> float:
    """``[2026-11-26T13:37:23.123456]`` from ``ip -ts`` (local time) -> epoch seconds."""
    return dt.datetime.fromisoformat(text.strip("[]")).timestamp()


class Recorder:
    """A long-running command inside a namespace whose stdout lines are kept."""

    def __init__(self, sb: Sandbox, ns: Netns, argv: Sequence[str]) -> None:
        self.lines: list[str] = []
        self.proc = sb.popen(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.ref = ProcRef.of(self.proc.pid)
        assert self.proc.stdout is not None
        self.thread = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def stop(self) -> None:
        kill_procs([self.ref], grace=2)
        self.thread.join(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


_MON = re.compile(r"^(\[[^\]]+\])\s+(Deleted\s+)?(\d+\.\d+\.\d+\.\d+)(/\d+)?\s")


def route_added_times(lines: Sequence[str]) -> dict[str, float]:
    """First time each host route appeared, from ``ip -ts monitor route`` lines."""
    out: dict[str, float] = {}
    for ln in lines:
        m = _MON.match(ln)
        if m and not m.group(2):
            prefix = m.group(3) + (m.group(4) or "/32")
            out.setdefault(prefix, _ts(m.group(1)))
    return out


def update_times(pcap: Path) -> dict[str, float]:
    """First capture time of an UPDATE announcing each prefix, decoded by tcpdump from ``pcap``."""
    res = subprocess.run(
        ["tcpdump", "-r", str(pcap), "-n", "-tt", "-v"], capture_output=True, text=True, check=False
    )
    out: dict[str, float] = {}
    now = 0.0
    section = ""
    for ln in res.stdout.splitlines():
        head = re.match(r"^(\d+\.\d+) IP", ln)
        if head:
            now, section = float(head.group(1)), ""
            continue
        s = ln.strip()
        if s.startswith("Updated routes:"):
            section = "update"
        elif s.startswith("Withdrawn routes:"):
            section = "withdraw"
        elif section == "update" and re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", s):
            out.setdefault(s, now)
        elif s and not re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", s):
            section = "" if not s.startswith(("Updated", "Withdrawn")) else section
    return out


def pct(values: Sequence[float], p: float) -> float:
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50": round(pct(values_ms, 50), 2),
        "p90": round(pct(values_ms, 90), 2),
        "p99": round(pct(values_ms, 99), 2),
        "max": round(max(values_ms), 2) if values_ms else float("nan"),
    }


def rss_kib(pid: int) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1])
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


# ---- the lab ---------------------------------------------------------------------------------------


@dataclass
class Lab:
    sb: Sandbox
    router: Netns
    node1: Netns
    node2: Netns
    work: Path
    frr: FrrRouter
    bird: subprocess.Popen[bytes] | None = None
    extra: list[Any] = field(default_factory=list)

    def fib(self, via: str) -> int:
        res = run(None, ["ip", "-n", self.router.name, "-4", "route", "show", "proto", "bgp"])
        return sum(1 for ln in res.stdout.splitlines() if f"via {via} " in ln)

    def settle(self, peer: str) -> None:
        """Before a timed start: the old routes are gone and FRR accepts a new session from ``peer``
        (right after a session closes FRR sits in Idle for a moment and refuses connections, which
        would add ExaBGP's 1 s reconnect delay to whichever run happens to hit it)."""
        self.wait_fib(peer, 0, timeout=30)
        wait_until(
            lambda: self.frr.bgp_peers().get(peer, {}).get("state") in ("Active", "Connect"),
            timeout=30,
            interval=0.1,
            what=f"FRR ready for {peer}",
        )
        time.sleep(0.3)

    def wait_fib(self, via: str, count: int, *, timeout: float = 120.0, interval: float = 0.02) -> float:
        wait_until(
            lambda: self.fib(via) == count, timeout=timeout, interval=interval, what=f"{count} via {via}"
        )
        return time.monotonic()


@contextlib.contextmanager
def build_lab() -> Iterator[Lab]:
    with Sandbox() as sb:
        work = Path(f"/tmp/sbgp-{sb.token}-bench")
        work.mkdir()
        sb.add_path(work)
        router, node1, node2 = sb.netns("router"), sb.netns("node1"), sb.netns("node2")
        run(router, ["ip", "link", "add", "br0", "type", "bridge"])
        run(router, ["ip", "link", "set", "br0", "up"])
        add_address(router, "br0", f"{ROUTER}/24")
        for ns, addr, port in ((node1, NODE1, "r-node1"), (node2, NODE2, "r-node2")):
            sb.veth(router, port, ns, "eth0")
            run(router, ["ip", "link", "set", port, "master", "br0"])
            add_address(ns, "eth0", f"{addr}/24")
            run(ns, ["ip", "route", "add", "default", "via", ROUTER])
            run(ns, ["ip", "link", "add", "pods", "type", "veth", "peer", "name", "podpeer"])
            run(ns, ["ip", "link", "set", "pods", "up"])
            run(ns, ["ip", "link", "set", "podpeer", "up"])
        set_sysctl(router, "net.ipv4.ip_forward", 1)
        frr = FrrRouter(sb, router, run_dir=work / "frr")
        frr.start(FRR_CONF)
        yield Lab(sb, router, node1, node2, work, frr)


def start_bird(lab: Lab) -> subprocess.Popen[bytes]:
    d = lab.work / "bird"
    d.mkdir(exist_ok=True)
    (d / "bird.conf").write_text(BIRD_CONF)
    with open(d / "bird.log", "wb") as logf:
        proc = lab.sb.popen(
            lab.node2,
            ["bird", "-f", "-c", str(d / "bird.conf"), "-s", str(d / "bird.ctl"), "-P", str(d / "bird.pid")],
            stdout=logf,
        )
    lab.bird = proc
    return proc


def stop_bird(lab: Lab) -> None:
    if lab.bird is not None:
        lab.sb.stop_proc(ProcRef.of(lab.bird.pid)) if lab.bird.poll() is None else None
        lab.bird.wait(timeout=5)
        lab.bird = None


def ip_batch(ns: Netns, commands: Sequence[str]) -> None:
    run(ns, ["ip", "-batch", "-"], input="\n".join(commands) + "\n", timeout=120)


def speaker_for(lab: Lab, *, gr: int = 0) -> BgpSpeaker:
    cfg = parse_bgp_config(
        {
            "asn": 64512,
            "nextHop": NODE1,
            "runtimeDir": str(lab.work / "rt"),
            "reconcileInterval": 0,
            "announceWhen": "allocated",  # no Pod objects: route -> UPDATE is what this measures
            "peers": [{"address": ROUTER, "asn": 23000, "holdTime": 9, "gracefulRestart": gr}],
        },
        source="bench",
    )
    return BgpSpeaker(
        cfg,
        exabgp_command=ip_netns_exec(lab.node1, [str(VENV_BIN / "exabgp"), "server"]),
        route_source=NetlinkRouteSource(netns=lab.node1.name),
        cli=False,
    )


async def wait_up(sp: BgpSpeaker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sp.status()[0].state != "up":
        if time.monotonic() > deadline:
            raise TimeoutError(f"speaker session not up: {sp.status()}")
        await asyncio.sleep(0.02)


# ---- phases ----------------------------------------------------------------------------------------


async def convergence(lab: Lab, pods: int, gap: float) -> dict[str, Any]:
    sp = speaker_for(lab)
    sp.set_pool_subnets([POOL1])
    await sp.start()
    start_bird(lab)
    await wait_up(sp)
    await asyncio.to_thread(lab.frr.wait_established, {NODE1, NODE2}, timeout=30)
    pcap = lab.work / "bgp.pcap"
    dump = lab.sb.popen(
        lab.router,
        ["tcpdump", "-i", "br0", "-n", "-s", "0", "-U", "--immediate-mode", "-w", str(pcap), "tcp port 179"],
    )
    mon = {
        "node1": Recorder(lab.sb, lab.node1, ["ip", "-4", "-ts", "monitor", "route"]),
        "node2": Recorder(lab.sb, lab.node2, ["ip", "-4", "-ts", "monitor", "route"]),
        "router": Recorder(lab.sb, lab.router, ["ip", "-4", "-ts", "monitor", "route"]),
    }
    adders = {
        ns.name: lab.sb.popen(ns, ["ip", "-batch", "-"], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for ns in (lab.node1, lab.node2)
    }
    await asyncio.sleep(1.0)  # tcpdump and the monitors are listening
    ips1 = [f"10.244.{100 + i // 250}.{i % 250 + 1}" for i in range(pods)]
    ips2 = [f"10.245.{100 + i // 250}.{i % 250 + 1}" for i in range(pods)]
    issued: dict[str, float] = {}  # when the route add was handed to `ip` (lab-notes §8's trigger)

    def add_route(ns: Netns, ip: str) -> None:
        stdin = adders[ns.name].stdin
        assert stdin is not None
        issued[f"{ip}/32"] = time.time()
        stdin.write(f"route add {ip} dev pods scope host\n".encode())
        stdin.flush()

    for a, b in zip(ips1, ips2, strict=True):
        sp.add_pod_ip(a, POOL1)  # IPAM allocated the IP; the CNI plugin then adds the host route
        add_route(lab.node1, a)
        await asyncio.sleep(gap)
        add_route(lab.node2, b)
        await asyncio.sleep(gap)
    for proc in adders.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    await asyncio.to_thread(lab.wait_fib, NODE1, pods, timeout=30)
    await asyncio.to_thread(lab.wait_fib, NODE2, pods, timeout=30)
    await asyncio.sleep(0.5)
    kill_procs([ProcRef.of(dump.pid)], grace=3)
    for r in mon.values():
        r.stop()
    wire = update_times(pcap)
    node_t = {**route_added_times(mon["node1"].lines), **route_added_times(mon["node2"].lines)}
    fib_t = route_added_times(mon["router"].lines)
    result: dict[str, Any] = {}
    for name, ips in (("speaker", ips1), ("bird", ips2)):
        a_ms = [
            (wire[f"{ip}/32"] - node_t[f"{ip}/32"]) * 1000
            for ip in ips
            if f"{ip}/32" in wire and f"{ip}/32" in node_t
        ]
        b_ms = [
            (fib_t[f"{ip}/32"] - node_t[f"{ip}/32"]) * 1000
            for ip in ips
            if f"{ip}/32" in fib_t and f"{ip}/32" in node_t
        ]
        c_ms = [(wire[p] - issued[p]) * 1000 for ip in ips if (p := f"{ip}/32") in wire]
        result[name] = {
            "route_to_update_ms": summary(a_ms),
            "route_to_router_fib_ms": summary(b_ms),
            "command_to_update_ms": summary(c_ms),
        }
    reg = sp.metrics.registry
    count = reg.get_sample_value("spiderbgp_bgp_announce_latency_seconds_count") or 0.0
    total = reg.get_sample_value("spiderbgp_bgp_announce_latency_seconds_sum") or 0.0
    result["speaker"]["metric_alloc_to_ack_mean_ms"] = round(total / count * 1000, 2) if count else None
    await sp.stop(withdraw=False)
    stop_bird(lab)
    for ip in ips1:
        run(lab.node1, ["ip", "route", "del", ip], check=False)
    for ip in ips2:
        run(lab.node2, ["ip", "route", "del", ip], check=False)
    await asyncio.to_thread(lab.wait_fib, NODE1, 0, timeout=30)
    await asyncio.to_thread(lab.wait_fib, NODE2, 0, timeout=30)
    return result


def bulk_ips(prefix: str, n: int) -> list[str]:
    return [f"{prefix}.{100 + i // 250}.{i % 250 + 1}" for i in range(n)]


def raw_exabgp_setup(lab: Lab, n: int) -> tuple[list[str], dict[str, str]]:
    """ExaBGP with a trivial helper that prints the same N routes in the same batched form."""
    ips = bulk_ips("10.244", n)
    d = lab.work / "raw"
    d.mkdir(exist_ok=True)
    feeder = d / "feeder.py"
    feeder.write_text(RAW_FEEDER)
    lines = [
        f"announce attributes next-hop {NODE1} origin igp nlri "
        + " ".join(f"{ip}/32" for ip in ips[i : i + 500])
        for i in range(0, n, 500)
    ]
    (d / "routes.txt").write_text("\n".join(lines) + "\n")
    (d / "exabgp.conf").write_text(
        f"""process feed {{
    run {sys.executable} {feeder} {d / "routes.txt"};
    encoder json;
}}
neighbor {ROUTER} {{
    router-id {NODE1};
    local-address {NODE1};
    local-as 64512;
    peer-as 23000;
    hold-time 9;
    family {{ ipv4 unicast; }}
    api {{ processes [ feed ]; }}
}}
"""
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", **exabgp_environment(pipename="rawbench", cli=False)}
    # ExaBGP's own reactor speed (1.0): the helper writes 500-prefix lines at once, which ExaBGP takes
    # in 50 prefixes per idle tick, so our slower idle tick (5.0) would make the baseline 2x slower
    del env["exabgp_reactor_speed"]
    return [str(VENV_BIN / "exabgp"), "server", str(d / "exabgp.conf")], env


def raw_exabgp_once(lab: Lab, argv: list[str], env: dict[str, str], n: int) -> float:
    lab.settle(NODE1)
    t0 = time.monotonic()
    proc = lab.sb.popen(lab.node1, argv, env=env)
    t1 = lab.wait_fib(NODE1, n)
    lab.sb.stop_proc(ProcRef.of(proc.pid))
    return t1 - t0


async def bulk_speaker_and_raw(
    lab: Lab, n: int, runs: int
) -> tuple[list[float], list[float], dict[str, int]]:
    """Speaker restarts and raw ExaBGP starts, alternating, so background load hits both alike."""
    ips = bulk_ips("10.244", n)
    await asyncio.to_thread(ip_batch, lab.node1, [f"route add {ip} dev pods scope host" for ip in ips])
    argv, env = raw_exabgp_setup(lab, n)
    pods = dict.fromkeys(ips, POOL1)
    sp_times: list[float] = []
    raw_times: list[float] = []
    memory: dict[str, int] = {}
    for run_no in range(runs):
        await asyncio.to_thread(lab.settle, NODE1)
        sp = speaker_for(lab)  # a fresh agent: inputs first, as the agent does at start-up
        t0 = time.monotonic()
        sp.set_pool_subnets([POOL1])
        sp.set_pod_ips(pods)
        await sp.start()
        t1 = await asyncio.to_thread(lab.wait_fib, NODE1, n)
        sp_times.append(t1 - t0)
        if run_no == runs - 1:
            await asyncio.sleep(1.0)
            exa_pid = int((lab.work / "rt" / "exabgp.pid").read_text())
            memory = {
                "exabgp_kib": rss_kib(exa_pid),
                "relay_kib": sum(rss_kib(p) for p in children(exa_pid)),
                "agent_process_kib": rss_kib(os.getpid()),
            }
        await sp.stop(withdraw=False)  # no graceful restart: FRR drops everything at once
        raw_times.append(await asyncio.to_thread(raw_exabgp_once, lab, argv, env, n))
    await asyncio.to_thread(lab.wait_fib, NODE1, 0, timeout=30)
    return sp_times, raw_times, memory


def bulk_bird(lab: Lab, n: int, runs: int) -> list[float]:
    ips = bulk_ips("10.245", n)
    ip_batch(lab.node2, [f"route add {ip} dev pods scope host" for ip in ips])
    times: list[float] = []
    for _ in range(runs):
        lab.settle(NODE2)
        t0 = time.monotonic()
        start_bird(lab)
        t1 = lab.wait_fib(NODE2, n)
        times.append(t1 - t0)
        stop_bird(lab)
    lab.wait_fib(NODE2, 0, timeout=30)
    ip_batch(lab.node2, [f"route del {ip}" for ip in ips])
    return times


async def line_width(lab: Lab, n: int, runs: int) -> dict[str, float]:
    """Seconds for ExaBGP to ack ``n`` announcements sent as 500-prefix lines (ExaBGP advances a line
    by 50 prefixes a loop turn, then sleeps its idle tick) and as lines of ``NLRI_PER_LINE`` (the
    speaker's), through a running speaker's ExaBGP with its session up, in turns, new prefixes each
    time; the medians.  The figure tests/bgp/test_driver.py no longer times."""
    sp = speaker_for(lab)
    await sp.start()
    await wait_up(sp)
    attrs = RouteAttributes(next_hop=ipaddress.ip_address(NODE1))
    wide: list[float] = []
    narrow: list[float] = []
    try:
        proc = sp._proc  # the bench drives the speaker's own ExaBGP behind its back (no reconcile)
        assert proc is not None
        for run_no in range(runs):
            for per_line, times in ((500, wide), (NLRI_PER_LINE, narrow)):
                base = int(ipaddress.ip_address("10.246.0.0")) + (2 * run_no + (per_line != 500)) * n
                nets = [ipaddress.ip_network(f"{ipaddress.ip_address(base + i)}/32") for i in range(n)]
                t0 = time.monotonic()
                results = await proc.send_many(announce_commands(ROUTER, attrs, nets, per_line=per_line))
                times.append(time.monotonic() - t0)
                assert all(r.ok for r in results)
    finally:
        await sp.stop(withdraw=False)  # no graceful restart: FRR drops everything at once
    await asyncio.to_thread(lab.wait_fib, NODE1, 0, timeout=30)
    return {"wide_500_s": statistics.median(wide), f"narrow_{NLRI_PER_LINE}_s": statistics.median(narrow)}


async def main_async(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"pods": args.pods, "bulk": args.bulk, "runs": args.runs}
    if "convergence" in args.phases:
        out["convergence"] = await convergence(lab, args.pods, args.gap)
        print(json.dumps({"convergence": out["convergence"]}, indent=2), flush=True)
    if "bulk" in args.phases:
        # no gc.freeze() here: no agent freezes its heap, so the speaker pays its collections here too
        sp_times, raw_times, memory = await bulk_speaker_and_raw(lab, args.bulk, args.runs)
        bird_times = await asyncio.to_thread(bulk_bird, lab, args.bulk, args.runs)

        def med(xs: list[float]) -> float:
            return round(statistics.median(xs), 3)

        out["bulk_restart_s"] = {
            "speaker": {"median": med(sp_times), "runs": [round(t, 3) for t in sp_times]},
            "raw_exabgp": {"median": med(raw_times), "runs": [round(t, 3) for t in raw_times]},
            "bird": {"median": med(bird_times), "runs": [round(t, 3) for t in bird_times]},
            "speaker_over_raw_exabgp": round(med(sp_times) / med(raw_times) - 1, 3),
        }
        out["memory_with_bulk_routes"] = memory
    if "lines" in args.phases:
        out["line_width_ack_s"] = await line_width(lab, 1000, args.runs)
        print(json.dumps({"line_width_ack_s": out["line_width_ack_s"]}, indent=2), flush=True)
    return out


def verdicts(result: dict[str, Any]) -> list[Comparison]:
    """The targets of issue 4 on the run's figures, each beside its reference from the same run."""
    out: list[Comparison] = []
    if "convergence" in result:
        ours, bird = result["convergence"]["speaker"], result["convergence"]["bird"]
        a, a_bird = ours["route_to_update_ms"], bird["route_to_update_ms"]
        b, b_bird = ours["route_to_router_fib_ms"], bird["route_to_router_fib_ms"]
        out += [
            Comparison("(a) host route -> UPDATE p50", a["p50"], "BIRD's", a_bird["p50"], "ms", at_most(2.0), 2),
            Comparison("(a) host route -> UPDATE p99", a["p99"], "BIRD's", a_bird["p99"], "ms", within(20.0, "ms"), 2),
            Comparison("(b) host route -> router FIB p50", b["p50"], "BIRD's", b_bird["p50"], "ms", within(5.0, "ms"), 2),
        ]  # fmt: skip
    if "bulk_restart_s" in result:
        bulk = result["bulk_restart_s"]
        speaker = bulk["speaker"]["median"]
        out += [
            Comparison(f"bulk restart, {result['bulk']} routes, median", speaker, "raw ExaBGP's",
                       bulk["raw_exabgp"]["median"], "s", at_most(1.2), 3),
            Comparison(f"bulk restart, {result['bulk']} routes, median", speaker, "BIRD's",
                       bulk["bird"]["median"], "s", None, 3),
        ]  # fmt: skip
    if "line_width_ack_s" in result:
        lines = result["line_width_ack_s"]
        out.append(
            Comparison(f"ack of 1000 prefixes in lines of {NLRI_PER_LINE}", lines[f"narrow_{NLRI_PER_LINE}_s"],
                       "in lines of 500", lines["wide_500_s"], "s", at_most(0.5), 3),
        )  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_bgp", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--bulk", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    # FRR batches its bestpath runs over ~50 ms: a wider gap keeps one sample from riding on another's
    parser.add_argument("--gap", type=float, default=0.15, help="seconds between two host routes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--phases", default="convergence,bulk,lines", help="comma-separated: convergence, bulk, lines"
    )
    args = parser.parse_args(argv)
    with build_lab() as lab:  # pyroute2's synchronous calls in lab.netns run outside the event loop
        result = asyncio.run(main_async(lab, args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    for comparison in verdicts(result):
        report(comparison)
    return 0


if __name__ == "__main__":
    sys.exit(main())
