"""Node-affine allocation blocks (issue 15): the pure rules, no I/O.

A pool annotated ``spiderbgp.io/block-size: "26"`` (IPv6 e.g. ``"122"``) is cut into aligned CIDRs of
that size; a node claims a block by creating a ``SpiderIPBlock`` object (``spiderbgp.io/v1alpha1``,
cluster-scoped, owned by its pool) named after the pool and the CIDR, so two nodes racing for the same
free block are decided by the store's create-if-absent.  The allocator (:func:`pick`) then prefers:

1. the lowest free address of the node's own blocks (lowest block first);
2. when they are full, the lowest block nobody claimed that holds no allocation (the caller claims it);
3. when there is none, any free address (Spiderpool's lowest-free rule): a *borrowed* address.

The pool's own rules (``ips - excludeIPs - reserved``) decide what is free: a block is an aligned CIDR
intersected with the pool's usable addresses.  A pool without the annotation, or annotated ``"none"``
(a plain pool even where the agent config has a default block size, ``ipam.block_default``), never
reaches this module.

Block sizes are bounded as Calico bounds its blockSize: /20 to /32 for IPv4, /116 to /128 for IPv6, and
never shorter than the pool's subnet.  A block is one Kubernetes object holding its records, so one
block holds at most 4,096 addresses (:data:`BLOCK_SIZE_BOUNDS`, :func:`block_size_problem`).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ipam.allocator import lowest_free
from ipam.errors import Invalid
from ipam.model import IPPool, PoolIPAllocation, encode_allocated_ips
from ipam.ranges import IntervalSet, int_to_ip, ip_to_int, parse_cidr
from ipam.records import IPRecord, Obj

__all__ = [
    "BLOCK_API",
    "BLOCK_KIND",
    "BLOCK_SIZE_ANNOTATION",
    "BLOCK_SIZE_BOUNDS",
    "BLOCK_SIZE_NONE",
    "Block",
    "BlockPick",
    "block_cidr",
    "block_name",
    "block_name_of",
    "block_object",
    "block_size_changes",
    "block_size_of",
    "block_size_problem",
    "block_start",
    "block_status",
    "blocks_of_pool",
    "blocks_to_return",
    "is_block_pool",
    "own_blocks",
    "parse_block",
    "parse_block_size",
    "pick",
    "version_token",
]

BLOCK_SIZE_ANNOTATION = "spiderbgp.io/block-size"
BLOCK_SIZE_NONE = "none"  # the annotation value that keeps a pool plain whatever the agent's default
BLOCK_KIND = "SpiderIPBlock"
BLOCK_API = "spiderbgp.io/v1alpha1"
_POOL_API = "spiderpool.spidernet.io/v2beta1"
_MAX_BITS = {4: 32, 6: 128}
# family -> (shortest, longest) block prefix length, Calico's blockSize bounds: each block is one
# SpiderIPBlock holding the records of its addresses, so a block holds at most 2**12 = 4,096 addresses
BLOCK_SIZE_BOUNDS: Mapping[int, tuple[int, int]] = {4: (20, 32), 6: (116, 128)}
_NAME_MAX = 253


def block_size_problem(family: int, size: int, subnet_prefix: int | None = None) -> str | None:
    """Why ``/size`` cannot be the block size of a pool of IP ``family`` whose subnet has prefix length
    ``subnet_prefix`` (None: any subnet, as for the agent config's default), or None when it can: it
    must lie in :data:`BLOCK_SIZE_BOUNDS` and not be shorter than the subnet's prefix."""
    low, high = BLOCK_SIZE_BOUNDS[family]
    if subnet_prefix is not None and subnet_prefix > low:
        if not subnet_prefix <= size <= high:
            return f"/{size} must be between the subnet's /{subnet_prefix} and /{high} for IPv{family}"
        return None
    if not low <= size <= high:
        return (
            f"/{size} must be between /{low} and /{high} for IPv{family} (a block is one object "
            f"holding its records: at most {1 << (high - low):,} addresses)"
        )
    return None


def parse_block_size(pool: str, family: int, subnet_prefix: int, text: str) -> int:
    """The block prefix length an annotation value names; Invalid (one line naming the pool and the
    annotation) unless it is a decimal integer within :func:`block_size_problem`'s bounds.  The opt-out
    ``"none"`` is not a prefix length: :func:`block_size_of` handles it before calling this."""
    field = f"metadata.annotations.{BLOCK_SIZE_ANNOTATION}"
    if not text.isascii() or not text.isdigit():
        raise Invalid(
            "SpiderIPPool",
            pool,
            field,
            f'{text[:40]!r} is not a prefix length (e.g. "26") or "{BLOCK_SIZE_NONE}"',
        )
    size = int(text)
    problem = block_size_problem(family, size, subnet_prefix)
    if problem is not None:
        raise Invalid("SpiderIPPool", pool, field, problem)
    return size


def block_size_changes(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether a write of a SpiderIPPool adds, changes or removes its block-size annotation."""

    def value(o: Mapping[str, Any] | None) -> object:
        return (((o or {}).get("metadata") or {}).get("annotations") or {}).get(BLOCK_SIZE_ANNOTATION)

    return value(obj) != value(old)


def is_block_pool(obj: Mapping[str, Any]) -> bool:
    """Whether a stored SpiderIPPool carries a block size (not the "none" opt-out): its records are in
    its blocks."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(BLOCK_SIZE_ANNOTATION, BLOCK_SIZE_NONE) != BLOCK_SIZE_NONE)


def version_token(obj: Mapping[str, Any]) -> str:
    """What a claim in a block pool is conditional on: ``g<metadata.generation>`` (spec changes and the
    start of deletion bump it; record writes, which go to the blocks, do not)."""
    return f"g{int((obj.get('metadata') or {}).get('generation') or 1)}"


def block_size_of(pool: IPPool) -> int | None:
    """The pool's block prefix length, or None for a plain pool (no annotation)."""
    text = pool.annotations.get(BLOCK_SIZE_ANNOTATION)
    if text is None or text == BLOCK_SIZE_NONE:
        return None
    return parse_block_size(pool.name, pool.ip_version, pool.prefix_len, text)


def block_start(value: int, family: int, size: int) -> int:
    """The first address of the aligned /``size`` block holding ``value``."""
    span = 1 << (_MAX_BITS[family] - size)
    return value - value % span


def block_cidr(start: int, family: int, size: int) -> str:
    """The CIDR text of the /``size`` block at ``start``."""
    return f"{int_to_ip(start, family)}/{size}"


def block_name_of(pool: str, value: int, family: int, size: int) -> str:
    """The name of the block of ``pool`` that holds address ``value``, claimed or not."""
    return block_name(pool, block_cidr(block_start(value, family, size), family, size))


def block_name(pool: str, cidr: str) -> str:
    """A DNS-1123 subdomain naming the block ``cidr`` of ``pool``: ``<pool>-<cidr, separators as ->``
    (``pool1-10-0-0-64-26``); a name that would pass 253 characters keeps a hash of the whole."""
    tail = cidr.lower().replace(".", "-").replace(":", "-").replace("/", "-")
    name = f"{pool}-{tail}"
    if len(name) <= _NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    keep = _NAME_MAX - len(tail) - len(digest) - 2
    return f"{pool[:keep].rstrip('.-')}-{digest}-{tail}"


@dataclass(frozen=True)
class Block:
    """One claimed block, as stored."""

    name: str
    pool: str
    cidr: str
    node: str
    start: int
    end: int
    resource_version: str = ""


def parse_block(obj: Mapping[str, Any]) -> Block:
    """A stored SpiderIPBlock; Invalid naming the block and field when it is malformed."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise Invalid(BLOCK_KIND, name, "spec", "must be an object")
    values: dict[str, str] = {}
    for key in ("pool", "cidr", "node"):
        value = spec.get(key)
        if not isinstance(value, str) or not value:
            raise Invalid(BLOCK_KIND, name, f"spec.{key}", "must be a non-empty string")
        values[key] = value
    try:
        net = parse_cidr(values["cidr"])
    except ValueError as exc:
        raise Invalid(BLOCK_KIND, name, "spec.cidr", str(exc)) from None
    return Block(
        name=name,
        pool=values["pool"],
        cidr=values["cidr"],
        node=values["node"],
        start=int(net.first),
        end=int(net.last),
        resource_version=str(meta.get("resourceVersion") or ""),
    )


def blocks_of_pool(objs: Iterable[Mapping[str, Any]], pool: str) -> list[Block]:
    """The blocks of ``pool`` among stored SpiderIPBlocks, by address."""
    out = [b for b in map(parse_block, objs) if b.pool == pool]
    return sorted(out, key=lambda b: b.start)


def block_object(pool: IPPool, start: int, size: int, node: str) -> Obj:
    """A new SpiderIPBlock claiming the /``size`` block at ``start`` of ``pool`` for ``node``."""
    cidr = block_cidr(start, pool.ip_version, size)
    owner: dict[str, Any] = {
        "apiVersion": _POOL_API,
        "kind": "SpiderIPPool",
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }
    return {
        "apiVersion": BLOCK_API,
        "kind": BLOCK_KIND,
        "metadata": {"name": block_name(pool.name, cidr), "ownerReferences": [owner]},
        "spec": {"pool": pool.name, "cidr": cidr, "node": node},
        "status": {"allocatedIPCount": 0},
    }


def block_status(block: Block, records: Sequence[IPRecord], family: int) -> dict[str, Any]:
    """The status of ``block``: the pool's records whose address lies in it, in Spiderpool's
    ``allocatedIPs`` format (a borrowed address is recorded in the block that contains it)."""
    inside = {
        r.ip: PoolIPAllocation(pod=r.pod, pod_uid=r.pod_uid)
        for r in records
        if block.start <= ip_to_int(r.ip, family) <= block.end
    }
    status: dict[str, Any] = {"allocatedIPCount": len(inside)}
    text = encode_allocated_ips(inside)
    if text is not None:
        status["allocatedIPs"] = text
    return status


def blocks_to_return(
    blocks: Sequence[Block],
    allocated: Mapping[str, Sequence[int]],
    empty_since: Mapping[str, float],
    *,
    now: float,
    grace: float,
) -> tuple[list[Block], dict[str, float]]:
    """The blocks that have held no allocation for ``grace`` seconds (the leader deletes them, so blocks
    never leak, calico#7987), and the new ``empty_since`` (block name -> when it was first seen empty,
    for the blocks empty now).  ``allocated``: each pool's ascending allocated addresses; a block of a
    pool missing from it (deleted; the embedded store has no owner-reference GC) is empty."""
    due: list[Block] = []
    since: dict[str, float] = {}
    for block in blocks:
        values = allocated.get(block.pool, ())
        if _has_allocation(values, block.start, block.end):
            continue
        first = empty_since.get(block.name, now)
        since[block.name] = first
        if now - first >= grace:
            due.append(block)
    return due, since


@dataclass(frozen=True)
class BlockPick:
    """An address for a node: ``claim`` is the start of the block the node must claim first (None when
    the address is in one of its blocks, or borrowed); ``borrowed`` when it lies outside its blocks."""

    value: int
    claim: int | None
    borrowed: bool


def _has_allocation(allocated: Sequence[int], lo: int, hi: int) -> bool:
    i = bisect_left(allocated, lo)
    return i < len(allocated) and allocated[i] <= hi


def own_blocks(claimed: Mapping[int, str], node: str, *, family: int, size: int) -> IntervalSet:
    """The union of ``node``'s claimed blocks (adjacent blocks joined), for :func:`pick`; a caller that
    picks many times from one claimed map computes it once."""
    span = 1 << (_MAX_BITS[family] - size)
    runs: list[tuple[int, int]] = []  # joined here: IntervalSet.of's general merge cost 3x as much
    for start in sorted(s for s, n in claimed.items() if n == node):
        if runs and start == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], start + span - 1)
        else:
            runs.append((start, start + span - 1))
    return IntervalSet(tuple(runs))


def pick(
    free: IntervalSet,
    allocated: Sequence[int],
    claimed: Mapping[int, str],
    node: str,
    *,
    family: int,
    size: int,
    own: IntervalSet | None = None,
) -> BlockPick | None:
    """The address ``node`` takes from a block pool, or None when nothing is free.

    ``free``: the pool's usable addresses (ips - excludeIPs - reserved); ``allocated``: ascending,
    without duplicates; ``claimed``: block start -> node of every claimed block of the pool.  Cost:
    O((own blocks + claimed blocks + allocations in skipped blocks) * log) - a skipped block holds a
    claim or an allocation, so the walk never visits an empty unclaimed block it does not return.
    ``own``: ``own_blocks(claimed, node, ...)`` when the caller has it."""
    span = 1 << (_MAX_BITS[family] - size)
    # the lowest free address of the node's blocks is in the lowest of them with room: one search over
    # their union (adjacent blocks join into one interval) instead of one per block from the lowest
    if own is None:
        own = own_blocks(claimed, node, family=family, size=size)
    if own:
        value = lowest_free(free & own, allocated)
        if value is not None:
            return BlockPick(value, None, False)
    after = 0  # the first block start not yet examined (intervals are ascending, so blocks are too)
    for lo, hi in free.intervals:
        start = max(block_start(lo, family, size), after)
        while start <= hi:
            after = start + span
            end = start + span - 1
            if start not in claimed and not _has_allocation(allocated, start, end):
                first = max(start, lo)
                if first <= min(end, hi):
                    return BlockPick(first, start, False)
            start += span
    value = lowest_free(free, allocated)
    if value is None:
        return None
    return BlockPick(value, None, True)
