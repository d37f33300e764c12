"""CNI benchmarks against the real node agent: plugin latency, agent throughput, agent memory.

The agent is the real one: ``spiderbgp agent`` started as its own process (IPAM only, no BGP, leader
election off) on a temp SQLite store, commits durable against process death (WAL, synchronous=NORMAL),
serving the CNI socket with IpamBackend over IpamService.  The bench process plays the cluster: it
applies the pool through admission and creates Namespace and Pod objects in the same store (as the
lab's kubelet stand-in does), and deletes a pod before its DEL so the DEL releases the IP (Spiderpool
keeps the IP of a live pod across sandboxes).

1. Latency, process start to exit, ``--rounds`` rounds: ``python -I -S -c pass`` (the interpreter our
   shebang names), our rendered ``spiderpool`` file doing an ADD, and the reference
   ``/usr/lib/cni/host-local`` ADD (temp dataDir).  Each ADD is followed by an untimed pod delete and
   DEL.  Beside them, one ADD over the socket from this process (the plugin's own HTTP code, no process
   start): the agent's part of the plugin's time.  p50/p99 side by side, ratios to the bare start;
   target: our p50 at most 5 ms above the bare interpreter's (+3.6 ms on a quiet 2-core machine).
2. Throughput: ``--clients`` concurrent clients (in this process, not the agent's: each a keep-alive
   connection on asyncio streams sending the plugin's requests and parsing answers with the plugin's
   code, or with ``--client aiohttp`` an aiohttp ClientSession) doing ``--pairs`` ADD+DEL pairs over the socket; each pair is ADD, the pod's delete
   in the store, DEL.  Pairs/s, the agent's CPU per pair, per-request p50/p99, a check that every
   DEL released its IP, and as the reference, measured in turns with the agent's (``--turn`` pairs of
   one, then of the other, 1,000 by default, so that the machine's load hits both alike; shorter turns
   cost the agent its ramp-up and drain each time), the same pairs straight through IpamService in
   this process (one thread, no socket): the ceiling of the IPAM path itself.  Target:
   the agent's pairs/s at least 0.7x the reference's (782 vs 944, 0.83, on a quiet 2-core machine).
3. Memory: the agent's resident set (VmRSS of the process serving the socket) idle after start-up and
   after ``--fill`` allocations (ADD only, the same clients; allocations/s printed too).

``--profile FILE`` runs the agent under cProfile, every thread with its own profiler counting that
thread's CPU time (so waiting for the GIL, a lock or the disk is not counted), merged at exit; the
top functions by cumulative and internal CPU time are printed after the run.

Run: ``.venv/bin/python -m bench.bench_cni [--rounds 500] [--pairs 5000] [--clients 32] [--fill 10000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.verdict import Comparison, at_least, report, within
from cni import wire
from cni.agent_client import Transport, parse_http_response, response_length
from ipam import admin
from ipam.service import AllocateRequest, IpamService, ReleaseRequest
from ipam.store.sqlite import SqliteStore
from spiderbgp.plugin_package import render_plugin_file

HOST_LOCAL = Path("/usr/lib/cni/host-local")
NODE = "bench-node"
NAMESPACE = "bench"
NETWORK = "bench"
POOL = """\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: bench}
spec:
  subnet: 10.200.0.0/16
  ips: [10.200.0.10-10.200.255.250]
  gateway: 10.200.0.1
  default: true
"""

# Runs the agent with every thread under one cProfile each; the stats are merged and dumped at exit.
PROFILED_AGENT = """\
import atexit, cProfile, pstats, sys, threading, time
profiles = []
_run = threading.Thread.run
def run(self):
    p = cProfile.Profile(time.thread_time)
    profiles.append(p)
    p.enable()
    try:
        _run(self)
    finally:
        p.disable()
threading.Thread.run = run
main = cProfile.Profile(time.thread_time)
def dump():
    main.disable()
    stats = pstats.Stats(main)
    for p in profiles:
        p.disable()
        stats.add(p)
    stats.dump_stats(sys.argv[1])
atexit.register(dump)
from spiderbgp.cli import main as cli
main.enable()
sys.exit(cli(sys.argv[2:]))
"""


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile in milliseconds (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Cluster:
    """The bench's view of the store: pods created before they are used, deleted before their DEL."""

    store: SqliteStore
    uids: dict[str, str] = field(default_factory=dict)

    def setup(self) -> None:
        list(admin.apply_documents(self.store, admin.load_documents(POOL, source="bench pool")))
        self.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})

    def create_pods(self, names: Sequence[str]) -> None:
        for name in names:
            obj = self.store.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "pause"}]},
                    "status": {"phase": "Running"},
                }
            )
            self.uids[name] = obj["metadata"]["uid"]

    def delete_pod(self, name: str) -> None:
        self.store.delete("Pod", name, NAMESPACE)


@contextmanager
def agent_process(work: Path, python: str, profile: Path | None) -> Iterator[subprocess.Popen[bytes]]:
    """``spiderbgp agent`` on ``work/state.db``; yields once its CNI socket answers /readyz."""
    sock = work / "run" / "agent.sock"
    config = {
        "nodeName": NODE,
        "store": str(work / "state.db"),
        "socketPath": str(sock),
        "healthAddress": f"127.0.0.1:{free_port()}",
        "log": {"level": "warning"},
        "ipam": {"leaderElection": {"enabled": False}},
    }
    (work / "agent.yaml").write_text(yaml.safe_dump(config))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__file__).parent.parent)}
    if profile is None:
        code = "import sys; from spiderbgp.cli import main; sys.exit(main(sys.argv[1:]))"
        argv = [python, "-c", code, "agent", "--config", str(work / "agent.yaml")]
    else:
        argv = [python, "-c", PROFILED_AGENT, str(profile), "agent", "--config", str(work / "agent.yaml")]
    log = (work / "agent.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not asyncio.run(_ready(sock)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent did not start: {(work / 'agent.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


async def _ready(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session,
            session.get(f"http://agent{wire.PATH_READYZ}") as resp,
        ):
            return resp.status == 200
    except aiohttp.ClientError:
        return False


# -- 1. plugin latency -------------------------------------------------------------------------------


def timed(argv: list[str], env: dict[str, str] | None, stdin: bytes) -> tuple[float, bytes]:
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"{argv[0]} failed (rc {proc.returncode}): {proc.stdout.decode()[:300]} {proc.stderr.decode()[:300]}"
        )
    return elapsed, proc.stdout


def cni_env(command: str, container: str, cni_path: str, pod: str = "", uid: str = "") -> dict[str, str]:
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod or container}"
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": "/var/run/netns/bench",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": cni_path,
        "CNI_ARGS": args + (f";K8S_POD_UID={uid}" if uid else ""),
    }


def latency(work: Path, python: str, cluster: Cluster, rounds: int) -> dict[str, list[float]]:
    plugin = work / "bin" / "spiderpool"
    plugin.parent.mkdir()
    plugin.write_text(render_plugin_file(python))
    plugin.chmod(0o755)
    sock = work / "run" / "agent.sock"
    ours = json.dumps({"cniVersion": "1.0.0", "name": NETWORK, "type": "ptp",
                       "ipam": {"type": "spiderpool", "ipam_unix_socket_path": str(sock)}}).encode()  # fmt: skip
    hl = json.dumps({"cniVersion": "1.0.0", "name": NETWORK, "type": "ptp",
                     "ipam": {"type": "host-local", "dataDir": str(work / "host-local"),
                              "ranges": [[{"subnet": "10.201.0.0/16", "gateway": "10.201.0.1"}]]}}).encode()  # fmt: skip
    names = [f"lat{i}" for i in range(rounds)]
    cluster.create_pods(names)
    cluster.create_pods([f"direct{i}" for i in range(rounds)])
    transport = Transport(str(sock), 30.0)
    samples: dict[str, list[float]] = {"bare": [], "spiderpool": [], "host-local": [], "socket": []}
    for i, name in enumerate(names):
        uid = cluster.uids[name]
        direct = f"direct{i}"
        add = wire.AddRequest(container_id=direct, if_name="eth0", netns="/var/run/netns/bench", pod_namespace=NAMESPACE,
                              pod_name=direct, pod_uid=cluster.uids[direct], network=NETWORK)  # fmt: skip
        start = time.perf_counter()
        status, _ = transport.request("POST", wire.PATH_ADD, add.to_json())
        samples["socket"].append(time.perf_counter() - start)
        if status != 200:
            raise SystemExit(f"direct ADD {direct}: HTTP {status}")
        samples["bare"].append(timed([python, "-I", "-S", "-c", "pass"], None, b"")[0])
        elapsed, out = timed([str(plugin)], cni_env("ADD", name, str(plugin.parent), uid=uid), ours)
        samples["spiderpool"].append(elapsed)
        if not json.loads(out)["ips"]:
            raise SystemExit(f"ADD {name}: no IP in {out!r}")
        cluster.delete_pod(name)
        timed([str(plugin)], cni_env("DEL", name, str(plugin.parent), uid=uid), ours)
        if HOST_LOCAL.exists():
            samples["host-local"].append(
                timed([str(HOST_LOCAL)], cni_env("ADD", name, "/usr/lib/cni"), hl)[0]
            )
            timed([str(HOST_LOCAL)], cni_env("DEL", name, "/usr/lib/cni"), hl)
    return samples


# -- 2. and 3. throughput over the socket ------------------------------------------------------------


@dataclass
class Load:
    add: list[float] = field(default_factory=list)
    delete: list[float] = field(default_factory=list)
    pod_delete: list[float] = field(default_factory=list)
    seconds: float = 0.0
    agent_cpu: float = 0.0  # CPU seconds the agent process used during the run
    client_cpu: float = 0.0  # CPU seconds this process (the clients) used
    errors: list[str] = field(default_factory=list)


class StreamClient:
    """One keep-alive HTTP/1.1 connection to the agent socket on asyncio streams, answers parsed with the
    plugin's own code: what the agent sees is the plugin's request, and the client costs a fraction of
    an aiohttp ClientSession's CPU (the two share the bench machine's cores with the agent)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str) -> None:
        self.reader, self.writer, self.where = reader, writer, where

    @classmethod
    async def connect(cls, sock: Path) -> StreamClient:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        return cls(reader, writer, str(sock))

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (path.encode(), len(payload))
            + payload
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = response_length(head)
        if length < 0:
            raise SystemExit(f"agent answer without Content-Length: {head[:200]!r}")
        data = head + await self.reader.readexactly(length - len(head))
        return parse_http_response(data, self.where)

    def close(self) -> None:
        self.writer.close()


class AiohttpClient:
    """The same over an aiohttp ClientSession (``--client aiohttp``)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.session.post(f"http://agent{path}", json=body) as resp:
            return resp.status, await resp.json()


async def drive(
    sock: Path,
    agent_pid: int,
    cluster: Cluster,
    names: Sequence[str],
    clients: int,
    *,
    release: bool,
    client: str = "stream",
) -> Load:
    """``clients`` workers, each on its own keep-alive connection, take the next pod name: ADD, and with
    ``release`` the pod's delete in the store (in a thread) and DEL."""
    load = Load()
    queue = iter(names)

    async def worker(conn: StreamClient | AiohttpClient) -> None:
        for name in queue:
            uid = cluster.uids[name]
            add = wire.AddRequest(container_id=name, if_name="eth0", netns="/var/run/netns/bench",
                                  pod_namespace=NAMESPACE, pod_name=name, pod_uid=uid, network=NETWORK)  # fmt: skip
            t0 = time.perf_counter()
            status, body = await conn.post(wire.PATH_ADD, add.to_json())
            t1 = time.perf_counter()
            load.add.append(t1 - t0)
            if status != 200:
                load.errors.append(f"ADD {name}: {status} {body}")
                continue
            if not release:
                continue
            await asyncio.to_thread(cluster.delete_pod, name)
            t2 = time.perf_counter()
            load.pod_delete.append(t2 - t1)
            dreq = wire.DelRequest(container_id=name, if_name="eth0", pod_namespace=NAMESPACE,
                                   pod_name=name, pod_uid=uid, network=NETWORK)  # fmt: skip
            status, body = await conn.post(wire.PATH_DEL, dreq.to_json())
            load.delete.append(time.perf_counter() - t2)
            if status != 200:
                load.errors.append(f"DEL {name}: {status} {body}")

    async def run(conns: Sequence[StreamClient | AiohttpClient]) -> None:
        cpu0, mine0, start = cpu_seconds(agent_pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(conn) for conn in conns))
        load.seconds = time.perf_counter() - start
        load.agent_cpu = cpu_seconds(agent_pid) - cpu0
        load.client_cpu = time.process_time() - mine0

    if client == "aiohttp":
        connector = aiohttp.UnixConnector(path=str(sock), limit=clients)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await run([AiohttpClient(session)] * clients)
        return load
    streams = [await StreamClient.connect(sock) for _ in range(clients)]
    try:
        await run(streams)
    finally:
        for stream in streams:
            stream.close()
    return load


@dataclass
class InProcess:
    """The reference: the same pairs straight through IpamService in this process, one thread, no
    socket, on a store file of its own: the ceiling the agent's IPAM path allows."""

    cluster: Cluster
    service: IpamService
    seconds: float = 0.0
    cpu: float = 0.0
    pairs: int = 0

    @classmethod
    def open(cls, path: Path) -> InProcess:
        cluster = Cluster(SqliteStore(path))
        cluster.setup()
        return cls(cluster, IpamService(cluster.store, node_name=NODE))

    def run(self, names: Sequence[str]) -> None:
        """ADD, the pod's delete, DEL for each name (pods created first, untimed)."""
        self.cluster.create_pods(names)
        cpu0, start = time.process_time(), time.perf_counter()
        for name in names:
            uid = self.cluster.uids[name]
            self.service.allocate(AllocateRequest(container_id=name, nic="eth0", pod_namespace=NAMESPACE,
                                                  pod_name=name, pod_uid=uid, network=NETWORK))  # fmt: skip
            self.cluster.delete_pod(name)
            released = self.service.release(ReleaseRequest(container_id=name, nic="eth0", pod_namespace=NAMESPACE,
                                                           pod_name=name, pod_uid=uid))  # fmt: skip
            if not released.records:
                raise SystemExit(f"reference DEL of {name} released nothing: {released.kept_reason}")
        self.seconds += time.perf_counter() - start
        self.cpu += time.process_time() - cpu0
        self.pairs += len(names)

    def close(self) -> None:
        self.cluster.store.close()


def merge(total: Load, part: Load) -> None:
    total.add += part.add
    total.delete += part.delete
    total.pod_delete += part.pod_delete
    total.seconds += part.seconds
    total.agent_cpu += part.agent_cpu
    total.client_cpu += part.client_cpu
    total.errors += part.errors


def create_pods_timed(cluster: Cluster, names: Sequence[str]) -> float:
    start = time.perf_counter()
    cluster.create_pods(names)
    return time.perf_counter() - start


# -- report -------------------------------------------------------------------------------------------


def print_latency(samples: dict[str, list[float]], rounds: int, python: str) -> None:
    bare50 = pct(samples["bare"], 0.5)
    print(f"1. CNI ADD latency, process start to exit, {rounds} rounds (interpreter {python})")
    print(f"   {'':28} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'p50/bare':>9}")
    labels = {"bare": "python -I -S -c pass", "spiderpool": "spiderpool ADD (ours)",
              "host-local": "host-local ADD (reference)", "socket": "agent ADD, socket only"}  # fmt: skip
    for key, values in samples.items():
        if values:
            p50, p99 = pct(values, 0.5), pct(values, 0.99)
            mean = statistics.fmean(values) * 1000
            print(f"   {labels[key]:28} {p50:8.2f} {p99:8.2f} {mean:8.2f} {p50 / bare50:9.2f}")
    ours = pct(samples["spiderpool"], 0.5)
    report(Comparison("plugin ADD p50", ours, "bare interpreter start p50", bare50, "ms",
                      within(5.0, "ms"), digits=2), "   ")  # fmt: skip
    print(f"   of which the agent's answer (socket only, p50) {pct(samples['socket'], 0.5):.2f} ms")
    if samples["host-local"]:
        report(Comparison("plugin ADD p50", ours, "host-local ADD p50 (Go, no agent)",
                          pct(samples["host-local"], 0.5), "ms", digits=2), "   ")  # fmt: skip


def print_load(title: str, load: Load, count: int, unit: str) -> None:
    rate = count / load.seconds
    print(title)
    print(f"   {count} {unit} in {load.seconds:.2f} s = {rate:,.0f} {unit}/s")
    print(
        f"   agent CPU {load.agent_cpu:.2f} s = {load.agent_cpu / load.seconds:.0%} of one core, "
        f"{load.agent_cpu / count * 1000:.2f} ms per {unit[:-1]}; clients' CPU {load.client_cpu:.2f} s"
    )
    for label, values in (("ADD", load.add), ("pod delete (store)", load.pod_delete), ("DEL", load.delete)):
        if values:
            print(f"   {label:20} p50 {pct(values, 0.5):7.2f} ms   p99 {pct(values, 0.99):7.2f} ms")
    if load.errors:
        print(f"   {len(load.errors)} errors, first: {load.errors[0]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500, help="plugin latency rounds (0: skip)")
    parser.add_argument("--pairs", type=int, default=5000, help="ADD+DEL pairs for throughput (0: skip)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--turn", type=int, default=1000, help="pairs over the socket, then in-process, in turns"
    )
    parser.add_argument("--fill", type=int, default=10_000, help="allocations held for the memory figure")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the plugin and the agent")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the agent into this file")
    parser.add_argument(
        "--client",
        choices=("stream", "aiohttp"),
        default="stream",
        help="throughput clients: keep-alive asyncio streams with the plugin's HTTP parsing, or aiohttp",
    )
    args = parser.parse_args()
    python = os.path.realpath(args.python)
    with tempfile.TemporaryDirectory(prefix="sbgp-bench-cni-") as tmp:
        work = Path(tmp)
        store = SqliteStore(work / "state.db")
        cluster = Cluster(store)
        cluster.setup()
        sock = work / "run" / "agent.sock"
        try:
            # the agent runs in the environment its dependencies are installed in (a venv's python is a
            # link: resolved, it would leave the venv); the plugin gets the resolved interpreter
            with agent_process(work, args.python, args.profile) as proc:
                idle = rss_mib(proc.pid)
                print(
                    f"agent pid {proc.pid}: spiderbgp agent, SQLite WAL synchronous=NORMAL (durable against process death)"
                )
                if args.rounds:
                    print_latency(latency(work, python, cluster, args.rounds), args.rounds, python)
                if args.pairs:
                    names = [f"pair{i}" for i in range(args.pairs)]
                    made = create_pods_timed(cluster, names)
                    load, reference = Load(), InProcess.open(work / "reference.db")
                    try:
                        for start in range(0, args.pairs, args.turn):
                            turn = names[start : start + args.turn]
                            merge(load, asyncio.run(drive(sock, proc.pid, cluster, turn, args.clients,
                                                          release=True, client=args.client)))  # fmt: skip
                            reference.run([f"ref{i}" for i in range(start, start + len(turn))])
                    finally:
                        reference.close()
                    print_load(f"2. agent throughput: {args.clients} {args.client} clients, ADD + pod delete + DEL per pair "
                               f"({args.pairs} pods created beforehand in {made:.1f} s)", load, args.pairs, "pairs")  # fmt: skip
                    left = sum(
                        1 for r in store.records("bench") if r.pod.partition("/")[2].startswith("pair")
                    )
                    print(f"   IPs of the pairs' pods still allocated after every DEL: {left} (expected 0)")
                    rate = reference.pairs / reference.seconds
                    print(f"   reference, IpamService alone (same pairs in-process, one thread, no socket, in "
                          f"turns of {args.turn} with the agent's): {rate:,.0f} pairs/s, "
                          f"{reference.cpu / reference.pairs * 1000:.2f} ms CPU per pair")  # fmt: skip
                    report(Comparison("agent ADD+DEL pairs over the socket", args.pairs / load.seconds,
                                      "IpamService alone in-process", rate, "pairs/s", at_least(0.7)),
                           "   ")  # fmt: skip
                after_pairs = rss_mib(proc.pid)
                if args.fill:
                    names = [f"fill{i}" for i in range(args.fill)]
                    create_pods_timed(cluster, names)
                    load = asyncio.run(
                        drive(sock, proc.pid, cluster, names, args.clients, release=False, client=args.client)
                    )
                    print_load(f"3. agent memory: {args.fill} allocations held ({args.clients} clients, ADD only)",
                               load, args.fill, "ADDs")  # fmt: skip
                    held = len(store.records("bench"))
                    full = rss_mib(proc.pid)
                    print(f"   agent RSS idle after start-up  {idle:7.1f} MiB")
                    print(f"   agent RSS after the pairs      {after_pairs:7.1f} MiB")
                    print(f"   agent RSS with {held:,} IPs held {full:7.1f} MiB  (+{full - idle:.1f} MiB, "
                          f"{(full - idle) * 1024 * 1024 / max(held, 1):,.0f} bytes per allocation)")  # fmt: skip
                else:
                    print(f"   agent RSS idle {idle:.1f} MiB, after the pairs {after_pairs:.1f} MiB")
        finally:
            store.close()
        if args.profile is not None:
            import pstats

            stats = pstats.Stats(str(args.profile))
            stats.sort_stats("cumulative").print_stats(35)
            stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
