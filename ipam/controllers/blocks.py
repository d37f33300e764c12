"""Return of empty allocation blocks and repair of block statuses (leader only, issue 15): a
SpiderIPBlock that has held no
allocation for a grace period is deleted, so the pool's blocks never leak to nodes that no longer
need them (calico#7987).  The decision is ``ipam.blocks.blocks_to_return``; the time a block was first
seen empty lives in this controller (a new leader starts the grace period afresh, which only delays).

The delete carries the block's resourceVersion, so a node that wrote the block's status since it was
read keeps it.  A node that commits an address in the block just before the delete keeps that address
as a borrowed one (announced as a /32 by its holder): the block, holding an allocation, is not claimed
again until it is empty.

``repair`` sets a block's status to the pool's records inside it where they differ: nodes write it
after their commits, so a node that stopped in between left it one change behind."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ipam.block_claims import list_blocks
from ipam.blocks import BLOCK_KIND, block_status, blocks_to_return, parse_block
from ipam.controllers.pool import ReconcileReport
from ipam.errors import NotFound
from ipam.ranges import family_of_cidr
from ipam.records import IPRecord
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
                self.store.delete(BLOCK_KIND, block.name, resource_version=block.resource_version)
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

    def repair(self) -> ReconcileReport:
        """One pass: every block's status set to the pool's records inside it where it differs (a
        node that stopped between its commit and the block's write left it behind).  The write
        carries the block's resourceVersion: a node writing meanwhile wins, and the next pass looks
        again."""
        report = ReconcileReport()
        records: dict[str, list[IPRecord]] = {}
        for obj in self.store.list(BLOCK_KIND):
            with report.step():
                block = parse_block(obj)
                if block.pool not in records:
                    records[block.pool] = self.store.records(block.pool)
                expected = block_status(block, records[block.pool], family_of_cidr(block.cidr))
                status = obj.get("status") or {}
                if {k: status[k] for k in ("allocatedIPCount", "allocatedIPs") if k in status} == expected:
                    continue
                obj["status"] = expected
                self.store.update_status(obj)
                report.updated.append(f"SpiderIPBlock {block.name}")
                LOG.info(
                    "block %s: status set to the pool's %d records in it",
                    block.name,
                    expected["allocatedIPCount"],
                )
        report.log_errors(LOG, "block status repair")
        return report
