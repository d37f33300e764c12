"""Return of empty allocation blocks (leader only, issue 15): a SpiderIPBlock that has held no
allocation for a grace period is deleted, so the pool's blocks never leak to nodes that no longer
need them (calico#7987).  The decision is ``ipam.blocks.blocks_to_return``; the time a block was first
seen empty lives in this controller (a new leader starts the grace period afresh, which only delays).

The delete carries the block's resourceVersion, so a node that wrote the block's status since it was
read keeps it.  A node that commits an address in the block just before the delete keeps that address
as a borrowed one (announced as a /32 by its holder): the block, holding an allocation, is not claimed
again until it is empty."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ipam.block_claims import list_blocks
from ipam.blocks import BLOCK_KIND, blocks_to_return
from ipam.controllers.pool import ReconcileReport
from ipam.errors import NotFound
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
