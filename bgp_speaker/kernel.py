"""Kernel route readiness: a pod IP is announced only while this node's kernel delivers it locally.

The CNI plugins make that route: ``ptp`` adds ``<pod-ip> dev vethXXXX scope host``, ``bridge`` has
the bridge's connected subnet.  BIRD's kernel protocol learns Calico's routes the same way (netlink,
asynchronously).  An IP is *ready* when the longest-prefix match for it in the main table is a direct
route (unicast, an output interface, no gateway) more specific than a default route.  When the host
route goes away (pod deleted, veth gone) the match falls back to the default route via the router
and the IP stops being ready, so it is withdrawn.

``RouteTable`` is the pure part.  ``HostRouteSource`` is the seam: the speaker consumes batches of
``RouteChange`` from it.  ``NetlinkRouteSource`` is the real one (pyroute2, asyncio), optionally
inside a named network namespace.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bgp_speaker.config import IPAddress, IPNetwork

__all__ = [
    "MAIN_TABLE",
    "HostRouteSource",
    "NetlinkRouteSource",
    "RouteBatch",
    "RouteChange",
    "RouteTable",
    "RoutesByLink",
    "route_change_from_netlink",
    "source_address",
]

LOG = logging.getLogger(__name__)

MAIN_TABLE = 254
_RTN_UNICAST = 1
_AF_INET = 2
_AF_INET6 = 10


@dataclass(frozen=True)
class RouteChange:
    kind: Literal["add", "del"]
    dst: IPNetwork
    direct: bool  # unicast via an interface, no gateway: the node itself delivers it
    oif: int = 0
    gateway: str = ""
    metric: int = 0

    @property
    def entry(self) -> tuple[int, str, int]:
        """What tells apart several routes to the same destination."""
        return (self.oif, self.gateway, self.metric)


@dataclass(frozen=True)
class RouteBatch:
    """Changes to apply in order; with ``reset`` the table is replaced by the batch's adds."""

    changes: tuple[RouteChange, ...]
    reset: bool = False


class HostRouteSource(Protocol):
    """Yields a reset batch (the current table) first, then changes as they happen."""

    def watch(self) -> AsyncIterator[RouteBatch]: ...


class RouteTable:
    """The main table's routes by destination, and longest-prefix-match readiness."""

    def __init__(self) -> None:
        self._routes: dict[IPNetwork, dict[tuple[int, str, int], bool]] = {}
        # how many destinations of each prefix length per family, kept as routes come and go, so a
        # change costs the same with 10 routes as with 10,000 (lookups try only lengths in use)
        self._lengths: dict[int, Counter[int]] = {4: Counter(), 6: Counter()}
        self._order: dict[int, list[int]] = {4: [], 6: []}  # the lengths in use, longest first

    def __len__(self) -> int:
        return len(self._routes)

    def _count(self, net: IPNetwork, delta: int) -> None:
        lengths = self._lengths[net.version]
        n = lengths[net.prefixlen] + delta
        if n > 0:
            lengths[net.prefixlen] = n
        else:
            del lengths[net.prefixlen]
        if n <= 0 or (n == 1 and delta > 0):  # a length came into use or went out of use
            self._order[net.version] = sorted(lengths, reverse=True)

    def apply(self, batch: RouteBatch) -> set[IPNetwork]:
        """Apply a batch; returns the destinations whose entry changed."""
        touched: set[IPNetwork] = set()
        if batch.reset:
            touched.update(self._routes)
            self._routes.clear()
            self._lengths = {4: Counter(), 6: Counter()}
            self._order = {4: [], 6: []}
        for ch in batch.changes:
            entries = self._routes.get(ch.dst)
            if ch.kind == "add":
                if entries is None:
                    entries = self._routes[ch.dst] = {}
                    self._count(ch.dst, 1)
                if entries.get(ch.entry) != ch.direct:
                    entries[ch.entry] = ch.direct
                    touched.add(ch.dst)
            elif entries is not None and entries.pop(ch.entry, None) is not None:
                touched.add(ch.dst)
                if not entries:
                    del self._routes[ch.dst]
                    self._count(ch.dst, -1)
        if batch.reset:
            touched.update(self._routes)
        return touched

    def lookup(self, ip: IPAddress) -> tuple[IPNetwork, bool] | None:
        """The longest matching route for ``ip`` and whether it is direct."""
        for plen in self._order[ip.version]:
            net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
            entries = self._routes.get(net)
            if entries:
                return net, any(entries.values())
        return None

    def is_local(self, ip: IPAddress) -> bool:
        hit = self.lookup(ip)
        return hit is not None and hit[1] and hit[0].prefixlen > 0

    def ready(self, ips: Iterable[IPAddress]) -> set[IPAddress]:
        return {ip for ip in ips if self.is_local(ip)}


def route_change_from_netlink(msg: Mapping[str, Any]) -> RouteChange | None:
    """A RouteChange for a netlink route message of the main table, or None to ignore it."""
    event = msg.get("event")
    if event not in ("RTM_NEWROUTE", "RTM_DELROUTE"):
        return None
    attrs = dict(msg.get("attrs") or ())
    table = attrs.get("RTA_TABLE", msg.get("table"))
    if table != MAIN_TABLE:
        return None
    family = msg.get("family")
    plen = int(msg.get("dst_len", 0))
    dst = attrs.get("RTA_DST")
    if dst is None:
        dst = "0.0.0.0" if family == _AF_INET else "::"
    try:
        net = ipaddress.ip_network(f"{dst}/{plen}", strict=False)
    except ValueError:
        return None
    direct = (
        msg.get("type") == _RTN_UNICAST
        and "RTA_GATEWAY" not in attrs
        and "RTA_MULTIPATH" not in attrs
        and "RTA_VIA" not in attrs
        and "RTA_OIF" in attrs
    )
    oif = attrs.get("RTA_OIF")
    return RouteChange(
        "add" if event == "RTM_NEWROUTE" else "del",
        net,
        direct,
        oif=int(oif) if isinstance(oif, int) else 0,
        gateway=str(attrs.get("RTA_GATEWAY") or ""),
        metric=int(attrs.get("RTA_PRIORITY") or 0),
    )


class RoutesByLink:
    """The routes seen per output interface, so a deleted interface's routes can be deleted too: the
    kernel flushes the IPv4 routes of a deleted link WITHOUT an RTM_DELROUTE (IPv6 ones get one).
    Calico's plugin deletes a pod's veth on CNI DEL, and the next pod often gets the same address;
    without this its stale host route would make the new pod's address "ready" before its own host
    route exists."""

    def __init__(self) -> None:
        self._by_oif: dict[int, dict[tuple[IPNetwork, tuple[int, str, int]], RouteChange]] = {}

    def note(self, ch: RouteChange) -> None:
        if not ch.oif:
            return
        routes = self._by_oif.setdefault(ch.oif, {})
        if ch.kind == "add":
            routes[(ch.dst, ch.entry)] = ch
        else:
            routes.pop((ch.dst, ch.entry), None)
            if not routes:
                del self._by_oif[ch.oif]

    def gone(self, oif: int) -> list[RouteChange]:
        """The deletions for every route still known on the deleted interface ``oif``."""
        return [
            RouteChange("del", ch.dst, ch.direct, ch.oif, ch.gateway, ch.metric)
            for ch in self._by_oif.pop(oif, {}).values()
        ]


class NetlinkRouteSource:
    """Route changes from the kernel through pyroute2 (asyncio), in ``netns`` or the current namespace.
    A deleted interface yields the deletion of the routes it still had (see ``RoutesByLink``)."""

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns

    async def watch(self) -> AsyncGenerator[RouteBatch, None]:
        from pyroute2 import AsyncIPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK

        kwargs: dict[str, Any] = {} if self.netns is None else {"netns": self.netns}
        links = RoutesByLink()
        async with AsyncIPRoute(**kwargs) as ipr:
            await ipr.bind(groups=RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_LINK)
            snapshot: list[RouteChange] = []
            for family in (_AF_INET, _AF_INET6):
                async for msg in await ipr.route("dump", family=family, table=MAIN_TABLE):
                    msg_dict = _as_mapping(msg)
                    msg_dict["event"] = "RTM_NEWROUTE"
                    ch = route_change_from_netlink(msg_dict)
                    if ch is not None:
                        links.note(ch)
                        snapshot.append(ch)
            yield RouteBatch(tuple(snapshot), reset=True)
            while True:
                changes: list[RouteChange] = []
                async for msg in ipr.get():
                    if msg.get("event") == "RTM_DELLINK":
                        changes.extend(links.gone(int(msg.get("index") or 0)))
                        continue
                    ch = route_change_from_netlink(_as_mapping(msg))
                    if ch is not None:
                        links.note(ch)
                        changes.append(ch)
                if changes:
                    yield RouteBatch(tuple(changes))


def source_address(destination: IPAddress, *, netns: str | None = None) -> IPAddress | None:
    """The address the kernel would send from towards ``destination`` (``ip route get``'s ``src``), in
    ``netns`` or the current namespace; None when it has no route there."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    kwargs: dict[str, Any] = {} if netns is None else {"netns": netns}
    with IPRoute(**kwargs) as ipr:
        try:
            answers = ipr.route("get", dst=str(destination))
        except NetlinkError:
            return None
    for msg in answers:
        src = msg.get("RTA_PREFSRC")
        if src:
            return ipaddress.ip_address(src)
    return None


def _as_mapping(msg: Any) -> dict[str, Any]:
    return {
        "event": msg.get("event"),
        "family": msg.get("family"),
        "dst_len": msg.get("dst_len"),
        "type": msg.get("type"),
        "table": msg.get("table"),
        "attrs": [(name, value) for name in _ATTRS if (value := msg.get_attr(name)) is not None],
    }


_ATTRS = ("RTA_TABLE", "RTA_DST", "RTA_OIF", "RTA_GATEWAY", "RTA_MULTIPATH", "RTA_VIA", "RTA_PRIORITY")
