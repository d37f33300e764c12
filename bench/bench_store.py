"""Store-level micro-benchmark of the embedded SQLite store.

Fills one SpiderIPPool sequentially, one commit per IP, with the loop the IPAM service runs
(usage -> lowest free -> commit(claim)), and prints claims per second and the mean time per claim of
the first and the last 1,000 claims (equal times = the cost does not grow with the records).  A second
fill writes a SpiderEndpoint in every commit, as a CNI ADD does.  Then it times reads of the full pool.

Run: ``.venv/bin/python -m bench.bench_store [--count N] [--fsync] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ipam.sqlite_store import SqliteStore
from ipam.store import Claim, Obj

FIRSTS = {"fill": ipaddress.ip_address("10.128.0.1"), "fill-ep": ipaddress.ip_address("10.160.0.1")}
WINDOW = 1000


def lowest_free(allocated: Sequence[int], first: int) -> int:
    """The lowest address >= first that is not allocated, in O(log n): binary search for the first
    index where the allocated run starting at ``first`` has a gap."""
    lo, hi = 0, len(allocated)
    while lo < hi:
        mid = (lo + hi) // 2
        if allocated[mid] == first + mid:
            lo = mid + 1
        else:
            hi = mid
    return first + lo


def pool(name: str, count: int) -> Obj:
    first = FIRSTS[name]
    last = ipaddress.ip_address(int(first) + count - 1)
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": "10.128.0.0/9", "ips": [f"{first}-{last}"]},
    }


def endpoint(name: str, uid: str, ip: str, pool_name: str) -> Obj:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderEndpoint",
        "metadata": {"name": name, "namespace": "bench"},
        "status": {
            "current": {
                "uid": uid,
                "node": "node1",
                "ips": [{"interface": "eth0", "ipv4": f"{ip}/9", "ipv4Pool": pool_name}],
            }
        },
    }


def fill(store: SqliteStore, name: str, count: int, *, with_endpoint: bool) -> list[float]:
    """Allocate every IP of a fresh pool; returns the seconds each claim took."""
    store.create(pool(name, count))
    first = int(FIRSTS[name])
    times: list[float] = []
    for i in range(count):
        began = time.perf_counter()
        usage = store.usage(name)
        ip = str(ipaddress.ip_address(lowest_free(usage.allocated, first)))
        pod, uid = f"{name}-{i}", f"uid-{name}-{i}"
        store.commit(
            claims=[Claim(name, usage.resource_version, ip, f"bench/{pod}", uid)],
            endpoint=endpoint(pod, uid, ip, name) if with_endpoint else None,
        )
        times.append(time.perf_counter() - began)
    return times


def report(label: str, times: list[float]) -> None:
    total = sum(times)
    window = min(WINDOW, len(times))
    head = statistics.fmean(times[:window]) * 1e6
    tail = statistics.fmean(times[-window:]) * 1e6
    ordered = sorted(times)
    p50 = ordered[len(ordered) // 2] * 1e6
    p99 = ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] * 1e6
    print(
        f"{label}: {len(times)} claims in {total:.2f}s = {len(times) / total:,.0f} claims/s "
        f"(p50 {p50:.0f} us, p99 {p99:.0f} us); mean per claim: first {window} {head:.0f} us, "
        f"last {window} {tail:.0f} us (x{tail / head:.2f})"
    )


def timed(label: str, action: Callable[[], object]) -> None:
    began = time.perf_counter()
    action()
    print(f"{label}: {(time.perf_counter() - began) * 1e3:.1f} ms")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=25_602, help="IPs per fill (default: 25602)")
    parser.add_argument("--fsync", action="store_true", help="synchronous=FULL (survives power loss)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to put the database (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sbgp-bench-", dir=args.dir) as tmp:
        store = SqliteStore(Path(tmp) / "state.db", fsync=args.fsync)
        try:
            mode = "synchronous=FULL" if args.fsync else "synchronous=NORMAL"
            print(f"SQLite store, WAL, {mode}, sequential fill, one commit per claim")
            report("claim only       ", fill(store, "fill", args.count, with_endpoint=False))
            report("claim + endpoint ", fill(store, "fill-ep", args.count, with_endpoint=True))
            timed(
                f"get pool with {args.count} records (renders allocatedIPs)",
                lambda: store.get("SpiderIPPool", "fill"),
            )
            timed("get the same, unchanged pool again", lambda: store.get("SpiderIPPool", "fill"))
            timed("list both pools (unchanged)", lambda: store.list("SpiderIPPool"))
            timed("usage() of that pool, cached", lambda: store.usage("fill"))
            timed("records() of that pool", lambda: store.records("fill"))
            fresh = SqliteStore(Path(tmp) / "state.db")
            try:
                timed("usage() in a new process-like instance (full load)", lambda: fresh.usage("fill"))
            finally:
                fresh.close()
        finally:
            store.close()


if __name__ == "__main__":
    main()
