"""Store-level micro-benchmark of the embedded SQLite store.

Fills one SpiderIPPool sequentially, one commit per IP, with the loop the IPAM service runs
(usage -> lowest free -> commit(claim)), and prints claims per second and the mean time per claim of
the first and the last 1,000 claims (equal times = the cost does not grow with the records).  A second
fill writes a SpiderEndpoint in every commit, as a CNI ADD does.  Then it times reads of the full pool.

Reference, measured in the same run in turns with it (500 claims of one, then of the other, so that
the machine's load hits both alike), on the same disk: bare SQLite (``sqlite3``, WAL, the
same ``synchronous``), one transaction per claim inserting one row into a two-column-key table (and,
for the endpoint fill, the same endpoint as JSON into a second table): the floor of a durable commit
here.  Targets (``bench.verdict``): each fill at least 0.2x its bare-SQLite reference (0.24 and
0.30 measured on the 2-core build machine: the store's Python, not SQLite, is most of a claim), and
the median time per claim of the last 1,000 at most 1.5x that of the first 1,000 (the cost does not
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
from ipam.records import Claim, Obj
from ipam.store.sqlite import SqliteStore

FIRSTS = {"fill": ipaddress.ip_address("10.128.0.1"), "fill-ep": ipaddress.ip_address("10.160.0.1")}
WINDOW = 1000
CHUNK = 500  # claims of the store, then of bare SQLite, in turns


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


def fill(store: SqliteStore, name: str, start: int, count: int, *, with_endpoint: bool) -> list[float]:
    """Claims ``start`` .. ``start + count - 1`` of the pool ``name``; returns the seconds each took."""
    first = int(FIRSTS[name])
    times: list[float] = []
    for i in range(start, start + count):
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


def bare_sqlite(path: Path, *, fsync: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL" if fsync else "PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE claim (pool TEXT, ip TEXT, pod TEXT, uid TEXT, PRIMARY KEY (pool, ip))")
    conn.execute(
        "CREATE TABLE endpoint (namespace TEXT, name TEXT, body TEXT, PRIMARY KEY (namespace, name))"
    )
    return conn


def bare_fill(
    conn: sqlite3.Connection, name: str, start: int, count: int, *, with_endpoint: bool
) -> list[float]:
    """The reference: one transaction per claim in bare SQLite (WAL, same synchronous), inserting the
    claim's row (and the same endpoint object as JSON); returns the seconds each commit took."""
    first = int(FIRSTS[name])
    times: list[float] = []
    for i in range(start, start + count):
        began = time.perf_counter()
        ip = str(ipaddress.ip_address(first + i))
        pod, uid = f"{name}-{i}", f"uid-{name}-{i}"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO claim VALUES (?, ?, ?, ?)", (name, ip, f"bench/{pod}", uid))
        if with_endpoint:
            body = json.dumps(endpoint(pod, uid, ip, name), separators=(",", ":"))
            conn.execute("INSERT INTO endpoint VALUES (?, ?, ?)", ("bench", pod, body))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - began)
    return times


def in_turns(
    store: SqliteStore, conn: sqlite3.Connection, name: str, count: int, *, with_endpoint: bool
) -> tuple[list[float], list[float]]:
    """The store's fill and bare SQLite's, ``CHUNK`` claims of one then of the other, so that the
    shared machine's load hits both alike; returns (store times, bare times)."""
    store.create(pool(name, count))
    times: list[float] = []
    bare: list[float] = []
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        times += fill(store, name, start, n, with_endpoint=with_endpoint)
        bare += bare_fill(conn, name, start, n, with_endpoint=with_endpoint)
    return times, bare


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
    """The fill against bare SQLite, and its last window against its first (medians: a stall of the
    shared machine lands in one window and would move its mean)."""
    window = min(WINDOW, len(times))
    report(Comparison(f"store fill, {label}", rate(times), f"bare SQLite, {label}", rate(bare),
                      "claims/s", at_least(0.2)), "  ")  # fmt: skip
    report(Comparison(f"store fill, {label}, median per claim of the last {window}",
                      statistics.median(times[-window:]) * 1e6, f"the first {window}",
                      statistics.median(times[:window]) * 1e6, "us", at_most(1.5)), "  ")  # fmt: skip


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
            conn = bare_sqlite(Path(tmp) / "bare.db", fsync=args.fsync)
            try:
                print(f"in turns of {CHUNK} claims, the store then bare SQLite:")
                claims, bare = in_turns(store, conn, "fill", args.count, with_endpoint=False)
                show("claim only       ", claims)
                show("bare SQLite      ", bare)
                compare("claim only", claims, bare)
                claims, bare = in_turns(store, conn, "fill-ep", args.count, with_endpoint=True)
                show("claim + endpoint ", claims)
                show("bare SQLite + ep ", bare)
                compare("claim + endpoint", claims, bare)
            finally:
                conn.close()
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
