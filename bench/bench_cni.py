"""CNI ADD latency through the installed plugin file, beside the bare interpreter and host-local.

Each round starts three processes in turn and times each from spawn to exit: the bare interpreter
(``python -I -S -c pass``, the same interpreter our shebang names), our rendered ``spiderpool`` file
doing an ADD against a real agent endpoint (``make_app`` + ``serve`` on a temp socket over the
embedded SQLite store), and the reference ``/usr/lib/cni/host-local`` ADD with a temp dataDir.  Each
ADD is followed by an untimed DEL.  Prints p50/p99 side by side with ratios to the bare start; the
target is our p50 within 5 ms of the bare interpreter's.

Until ``ipam.service.IpamService`` lands, the agent's backend is the test backend over the real store
(``tests.cni.backend.StoreBackend``): the same store commit per ADD, simpler pool selection.

Run: ``.venv/bin/python -m bench.bench_cni [--rounds 500] [--python /usr/bin/python3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cni.spiderpool import render_plugin_file
from ipam.sqlite_store import SqliteStore
from spiderbgp.cni_endpoint import make_app, serve, shutdown
from tests.cni.backend import StoreBackend, pool_object

HOST_LOCAL = Path("/usr/lib/cni/host-local")


def timed(argv: list[str], env: dict[str, str] | None, stdin: bytes) -> tuple[float, bytes]:
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"{argv[0]} failed (rc {proc.returncode}): {proc.stdout.decode()[:300]} {proc.stderr.decode()[:300]}"
        )
    return elapsed, proc.stdout


def cni_env(command: str, container: str, extra_path: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": "/var/run/netns/bench",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": extra_path,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container};K8S_POD_UID=uid-{container}",
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for the shebang and the bare start"
    )
    args = parser.parse_args()
    python = os.path.realpath(args.python)
    with tempfile.TemporaryDirectory(prefix="sbgp-bench-cni-") as tmp:
        work = Path(tmp)
        plugin = work / "bin" / "spiderpool"
        plugin.parent.mkdir()
        plugin.write_text(render_plugin_file(python))
        plugin.chmod(0o755)
        store = SqliteStore(work / "state.db")
        store.create(
            pool_object("bench", "10.200.0.0/16", ["10.200.0.10-10.200.255.250"], "10.200.0.1", default=True)
        )
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        sock = work / "run" / "agent.sock"
        runner = asyncio.run_coroutine_threadsafe(
            serve(make_app(StoreBackend(store)), str(sock)), loop
        ).result(10)
        ours_conf = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "ptp",
                                "ipam": {"type": "spiderpool", "ipam_unix_socket_path": str(sock)}}).encode()  # fmt: skip
        hl_conf = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "ptp",
                              "ipam": {"type": "host-local", "dataDir": str(work / "host-local"),
                                       "ranges": [[{"subnet": "10.201.0.0/16", "gateway": "10.201.0.1"}]]}}).encode()  # fmt: skip
        samples: dict[str, list[float]] = {"bare": [], "spiderpool": [], "host-local": []}
        try:
            for i in range(args.rounds):
                container = f"bench{i}"
                samples["bare"].append(timed([python, "-I", "-S", "-c", "pass"], None, b"")[0])
                elapsed, out = timed([str(plugin)], cni_env("ADD", container, str(plugin.parent)), ours_conf)
                samples["spiderpool"].append(elapsed)
                assert json.loads(out)["ips"], out
                timed([str(plugin)], cni_env("DEL", container, str(plugin.parent)), ours_conf)
                if HOST_LOCAL.exists():
                    samples["host-local"].append(
                        timed([str(HOST_LOCAL)], cni_env("ADD", container, "/usr/lib/cni"), hl_conf)[0]
                    )
                    timed([str(HOST_LOCAL)], cni_env("DEL", container, "/usr/lib/cni"), hl_conf)
        finally:
            asyncio.run_coroutine_threadsafe(shutdown(runner), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            store.close()
    bare50 = pct(samples["bare"], 0.5)
    print(f"CNI ADD latency, process start to exit, {args.rounds} rounds (interpreter {python})")
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'p50/bare':>9}")
    labels = {
        "bare": "python -I -S -c pass",
        "spiderpool": "spiderpool ADD (ours)",
        "host-local": "host-local ADD (reference)",
    }
    for key, values in samples.items():
        if values:
            p50, p99 = pct(values, 0.5), pct(values, 0.99)
            print(
                f"{labels[key]:28} {p50:8.2f} {p99:8.2f} {statistics.fmean(values) * 1000:8.2f} {p50 / bare50:9.2f}"
            )
    delta = pct(samples["spiderpool"], 0.5) - bare50
    print(
        f"spiderpool p50 - bare p50 = {delta:.2f} ms (target <= 5 ms: {'met' if delta <= 5 else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
