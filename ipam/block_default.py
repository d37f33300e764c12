"""The agent config's default block size (``ipam.blockSize``, issue 15), written onto the pools it applies to.

A SpiderIPPool becomes a block pool by its annotation ``spiderbgp.io/block-size`` (``ipam.blocks``).  With
a default configured for its IP family, a pool that has no annotation gets one at the first allocation
from it: the agent writes the default onto the pool (:func:`stamp_default_block_size`), so every reader
(the other agents, the leader, ``kubectl get sp -o yaml``) sees what the pool is, and agents configured
differently cannot treat one pool two ways: the first write wins and the others read it.  A pool
annotated ``"none"`` stays plain whatever the default; a pool that already holds allocations, or still
has SpiderIPBlocks, is left as it is (its block size can no longer change, as admission says), so the
default never turns a pool in use into a block pool.  With no default (the config's default) pools stay
plain: Spiderpool's behaviour.

A default shorter than a pool's subnet prefix would give blocks larger than the pool: that pool takes
its subnet's prefix length (the whole pool is one block), the size admission accepts for it.

:func:`default_annotation` is the decision (pure); :func:`stamp_default_block_size` the write, an
update conditional on the pool's resourceVersion, so an allocation or an edit that raced it wins
(Conflict: the caller re-reads the pool and decides again).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ipam.blocks import BLOCK_KIND, BLOCK_SIZE_ANNOTATION, block_size_problem
from ipam.errors import Invalid
from ipam.ranges import parse_cidr
from ipam.records import Obj
from ipam.store.protocol import ObjectStore

__all__ = ["BlockSizeDefaults", "default_annotation", "stamp_default_block_size"]

_POOL_KIND = "SpiderIPPool"


@dataclass(frozen=True)
class BlockSizeDefaults:
    """The block prefix length a pool without the annotation takes, per IP family; None: none (the
    pools of that family stay plain).  Bounded as the annotation (``blocks.block_size_problem``)."""

    ipv4: int | None = None
    ipv6: int | None = None

    def __post_init__(self) -> None:
        for family, size in ((4, self.ipv4), (6, self.ipv6)):
            problem = None if size is None else block_size_problem(family, size)
            if problem is not None:
                raise ValueError(f"ipv{family}: {problem}")

    def of(self, family: int) -> int | None:
        """The default for IP ``family`` (4 or 6), or None."""
        return self.ipv4 if family == 4 else self.ipv6


def default_annotation(
    pool_obj: Mapping[str, Any], defaults: BlockSizeDefaults, *, holds_allocations: bool, has_blocks: bool
) -> str | None:
    """The ``spiderbgp.io/block-size`` value to write onto a stored SpiderIPPool, or None to leave it:
    it is annotated already (a size or ``"none"``), terminating, there is no default for its family,
    or it holds allocations or has SpiderIPBlocks (its block size can no longer change).  The value
    is the family's default, or the subnet's prefix length when the default is shorter.  Invalid
    (naming the pool and ``spec.subnet``) when the subnet does not parse."""
    meta = pool_obj.get("metadata") or {}
    if BLOCK_SIZE_ANNOTATION in (meta.get("annotations") or {}) or meta.get("deletionTimestamp"):
        return None
    if holds_allocations or has_blocks:
        return None
    name = str(meta.get("name") or "")
    subnet = (pool_obj.get("spec") or {}).get("subnet")
    if not isinstance(subnet, str):
        raise Invalid(_POOL_KIND, name, "spec.subnet", "is required (a CIDR)")
    try:
        net = parse_cidr(subnet)
    except ValueError as exc:
        raise Invalid(_POOL_KIND, name, "spec.subnet", str(exc)) from None
    size = defaults.of(net.version)
    if size is None:
        return None
    return str(max(size, net.prefixlen))


def stamp_default_block_size(store: ObjectStore, pool_obj: Obj, defaults: BlockSizeDefaults) -> Obj:
    """Write the default block size onto ``pool_obj`` (a SpiderIPPool as read from ``store``) when
    :func:`default_annotation` says so, and return the pool as stored; else return ``pool_obj`` as it
    is, without writing.

    Whether the pool holds allocations is its ``status.allocatedIPCount``, which both stores derive
    from the records at the object's resourceVersion; the stored SpiderIPBlocks are listed only when
    the pool would be stamped.  The update carries ``pool_obj``'s resourceVersion: a plain pool's
    version moves with every claim and release, so a racing allocation, an edit or another agent's
    stamp makes it raise Conflict (the caller re-reads the pool and calls again)."""
    status = pool_obj.get("status") or {}
    held = int(status.get("allocatedIPCount") or 0) > 0
    if default_annotation(pool_obj, defaults, holds_allocations=held, has_blocks=False) is None:
        return pool_obj
    name = pool_obj["metadata"]["name"]
    if not pool_obj["metadata"].get("resourceVersion"):
        raise ValueError(f'{_POOL_KIND} "{name}": metadata.resourceVersion is required (the pool as read)')
    blocks = any(
        (b.get("spec") or {}).get("pool") == name for b in store.list(BLOCK_KIND, allocated_ips=False)
    )
    value = default_annotation(pool_obj, defaults, holds_allocations=held, has_blocks=blocks)
    if value is None:
        return pool_obj
    new = copy.deepcopy(pool_obj)
    meta = new["metadata"]
    meta["annotations"] = {**(meta.get("annotations") or {}), BLOCK_SIZE_ANNOTATION: value}
    return store.update(new)
