"""Benchmark: pod churn on the seed lab, the figure the lab test's churn no longer asserts.

    .venv/bin/python -m bench.bench_churn [--cycles 20] [--pods 10] [--timeout 300]

Builds the seed lab (``lab/seed.clab.yml``) in namespaces ``sbgp-<token>-*``, applies the seed's pool
and nginx Deployment, scales it to 0, then runs ``--cycles`` cycles of ``scale nginx N`` and
``scale nginx 0``, each until the store settles (what ``tests/lab/test_lab.py``'s 200-cycle churn does
with 20 x 10 pods, bounded there only by a liveness timeout).  Prints the time of every cycle, the
total, the pods created and deleted per second, and checks what it measures: the lab's invariants
(every record owned by a running pod, the router's routes, the client's answers) hold at the end.

Reference and target (``bench.verdict``): the mean time of the last quarter of the cycles beside that
of the first quarter, at most 1.5x (churn leaves nothing behind that slows the next pods: records,
routes, sandboxes, the controller's queues).  Everything is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.verdict import Comparison, at_most, report
from ipam.store.sqlite import SqliteStore
from lab.build import REPO_ROOT, SEED_TOPOLOGY, Lab
from lab.invariants import check_invariants
from lab.netns import list_netns
from lab.verbs import apply_file, scale, wait_settled

CONFIGS = REPO_ROOT / "configs"
DEPLOYMENT = "nginx"


def settled(store: SqliteStore, timeout: float) -> None:
    failing = wait_settled(store, timeout=timeout)
    if failing:
        raise RuntimeError(f"pods that cannot run: {'; '.join(failing[:3])}")


def churn(store: SqliteStore, cycles: int, pods: int, timeout: float) -> list[float]:
    """Seconds each cycle (scale to ``pods``, settled; scale to 0, settled) took."""
    times: list[float] = []
    for i in range(cycles):
        began = time.monotonic()
        scale(store, DEPLOYMENT, pods)
        settled(store, timeout)
        scale(store, DEPLOYMENT, 0)
        settled(store, timeout)
        times.append(time.monotonic() - began)
        print(f"   cycle {i + 1:3d}: {times[-1]:6.2f} s", flush=True)
    return times


def run(cycles: int, pods: int, timeout: float, run_dir: Path) -> list[float]:
    lab = Lab.create(run_dir=run_dir, env={}, topology_file=SEED_TOPOLOGY)
    prefix = lab.sandbox.prefix
    store: SqliteStore | None = None
    try:
        began = time.monotonic()
        lab.up(timeout=120)
        print(f"   lab up in {time.monotonic() - began:.1f} s", flush=True)
        store = SqliteStore(lab.store_path)
        apply_file(store, CONFIGS / "nginx-ippool-v4.yaml")
        apply_file(store, CONFIGS / "nginx-deployment.yaml")
        scale(store, DEPLOYMENT, 0)
        settled(store, timeout)
        print(f"==> {cycles} cycles of scale {DEPLOYMENT} {pods} / 0", flush=True)
        times = churn(store, cycles, pods, timeout)
        scale(store, DEPLOYMENT, 2)
        settled(store, timeout)
        problems = check_invariants(lab, store, timeout=30)
        if problems:
            raise RuntimeError("invariants after the churn: " + "; ".join(problems[:5]))
        return times
    finally:
        if store is not None:
            store.close()
        lab.down()
        left = list_netns(prefix)
        if left:
            print(f"warning: namespaces left behind: {left[:3]}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_churn", description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--pods", type=int, default=10, help="pods per cycle")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for each scale to settle")
    args = parser.parse_args(argv)
    if args.cycles < 4 or args.pods < 1:
        parser.error("--cycles must be at least 4 (a first and a last quarter) and --pods at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-churn-") as tmp:
        try:
            times = run(args.cycles, args.pods, args.timeout, Path(tmp) / "run")
        except (TimeoutError, OSError, RuntimeError) as exc:
            print(f"bench_churn: {exc}", file=sys.stderr)
            return 1
    total = sum(times)
    print(
        f"{len(times)} cycles of {args.pods} pods: {total:.1f} s, {2 * args.pods * len(times) / total:.1f} "
        f"pods created or deleted per second, cycle p50 {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s; invariants hold"
    )
    quarter = len(times) // 4
    report(Comparison(f"mean cycle of the last {quarter}", statistics.fmean(times[-quarter:]),
                      f"the first {quarter}", statistics.fmean(times[:quarter]), "s", at_most(1.5), 2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
