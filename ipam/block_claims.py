"""Block claims in the store (issue 15): the service's writes of ``SpiderIPBlock`` objects, through the
generic object API so both stores run the same code.

* :func:`claim_block` creates the block for a node.  Create-if-absent is the compare-and-swap that
  decides two nodes racing for one free block: the loser gets Conflict and the service retries with the
  block seen as claimed.
* :func:`list_blocks` reads every block without rendering its records (cheap).

The records of a block pool are the store's business (``ipam.store.protocol``, "Block pools"): each
lives in the SpiderIPBlock holding its address (Kubernetes: in the block's status; SQLite: a row of the
allocations table, rendered into the block's status on read), so no write here mirrors them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping

from ipam.blocks import (
    BLOCK_KIND,
    BLOCK_SIZE_ANNOTATION,
    Block,
    block_object,
    block_size_of,
    parse_block,
)
from ipam.errors import AlreadyExists, Conflict, Invalid, NotFound
from ipam.model import IPPool
from ipam.store.protocol import ObjectStore

__all__ = ["block_sizes", "claim_block", "list_blocks"]

LOG = logging.getLogger("spiderbgp.ipam.blocks")
_STATUS_TRIES = 8


def list_blocks(store: ObjectStore, cache: MutableMapping[str, Block] | None = None) -> list[Block]:
    """Every stored block, by pool and address; a malformed one (written around admission) is left
    out with a warning naming it and the field, so it cannot stop every allocation.

    ``cache`` (name -> Block, the caller's, kept between calls): a block whose resourceVersion is the
    one parsed last time is not parsed again (a node lists every block at each block claim; parsing
    311 CIDRs cost more than the rest of the claim)."""
    out: list[Block] = []
    seen: set[str] = set()
    for obj in store.list(BLOCK_KIND, allocated_ips=False):
        meta = obj.get("metadata") or {}
        name, version = str(meta.get("name") or ""), str(meta.get("resourceVersion") or "")
        known = cache.get(name) if cache is not None else None
        if known is not None and known.resource_version == version and version:
            block: Block | None = known
        else:
            try:
                block = parse_block(obj)
            except Invalid as exc:
                LOG.warning("%s (ignored)", exc)
                block = None
        if block is None:
            continue
        out.append(block)
        seen.add(name)
        if cache is not None:
            cache[name] = block
    if cache is not None:
        for gone in [n for n in cache if n not in seen]:
            cache.pop(gone, None)
    return sorted(out, key=lambda b: (b.pool, b.start))


def block_sizes(store: ObjectStore, pools: Iterable[str]) -> dict[str, tuple[int, int]]:
    """pool -> (IP family, block prefix length) of the block pools (``spiderbgp.io/block-size``) among
    ``pools`` as stored; for writers outside the service (the IP GC, ``ipam release``)."""
    out: dict[str, tuple[int, int]] = {}
    for name in set(pools):
        try:
            obj = store.get("SpiderIPPool", name, allocated_ips=False)
        except NotFound:
            continue
        if BLOCK_SIZE_ANNOTATION in ((obj.get("metadata") or {}).get("annotations") or {}):
            pool = IPPool.from_obj(obj)
            size = block_size_of(pool)
            if size is not None:
                out[name] = (pool.ip_version, size)
    return out


def claim_block(store: ObjectStore, pool: IPPool, start: int, size: int, node: str) -> Block:
    """Claim the /``size`` block at ``start`` of ``pool`` for ``node``.  Conflict when another node
    holds it (it claimed it first, or the caller's list was stale); the node's own earlier claim is
    returned as it is."""
    obj = block_object(pool, start, size, node)
    try:
        return parse_block(store.create(obj))
    except AlreadyExists:
        name = obj["metadata"]["name"]
        try:
            held = parse_block(store.get(BLOCK_KIND, name))
        except NotFound:
            raise Conflict(f'SpiderIPBlock "{name}": released while being claimed') from None
        if held.node == node:
            return held
        raise Conflict(f'SpiderIPBlock "{name}": claimed by node {held.node}') from None
