"""End-to-end IPAM benchmark: fill the seed pool through ``IpamService.allocate``.

Applies ``configs/nginx-ippool-v4.yaml`` (25,602 IPs) with ``ipam.admin``, creates one Pod object per
IP (outside the timed loop), then allocates every IP through the service in one process, each ADD a
durable commit (record + SpiderEndpoint) in the embedded SQLite store.  Prints:

- allocations/s over the whole fill, beside the reference below (target: at least 0.5x it; 2,091 vs
  3,614/s, 0.58, on a quiet 2-core machine);
- the median time per allocation over the last 1,000 beside that over the first 1,000 (target
  ratio <= 1.5: the cost does not grow with the records);
- memory with the pool full: ru_maxrss of the process, and the tracemalloc peak of one DEL + ADD on a
  freshly opened store holding 25,602 records (the service's working set at that size);
- the tracemalloc peak of ONE allocation in a /8 pool (16.7 M addresses);
- the reference, measured in the same run in turns with the fill (500 allocations of one, then of
  the other, so that the machine's load hits both alike): the same number of claims straight
  through the store (usage -> lowest free -> commit of claim + endpoint), without pod reads,
  selection or the service's checks.

- beside the fill, in the same turns, the same fill in a block pool (the seed pool annotated
  ``spiderbgp.io/block-size``, ``--block-size``, default 26; one node, so it claims a block when its
  blocks are full), in a store of its own: allocations/s against the plain pool's (target: at least
  0.8x), and its growth.

Figures, references, ratios and targets print as ``bench.verdict`` lines.

``--profile N`` profiles N allocations with cProfile and prints where the time goes.

Run: ``.venv/bin/python -m bench.bench_ipam [--count N] [--fsync] [--profile N] [--block-size N] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.verdict import Comparison, at_least, at_most, report
from ipam import admin
from ipam.allocator import free_intervals, lowest_free
from ipam.blocks import BLOCK_SIZE_ANNOTATION
from ipam.kinds import SPIDER_API
from ipam.model import Endpoint, IPPool, NicAllocation
from ipam.ranges import IntervalSet, int_to_ip
from ipam.records import Claim, Obj
from ipam.service import AllocateRequest, IpamService, ReleaseRequest
from ipam.store.sqlite import SqliteStore

SEED_POOL = Path(__file__).resolve().parent.parent / "configs" / "nginx-ippool-v4.yaml"
NAMESPACE = "bench"
NODE = "node1"
WINDOW = 1000
CHUNK = 500  # allocations of the service, then of the reference, in turn


def _pod(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
        "status": {"phase": "Pending"},
    }


def _setup(store: SqliteStore, pool_doc: Path | None, pool_obj: Obj | None = None) -> str:
    """Cluster objects plus the pool; returns the pool name."""
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    store.create(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
    )
    if pool_doc is not None:
        docs = admin.load_documents(pool_doc.read_text(), source=str(pool_doc))
    else:
        assert pool_obj is not None
        docs = [pool_obj]
    for line in admin.apply_documents(store, docs):
        print(f"  {line}")
    return str(docs[0]["metadata"]["name"])


def _create_pods(store: SqliteStore, prefix: str, count: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i in range(count):
        obj = store.create(_pod(f"{prefix}-{i}"))
        out.append((obj["metadata"]["name"], obj["metadata"]["uid"]))
    return out


def _request(pool: str, name: str, uid: str) -> AllocateRequest:
    return AllocateRequest(
        container_id=f"ctr-{name}",
        nic="eth0",
        pod_namespace=NAMESPACE,
        pod_name=name,
        pod_uid=uid,
        default_v4_pools=(pool,),
    )


def _fill(service: IpamService, pool: str, pods: Sequence[tuple[str, str]]) -> list[float]:
    times: list[float] = []
    for name, uid in pods:
        began = time.perf_counter()
        service.allocate(_request(pool, name, uid))
        times.append(time.perf_counter() - began)
    return times


def _reference_fill(store: SqliteStore, pool_name: str, first: int, count: int) -> list[float]:
    """Claims ``first`` .. ``first + count - 1`` straight through the store, with the same commit
    (record + endpoint) as an ADD."""
    pool = IPPool.from_obj(store.get("SpiderIPPool", pool_name))
    free = free_intervals(pool, IntervalSet())
    times: list[float] = []
    for i in range(first, first + count):
        began = time.perf_counter()
        usage = store.usage(pool_name)
        value = lowest_free(free, usage.allocated)
        assert value is not None
        ip = int_to_ip(value, 4)
        name, uid = f"ref-{i}", f"uid-ref-{i}"
        endpoint = Endpoint(
            namespace=NAMESPACE,
            name=name,
            uid=uid,
            node=NODE,
            ips=(NicAllocation("eth0", ipv4=f"{ip}/{pool.prefix_len}", ipv4_pool=pool_name),),
            owner_controller_type="Pod",
            owner_controller_name=name,
        )
        store.commit(
            claims=[Claim(pool_name, usage.resource_version, ip, f"{NAMESPACE}/{name}", uid)],
            endpoint=endpoint.to_obj(),
        )
        times.append(time.perf_counter() - began)
    return times


def _interleaved(
    service: IpamService,
    pool: str,
    pods: Sequence[tuple[str, str]],
    ref_store: SqliteStore,
    ref_pool: str,
    blocks: tuple[IpamService, str, Sequence[tuple[str, str]]] | None = None,
) -> tuple[list[float], list[float], list[float]]:
    """The service's fill, the block pool's (``blocks``: its service, pool and pods, in a store of its
    own) and the reference's, ``CHUNK`` allocations of one then of the next, so that the shared
    machine's load hits them alike; returns (service times, reference times, block pool times)."""
    times: list[float] = []
    ref_times: list[float] = []
    block_times: list[float] = []
    for start in range(0, len(pods), CHUNK):
        chunk = pods[start : start + CHUNK]
        times += _fill(service, pool, chunk)
        if blocks is not None:
            block_times += _fill(blocks[0], blocks[1], blocks[2][start : start + CHUNK])
        ref_times += _reference_fill(ref_store, ref_pool, start, len(chunk))
    return times, ref_times, block_times


def _block_pool_doc(size: int) -> Obj:
    """The seed pool annotated ``spiderbgp.io/block-size``: its records go to node-affine blocks."""
    docs = admin.load_documents(SEED_POOL.read_text(), source=str(SEED_POOL))
    doc: Obj = dict(docs[0])
    doc["metadata"] = dict(doc["metadata"])
    doc["metadata"]["annotations"] = {
        **(doc["metadata"].get("annotations") or {}),
        BLOCK_SIZE_ANNOTATION: str(size),
    }
    return doc


def _growth(label: str, times: Sequence[float]) -> None:
    """The median time of the last window beside the first one's (medians: a stall of the shared
    machine lands in one window and would move its mean)."""
    window = min(WINDOW, len(times))
    last, first = statistics.median(times[-window:]) * 1e6, statistics.median(times[:window]) * 1e6
    report(Comparison(f"{label}, median of the last {window}", last, f"the first {window}", first,
                      "us", at_most(1.5)), "  ")  # fmt: skip


def _report(label: str, unit: str, times: Sequence[float]) -> float:
    total = sum(times)
    window = min(WINDOW, len(times))
    head = statistics.fmean(times[:window]) * 1e6
    tail = statistics.fmean(times[-window:]) * 1e6
    ordered = sorted(times)
    p50 = ordered[len(ordered) // 2] * 1e6
    p99 = ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] * 1e6
    rate = len(times) / total
    print(
        f"{label}: {len(times)} {unit} in {total:.2f} s = {rate:,.0f} {unit}/s "
        f"(p50 {p50:.0f} us, p99 {p99:.0f} us); mean first {window}: {head:.0f} us, "
        f"last {window}: {tail:.0f} us, ratio {tail / head:.2f}"
    )
    return rate


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _traced(action: Callable[[], object]) -> tuple[int, int]:
    """(current, peak) bytes tracemalloc saw during ``action``."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()


def _steady_state_memory(path: Path, pool: str, pods: Sequence[tuple[str, str]]) -> None:
    """One DEL + ADD on a freshly opened store whose pool holds every record (loads the pool's usage)."""
    name, uid = pods[-1]
    store = SqliteStore(path)
    try:
        service = IpamService(store, node_name=NODE)
        # CNI DEL of a pod that is gone: delete the pod object first, as the kubelet's API would
        store.delete("Pod", name, NAMESPACE)

        def cycle() -> None:
            service.release(ReleaseRequest(f"ctr-{name}", "eth0", NAMESPACE, name, uid))
            fresh = store.create(_pod(name))
            service.allocate(_request(pool, name, fresh["metadata"]["uid"]))

        current, peak = _traced(cycle)
        count = len(store.records(pool))
    finally:
        store.close()
    print(
        f"memory with {count} allocated: ru_maxrss {_maxrss_mib():.1f} MiB (whole process so far); "
        f"tracemalloc of one DEL + ADD on a freshly opened store: peak {peak / 1024:.0f} KiB, "
        f"kept {current / 1024:.0f} KiB"
    )


def _one_allocation_in_a_slash8(tmp: Path) -> None:
    store = SqliteStore(tmp / "slash8.db")
    try:
        pool_obj: Obj = {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": "big"},
            "spec": {"subnet": "10.0.0.0/8", "ips": ["10.0.0.1-10.255.255.254"]},
        }
        pool = _setup(store, None, pool_obj)
        (name, uid), *_ = _create_pods(store, "big", 2)
        service = IpamService(store, node_name=NODE)
        service.allocate(_request(pool, name, uid))  # warm imports and caches: measure the next one
        ((name, uid),) = _create_pods(store, "big-next", 1)
        current, peak = _traced(lambda: service.allocate(_request(pool, name, uid)))
        ips = {r.ip for r in store.records(pool)}
    finally:
        store.close()
    print(
        f"one allocation in a /8 pool (16,777,214 IPs, got {sorted(ips)}): tracemalloc peak "
        f"{peak / 1024:.0f} KiB, kept {current / 1024:.0f} KiB"
    )


def _profile(service: IpamService, pool: str, pods: Sequence[tuple[str, str]]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    _fill(service, pool, pods)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(20)
    print(f"cProfile of {len(pods)} allocations, by own time:")
    print("\n".join(out.getvalue().splitlines()[:50]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=0, help="allocations (default: the whole seed pool)")
    parser.add_argument("--fsync", action="store_true", help="synchronous=FULL (survives power loss)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile N allocations")
    parser.add_argument(
        "--block-size",
        type=int,
        default=26,
        metavar="N",
        help="block pool's prefix length (0: no block pool)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go (default: temp)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sbgp-bench-ipam-", dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "state.db"
        mode = "synchronous=FULL" if args.fsync else "synchronous=NORMAL (durable against process death)"
        print(f"SQLite store, WAL, {mode}; seed pool {SEED_POOL.name}")
        store = SqliteStore(path, fsync=args.fsync)
        try:
            pool = _setup(store, SEED_POOL)
            total = int(store.get("SpiderIPPool", pool)["status"]["totalIPCount"])
            count = min(args.count or total, total)
            began = time.perf_counter()
            pods = _create_pods(store, "pod", count)
            print(f"created {count} Pod objects in {time.perf_counter() - began:.2f} s (not timed below)")
            service = IpamService(store, node_name=NODE)
            if args.profile:
                # profile on a separate pool's worth of pods would change the pool; profile the head instead
                _profile(service, pool, pods[: args.profile])
                pods = pods[args.profile :]
            ref_store = SqliteStore(tmp / "reference.db", fsync=args.fsync)
            block_store = SqliteStore(tmp / "blocks.db", fsync=args.fsync)
            try:
                ref_pool = _setup(ref_store, SEED_POOL)
                blocks = None
                if args.block_size:
                    block_pool = _setup(block_store, None, _block_pool_doc(args.block_size))
                    block_pods = _create_pods(block_store, "pod", len(pods))
                    blocks = (IpamService(block_store, node_name=NODE), block_pool, block_pods)
                times, ref_times, block_times = _interleaved(service, pool, pods, ref_store, ref_pool, blocks)
                block_count = len(block_store.list("SpiderIPBlock", allocated_ips=False))
            finally:
                ref_store.close()
                block_store.close()
            print(
                f"in turns of {CHUNK}, the service, the service in a block pool (/{args.block_size}), "
                "then the reference (the store alone):"
            )
            rate = _report("IpamService.allocate", "allocations", times)
            ref_rate = _report("reference: store claims + endpoint", "claims", ref_times)
            report(Comparison("IPAM service fill", rate, "store alone (claims + endpoint)", ref_rate,
                              "allocations/s", at_least(0.5)), "  ")  # fmt: skip
            if block_times:
                block_rate = _report(f"block pool ({block_count} blocks)", "allocations", block_times)
                report(Comparison("IPAM service fill of a block pool", block_rate, "of the plain pool",
                                  rate, "allocations/s", at_least(0.8)), "  ")  # fmt: skip
                _growth("block pool", block_times)
            _growth("IpamService.allocate", times)
            _growth("store alone", ref_times)
        finally:
            store.close()
        _steady_state_memory(path, pool, pods)
        _one_allocation_in_a_slash8(tmp)


if __name__ == "__main__":
    main()
