"""``advertise: block``: a node's announcements and blackhole routes from the allocation blocks affine
to it (``SpiderIPBlock`` objects whose ``spec.node`` is this node) and its own ready addresses.
Pure functions over frozen values; nothing here does I/O.

* each affine block is announced as one prefix (when the export policy allows it);
* every local address outside this node's blocks (a *borrowed* one: the pool's blocks were full, or
  a StatefulSet pod kept its address on another node) is announced as a /32 (/128);
* a node never announces a /32 for an address it does not hold, so an address of this node's block
  held elsewhere reaches its holder by the holder's /32 (longest-prefix match);
* each affine block gets a blackhole route in this node's kernel, so traffic for an unallocated
  address of the block stops here instead of bouncing back to the router (the pods' host routes are
  longer, so they still win).

The export policy is the one of the other modes: a block is announced only when it lies inside a pool
subnet (unknown pool subnets: nothing is announced), inside ``exportCIDRs`` when those are set (only
the parts inside them), and holds none of the node's own addresses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from bgp_speaker.config import IPAddress, IPNetwork
from bgp_speaker.routes import Refusal

__all__ = [
    "BlockRoutes",
    "block_lengths",
    "block_prefixes",
    "block_refusal",
    "block_routes",
    "borrowed_hosts",
    "covered",
]


@dataclass(frozen=True)
class BlockRoutes:
    """What a node announces in block mode, what it blackholes, and why blocks were left out."""

    prefixes: frozenset[IPNetwork]  # blocks (or their parts inside exportCIDRs) and borrowed /32s
    blocks: frozenset[IPNetwork]  # the affine blocks announced (before narrowing to exportCIDRs)
    borrowed: frozenset[IPNetwork]  # host prefixes of local addresses outside this node's blocks
    blackholes: frozenset[IPNetwork]  # every affine block, announced or not
    refused: tuple[Refusal, ...] = ()


def _inside(net: IPNetwork, space: IPNetwork) -> bool:
    return net.version == space.version and net.subnet_of(space)  # type: ignore[arg-type]


def block_refusal(
    block: IPNetwork,
    *,
    pool_subnets: Set[IPNetwork] | None,
    export_cidrs: Iterable[IPNetwork],
    node_addresses: Set[IPAddress],
) -> str | None:
    """Why ``block`` must not be announced, or None when it (or its part inside ``export_cidrs``) may."""
    if block.prefixlen == 0:
        return "is a default route"
    if pool_subnets is None:
        return "the pool subnets are not known yet"
    if not any(_inside(block, s) for s in pool_subnets if s.prefixlen > 0):
        return "outside every pool subnet"
    held = sorted(str(a) for a in node_addresses if a.version == block.version and a in block)
    if held:
        return f"holds this node's own address {held[0]}"
    cidrs = tuple(export_cidrs)
    if cidrs and not any(block.overlaps(c) for c in cidrs if c.version == block.version):
        return "outside bgp.exportCIDRs"
    return None


def _narrow(block: IPNetwork, cidrs: tuple[IPNetwork, ...]) -> list[IPNetwork]:
    """The parts of ``block`` inside ``cidrs`` (all of it without cidrs)."""
    if not cidrs:
        return [block]
    parts: list[IPNetwork] = []
    for c in cidrs:
        if c.version != block.version:
            continue
        if _inside(block, c):
            return [block]
        if _inside(c, block):
            parts.append(c)
    return parts


def block_lengths(blocks: Iterable[IPNetwork]) -> frozenset[tuple[int, int]]:
    """The (IP version, prefix length) pairs of ``blocks`` (a node's blocks share one or two)."""
    return frozenset((b.version, b.prefixlen) for b in blocks)


def covered(host: IPNetwork, blocks: Set[IPNetwork], lengths: Set[tuple[int, int]]) -> bool:
    """Whether the host prefix lies inside one of ``blocks``: one set lookup per block length in use,
    not a scan of every block."""
    return any(host.version == v and host.supernet(new_prefix=plen) in blocks for v, plen in lengths)


def borrowed_hosts(hosts: Iterable[IPNetwork], blocks: Set[IPNetwork]) -> frozenset[IPNetwork]:
    """The host prefixes outside every one of ``blocks``."""
    lengths = block_lengths(blocks)
    return frozenset(h for h in hosts if not covered(h, blocks, lengths))


def block_routes(
    blocks: Iterable[IPNetwork],
    hosts: Mapping[IPNetwork, IPNetwork] | Iterable[IPNetwork],
    *,
    pool_subnets: Set[IPNetwork] | None,
    export_cidrs: Iterable[IPNetwork] = (),
    node_addresses: Set[IPAddress] = frozenset(),
) -> BlockRoutes:
    """The routes of a node with affine ``blocks`` and the host prefixes ``hosts`` of its exportable,
    ready addresses (already through the export policy, as ``DesiredState`` keeps them)."""
    own = frozenset(blocks)
    return block_prefixes(
        own,
        borrowed_hosts(hosts, own),
        pool_subnets=pool_subnets,
        export_cidrs=export_cidrs,
        node_addresses=node_addresses,
    )


def block_prefixes(
    blocks: frozenset[IPNetwork],
    borrowed: frozenset[IPNetwork],
    *,
    pool_subnets: Set[IPNetwork] | None,
    export_cidrs: Iterable[IPNetwork] = (),
    node_addresses: Set[IPAddress] = frozenset(),
) -> BlockRoutes:
    """``block_routes`` with the borrowed host prefixes already known (``DesiredState`` keeps them
    current address by address, so a sync does not look at every address)."""
    own = blocks
    cidrs = tuple(export_cidrs)
    announced: set[IPNetwork] = set()
    prefixes: set[IPNetwork] = set()
    refused: list[Refusal] = []
    for block in sorted(own, key=lambda n: (n.version, int(n.network_address), n.prefixlen)):
        why = block_refusal(
            block, pool_subnets=pool_subnets, export_cidrs=cidrs, node_addresses=node_addresses
        )
        if why is not None:
            refused.append(Refusal(str(block), why))
            continue
        announced.add(block)
        prefixes.update(_narrow(block, cidrs))
    # an address of an own block the policy refused stays unannounced with its block: its host route
    # would otherwise be the only route into a block that is refused as a whole
    prefixes.update(borrowed)
    return BlockRoutes(
        prefixes=frozenset(prefixes),
        blocks=frozenset(announced),
        borrowed=borrowed,
        blackholes=own,
        refused=tuple(refused),
    )
