"""Return of empty allocation blocks and the counts of block pools (leader only, issue 15).

``collect``: a SpiderIPBlock that has held no allocation for a grace period is deleted, so the pool's
blocks never leak to nodes that no longer need them (calico#7987).  The decision is
``ipam.blocks.blocks_to_return``; the time a block was first seen empty lives in this controller (a new
leader starts the grace period afresh, which only delays).  The store refuses to delete a block that
holds a record, and the delete carries the resourceVersion read, so a node that allocates in the block
meanwhile keeps it (``ipam.store.protocol``, "Block pools", rule 5): that Conflict is the expected
outcome of the race, not an error, and the block's grace period starts again when it is next empty.

``counts``: a block pool's ``status.allocatedIPCount`` as stored, kept equal to the records in its
blocks (nodes write only the blocks)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ipam.block_claims import list_blocks
from ipam.blocks import BLOCK_KIND, blocks_to_return, is_block_pool
from ipam.controllers.pool import ReconcileReport
from ipam.errors import Conflict, NotFound
from ipam.store.protocol import Store

__all__ = ["DEFAULT_BLOCK_GRACE_SECONDS", "BlockReturn"]

LOG = logging.getLogger(__name__)
DEFAULT_BLOCK_GRACE_SECONDS = 300.0


class BlockReturn:
    def __init__(
        self, store: Store, *, clock: Callable[[], float], grace_seconds: float = DEFAULT_BLOCK_GRACE_SECONDS
    ) -> None:
        self.store = store
        self._clock = clock
        self._grace = grace_seconds
        self._empty_since: dict[str, float] = {}

    def collect(self) -> ReconcileReport:
        """One pass: note the blocks empty now, delete those empty for the grace period."""
        report = ReconcileReport()
        blocks = list_blocks(self.store)
        allocated: dict[str, Sequence[int]] = {}
        for pool in {b.pool for b in blocks}:
            try:
                allocated[pool] = self.store.usage(pool).allocated
            except NotFound:
                continue
        due, self._empty_since = blocks_to_return(
            blocks, allocated, self._empty_since, now=self._clock(), grace=self._grace
        )
        for block in due:
            with report.step():
                try:
                    self.store.delete(BLOCK_KIND, block.name, resource_version=block.resource_version)
                except Conflict as err:
                    # its node allocated in it since the read (the store refuses to delete a block
                    # holding records, and the delete carries the version read): it stays, not an error
                    self._empty_since.pop(block.name, None)
                    LOG.debug("block %s kept: %s", block.name, err)
                    continue
                report.deleted.append(f"SpiderIPBlock {block.name}")
                self._empty_since.pop(block.name, None)
                LOG.info(
                    "returned empty block %s (%s) of node %s to pool %s",
                    block.name,
                    block.cidr,
                    block.node,
                    block.pool,
                )
        report.log_errors(LOG, "block return")
        return report

    def counts(self) -> ReconcileReport:
        """One pass: each block pool's stored ``status.allocatedIPCount`` set to the records in its
        blocks where it differs.  A block pool's records live in its blocks, which nodes write without
        touching the pool, so the count ``kubectl get sp`` prints is the leader's to keep (SQLite
        derives it on read: nothing differs there).  The write carries the pool's resourceVersion; a
        write meanwhile wins, and the next pass looks again."""
        report = ReconcileReport()
        for obj in self.store.list("SpiderIPPool", allocated_ips=False):
            if not is_block_pool(obj):
                continue
            name = obj["metadata"]["name"]
            with report.step():
                count = len(self.store.usage(name).allocated)
                status = obj.get("status") or {}
                if status.get("allocatedIPCount") == count:
                    continue
                obj["status"] = {**status, "allocatedIPCount": count}
                self.store.update_status(obj)
                report.updated.append(f"SpiderIPPool {name}")
                LOG.debug(
                    "block pool %s: allocatedIPCount %s -> %d", name, status.get("allocatedIPCount"), count
                )
        report.log_errors(LOG, "block pool counts")
        return report
