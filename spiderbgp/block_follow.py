"""The allocation blocks affine to this node, kept current from store watch events (``bgp.advertise:
block``): every ``SpiderIPBlock`` (``spiderbgp.io/v1alpha1``, cluster-scoped, spec ``{pool, cidr,
node}``) whose ``spec.node`` is this node.  The announcer announces each as one prefix and blackholes it
in this node's kernel (``bgp_speaker.blocks``, ``bgp_speaker.blackholes``).

A malformed block is left out with a one-line warning naming it and the field; it never stops the
watch.  Each event costs O(1); the answer is the new set of blocks when it changed, else None.
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
        self._blocks: dict[str, str] = {}  # block name -> CIDR

    def blocks(self) -> frozenset[str]:
        return frozenset(self._blocks.values())

    def reset(self, objs: Iterable[Obj]) -> frozenset[str]:
        """Start over from a full list of SpiderIPBlocks; returns this node's blocks."""
        self._blocks = {}
        for obj in objs:
            cidr = affine_block(obj, self.node)
            if cidr is not None:
                self._blocks[_name(obj)] = cidr
        return self.blocks()

    def apply(self, events: Iterable[WatchEvent]) -> frozenset[str] | None:
        """Apply a batch of events (other kinds are ignored); the new set of blocks when it changed."""
        before = self.blocks()
        for event in events:
            if event.object.get("kind") != BLOCK_KIND:
                continue
            name = _name(event.object)
            cidr = None if event.type == "DELETED" else affine_block(event.object, self.node)
            if cidr is None:
                self._blocks.pop(name, None)
            else:
                self._blocks[name] = cidr
        after = self.blocks()
        return None if after == before else after
