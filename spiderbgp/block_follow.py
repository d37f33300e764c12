"""The allocation blocks affine to this node, kept current from store watch events (``bgp.advertise:
block``): every ``SpiderIPBlock`` (``spiderbgp.io/v1alpha1``, cluster-scoped, spec ``{pool, cidr,
node}``) whose ``spec.node`` is this node.  The announcer announces each as one prefix and blackholes it
in this node's kernel (``bgp_speaker.blocks``, ``bgp_speaker.blackholes``).

A malformed block is left out with a one-line warning naming it and the field; it never stops the
watch.  Each event costs O(1): a block's records live in its status (``ipam.store.protocol``, "Block
pools"), so most of its events are status-only MODIFIED ones, and an event whose spec equals the one
last seen for that block is skipped before any parsing.  The answer is the new set of blocks when one
of this node's changed, else None.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping

from ipam.blocks import BLOCK_KIND, parse_block
from ipam.errors import IpamError
from ipam.records import Obj, WatchEvent

__all__ = ["BLOCK_KIND", "AffineBlocks", "affine_block"]

LOG = logging.getLogger("spiderbgp.block_follow")


def _name(obj: Mapping[str, object]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, Mapping) else ""


def affine_block(obj: Obj, node: str) -> str | None:
    """The CIDR of a SpiderIPBlock claimed by ``node`` (None: another node's, or malformed: logged)."""
    try:
        block = parse_block(obj)
    except IpamError as exc:
        LOG.warning("%s; ignored", exc)
        return None
    if block.node != node:
        return None
    return str(ipaddress.ip_network(block.cidr, strict=False))


class AffineBlocks:
    """Not thread-safe: one watcher thread owns it."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._blocks: dict[str, str] = {}  # block name -> CIDR (this node's)
        self._specs: dict[str, object] = {}  # block name -> spec last seen (every node's)

    def blocks(self) -> frozenset[str]:
        return frozenset(self._blocks.values())

    def reset(self, objs: Iterable[Obj]) -> frozenset[str]:
        """Start over from a full list of SpiderIPBlocks; returns this node's blocks."""
        self._blocks = {}
        self._specs = {}
        for obj in objs:
            name = _name(obj)
            self._specs[name] = obj.get("spec")
            cidr = affine_block(obj, self.node)
            if cidr is not None:
                self._blocks[name] = cidr
        return self.blocks()

    def apply(self, events: Iterable[WatchEvent]) -> frozenset[str] | None:
        """Apply a batch of events (other kinds are ignored); the new set of blocks when one of this
        node's blocks came, went or moved."""
        changed = False
        for event in events:
            obj = event.object
            if obj.get("kind") != BLOCK_KIND:
                continue
            name = _name(obj)
            if event.type == "DELETED":
                self._specs.pop(name, None)
                changed = self._blocks.pop(name, None) is not None or changed
                continue
            spec = obj.get("spec")
            if name in self._specs and self._specs[name] == spec:
                continue  # a status write (records come and go): nothing this node announces changed
            self._specs[name] = spec
            cidr = affine_block(obj, self.node)
            if cidr is None:
                changed = self._blocks.pop(name, None) is not None or changed
            elif self._blocks.get(name) != cidr:
                self._blocks[name] = cidr
                changed = True
        return self.blocks() if changed else None
