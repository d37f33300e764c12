"""Block claims and block records in the store (issue 15): the service's writes of ``SpiderIPBlock``
objects, through the generic object API so both stores run the same code.

* :func:`claim_block` creates the block for a node.  Create-if-absent is the compare-and-swap that
  decides two nodes racing for one free block: the loser gets Conflict and the service retries with the
  block seen as claimed.
* :func:`record_in_blocks` keeps each block's ``status`` (``allocatedIPCount`` and Spiderpool's
  ``allocatedIPs`` for the addresses inside it, borrowed ones included) in step with the pool's
  records after a commit, with a resourceVersion precondition on every write.

The pool's records stay the truth (and ``SpiderIPPool.status`` keeps its counts for ``get sp``); a
block's status is written after the commit, so a crash in between leaves it one change behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from ipam.blocks import (
    BLOCK_KIND,
    BLOCK_SIZE_ANNOTATION,
    Block,
    block_name_of,
    block_object,
    block_size_of,
    parse_block,
)
from ipam.errors import AlreadyExists, Conflict, Invalid, IpamError, NotFound
from ipam.model import IPPool, PoolIPAllocation, decode_allocated_ips, encode_allocated_ips
from ipam.ranges import ip_to_int
from ipam.records import IPRecord
from ipam.store.protocol import ObjectStore

__all__ = ["block_sizes", "claim_block", "list_blocks", "record_in_blocks"]

LOG = logging.getLogger("spiderbgp.ipam.blocks")
_STATUS_TRIES = 8


def list_blocks(store: ObjectStore) -> list[Block]:
    """Every stored block, by pool and address; a malformed one (written around admission) is left
    out with a warning naming it and the field, so it cannot stop every allocation."""
    out: list[Block] = []
    for obj in store.list(BLOCK_KIND):
        try:
            out.append(parse_block(obj))
        except Invalid as exc:
            LOG.warning("%s (ignored)", exc)
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


def record_in_blocks(
    store: ObjectStore,
    sizes: Mapping[str, tuple[int, int]],
    *,
    added: Iterable[IPRecord] = (),
    removed: Iterable[IPRecord] = (),
) -> None:
    """Write ``added`` and ``removed`` records of the block pools in ``sizes`` (pool -> (IP family,
    block prefix length)) into the status of the block holding each address, found by its name (no
    block: nothing to write, e.g. an address borrowed from a block nobody claimed).  A removal applies
    only to the same pod UID, as a release does.  A block that keeps changing under the writes, or
    that the store fails to write, is left as it is, with a warning: the records are committed, and
    the caller's ADD or DEL must not fail for their mirror."""
    changes: dict[str, tuple[list[IPRecord], list[IPRecord]]] = {}
    for bucket, records in ((0, added), (1, removed)):
        for record in records:
            layout = sizes.get(record.pool)
            if layout is None:
                continue
            family, size = layout
            name = block_name_of(record.pool, ip_to_int(record.ip, family), family, size)
            changes.setdefault(name, ([], []))[bucket].append(record)
    for name, (plus, minus) in changes.items():
        try:
            _write_status(store, name, plus, minus)
        except IpamError as exc:  # the records are committed: the block's status is their mirror
            LOG.warning("SpiderIPBlock %s: status not written: %s", name, exc)


def _write_status(store: ObjectStore, name: str, plus: Sequence[IPRecord], minus: Sequence[IPRecord]) -> None:
    for _ in range(_STATUS_TRIES):
        try:
            obj = store.get(BLOCK_KIND, name)
        except NotFound:
            return
        status = obj.get("status") or {}
        current = decode_allocated_ips(status.get("allocatedIPs"))
        for record in minus:
            held = current.get(record.ip)
            if held is not None and held.pod_uid == record.pod_uid:
                del current[record.ip]
        for record in plus:
            current[record.ip] = PoolIPAllocation(pod=record.pod, pod_uid=record.pod_uid)
        new_status: dict[str, object] = {"allocatedIPCount": len(current)}
        text = encode_allocated_ips(current)
        if text is not None:
            new_status["allocatedIPs"] = text
        if new_status == {k: v for k, v in status.items() if k in ("allocatedIPCount", "allocatedIPs")}:
            return
        obj["status"] = new_status
        try:
            store.update_status(obj)
            return
        except Conflict:
            continue
        except NotFound:
            return
    LOG.warning("SpiderIPBlock %s: status kept changing under %d writes; left behind", name, _STATUS_TRIES)
