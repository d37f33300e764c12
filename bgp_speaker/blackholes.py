"""``advertise: block``: a blackhole route in this node's kernel for each allocation block affine to it,
so traffic the router sends for an unallocated address of the block stops here instead of going back
out by the default route (a loop until its TTL runs out).  The pods' host routes are longer, so they
still win; an address of the block borrowed by another node is routed by that node's /32 upstream.

The routes carry their own protocol number (``RTPROT_SPIDERBGP``) so the node agent recognises its own
ones and leaves every other route alone; a restarted agent takes over the routes it left behind.

``BlackholeRoutes`` is the seam; ``blackhole_changes`` the pure part; ``NetlinkBlackholes`` the real
one (pyroute2, in a named network namespace or the current one).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Set
from dataclasses import dataclass
from typing import Any, Protocol

from bgp_speaker.config import IPNetwork
from bgp_speaker.kernel import MAIN_TABLE

__all__ = [
    "RTPROT_SPIDERBGP",
    "BlackholeChanges",
    "BlackholeRoutes",
    "NetlinkBlackholes",
    "blackhole_changes",
]

LOG = logging.getLogger(__name__)

# a route protocol number of our own (iproute2's rt_protos: 0-4 the kernel's, 8-18 and 42 routing
# daemons, 186-192 FRR's); the agent never touches a route of another protocol
RTPROT_SPIDERBGP = 201
_RTN_BLACKHOLE = 6
_AF = {4: 2, 6: 10}


@dataclass(frozen=True)
class BlackholeChanges:
    add: tuple[IPNetwork, ...]
    remove: tuple[IPNetwork, ...]


def _order(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def blackhole_changes(current: Set[IPNetwork], wanted: Set[IPNetwork]) -> BlackholeChanges:
    """What brings the kernel's blackhole routes of ours from ``current`` to ``wanted``."""
    return BlackholeChanges(
        add=tuple(sorted(set(wanted) - set(current), key=_order)),
        remove=tuple(sorted(set(current) - set(wanted), key=_order)),
    )


class BlackholeRoutes(Protocol):
    """Keeps this node's blackhole routes equal to the given blocks."""

    def sync(self, blocks: Set[IPNetwork]) -> BlackholeChanges: ...


class NetlinkBlackholes:
    """Blackhole routes of protocol ``RTPROT_SPIDERBGP`` in the main table, through pyroute2."""

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns

    def _ipr(self) -> Any:
        from pyroute2 import IPRoute

        return IPRoute(**({} if self.netns is None else {"netns": self.netns}))

    def current(self) -> frozenset[IPNetwork]:
        """The blackhole routes of ours in the kernel now."""
        with self._ipr() as ipr:
            return frozenset(self._dump(ipr))

    def _dump(self, ipr: Any) -> set[IPNetwork]:
        found: set[IPNetwork] = set()
        for version, family in _AF.items():
            for msg in ipr.route("dump", family=family, table=MAIN_TABLE, proto=RTPROT_SPIDERBGP):
                if msg.get("proto") != RTPROT_SPIDERBGP or msg.get("type") != _RTN_BLACKHOLE:
                    continue
                dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
                found.add(ipaddress.ip_network(f"{dst}/{msg.get('dst_len')}"))
        return found

    def sync(self, blocks: Set[IPNetwork]) -> BlackholeChanges:
        """Add the missing blackhole routes and remove those of blocks no longer affine here; returns
        what was done (a block another route of the same prefix already covers is not added)."""
        from pyroute2.netlink.exceptions import NetlinkError

        added: list[IPNetwork] = []
        with self._ipr() as ipr:
            changes = blackhole_changes(self._dump(ipr), blocks)
            for net in changes.remove:
                ipr.route("del", dst=str(net), type="blackhole", proto=RTPROT_SPIDERBGP, table=MAIN_TABLE)
            for net in changes.add:
                try:
                    ipr.route("add", dst=str(net), type="blackhole", proto=RTPROT_SPIDERBGP, table=MAIN_TABLE)
                    added.append(net)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                    # someone else's route for the same prefix: theirs stays, and decides
                    LOG.warning(
                        "blackhole route for block %s not added: the kernel has another route for it", net
                    )
        done = BlackholeChanges(add=tuple(added), remove=changes.remove)
        if done.add or done.remove:
            LOG.info(
                "blackhole routes: added %s, removed %s",
                ", ".join(map(str, done.add)) or "none",
                ", ".join(map(str, done.remove)) or "none",
            )
        return done
