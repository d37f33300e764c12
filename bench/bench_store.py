"""Store-level micro-benchmark of the embedded SQLite store.

Fills one SpiderIPPool sequentially, one commit per IP, with the loop the IPAM service runs
(usage -> lowest free -> commit(claim)), and prints claims per second and the mean time per claim of
the first and the last 1,000 claims (equal times = the cost does not grow with the records).  A second
fill writes a SpiderEndpoint in every commit, as a CNI ADD does.  Then it times reads of the full pool.

Reference, measured beside it in the same run on the same disk: bare SQLite (``sqlite3``, WAL, the
same ``synchronous``), one transaction per claim inserting one row into a two-column-key table (and,
for the endpoint fill, the same endpoint as JSON into a second table): the floor of a durable commit
here.  Targets (``bench.verdict``): each fill at least 0.2x its bare-SQLite reference (0.24 and
0.30 measured on the 2-core build machine: the store's Python, not SQLite, is most of a claim), and
the mean time per claim of the last 1,000 at most 1.5x that of the first 1,000 (the cost does not
grow with the records).

Run: ``.venv/bin/python -m bench.bench_store [--count N] [--fsync] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.verdict import Comparison, at_least, at_most, report
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


def rate(times: Sequence[float]) -> float:
    return len(times) / sum(times)


def bare_sqlite_fill(path: Path, count: int, *, fsync: bool, with_endpoint: bool) -> list[float]:
    """The reference: one transaction per claim in bare SQLite (WAL, same synchronous), inserting the
    claim's row (and the same endpoint object as JSON); returns the seconds each commit took."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL" if fsync else "PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE claim (pool TEXT, ip TEXT, pod TEXT, uid TEXT, PRIMARY KEY (pool, ip))")
        conn.execute(
            "CREATE TABLE endpoint (namespace TEXT, name TEXT, body TEXT, PRIMARY KEY (namespace, name))"
        )
        first = int(FIRSTS["fill"])
        times: list[float] = []
        for i in range(count):
            began = time.perf_counter()
            ip = str(ipaddress.ip_address(first + i))
            pod, uid = f"bare-{i}", f"uid-bare-{i}"
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO claim VALUES (?, ?, ?, ?)", ("bare", ip, f"bench/{pod}", uid))
            if with_endpoint:
                body = json.dumps(endpoint(pod, uid, ip, "bare"), separators=(",", ":"))
                conn.execute("INSERT INTO endpoint VALUES (?, ?, ?)", ("bench", pod, body))
            conn.execute("COMMIT")
            times.append(time.perf_counter() - began)
        return times
    finally:
        conn.close()


def show(label: str, times: list[float]) -> None:
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


def compare(label: str, times: list[float], bare: list[float]) -> None:
    """The fill against bare SQLite, and its last window against its first."""
    window = min(WINDOW, len(times))
    report(Comparison(f"store fill, {label}", rate(times), f"bare SQLite, {label}", rate(bare),
                      "claims/s", at_least(0.2)), "  ")  # fmt: skip
    report(Comparison(f"store fill, {label}, mean per claim of the last {window}",
                      statistics.fmean(times[-window:]) * 1e6, f"the first {window}",
                      statistics.fmean(times[:window]) * 1e6, "us", at_most(1.5)), "  ")  # fmt: skip


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
            claims = fill(store, "fill", args.count, with_endpoint=False)
            bare = bare_sqlite_fill(Path(tmp) / "bare.db", args.count, fsync=args.fsync, with_endpoint=False)
            show("claim only       ", claims)
            show("bare SQLite      ", bare)
            compare("claim only", claims, bare)
            claims = fill(store, "fill-ep", args.count, with_endpoint=True)
            bare = bare_sqlite_fill(
                Path(tmp) / "bare-ep.db", args.count, fsync=args.fsync, with_endpoint=True
            )
            show("claim + endpoint ", claims)
            show("bare SQLite + ep ", bare)
            compare("claim + endpoint", claims, bare)
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
