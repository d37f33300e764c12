"""``advertise: block``'s kernel side: a blackhole route per affine block, in a namespace of the test's
own, added and removed as blocks come and go, while routes of other protocols are left alone."""

from __future__ import annotations

import ipaddress
import os
import subprocess

import pytest

from bgp_speaker.blackholes import NetlinkBlackholes, blackhole_changes
from bgp_speaker.kernel import RouteBatch, RouteTable
from lab.netns import Sandbox

N = ipaddress.ip_network
A = ipaddress.ip_address


def test_changes_are_the_two_differences_in_address_order() -> None:
    ch = blackhole_changes({N("10.244.0.64/26"), N("10.244.0.0/26")}, {N("10.244.0.0/26"), N("fd00::/122")})
    assert ch.add == (N("fd00::/122"),)
    assert ch.remove == (N("10.244.0.64/26"),)
    assert blackhole_changes(set(), set()).add == ()


def _ip_routes(ns: str, family: str) -> list[str]:
    out = subprocess.run(
        ["ip", family, "-n", ns, "route", "show", "type", "blackhole"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(
        line.split()[1] + " " + ("ours" if "proto 201" in line else "other") for line in out.splitlines()
    )


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_blackhole_routes_follow_the_blocks_in_a_namespace() -> None:
    with Sandbox() as sb:
        ns = sb.netns("bh")
        subprocess.run(["ip", "-n", ns.name, "route", "add", "blackhole", "10.99.0.0/24"], check=True)
        bh = NetlinkBlackholes(netns=ns.name)
        first = bh.sync({N("10.244.0.0/26"), N("10.244.0.64/26"), N("fd00:244::/122")})
        assert len(first.add) == 3 and first.remove == ()
        assert _ip_routes(ns.name, "-4") == [
            "10.244.0.0/26 ours",
            "10.244.0.64/26 ours",
            "10.99.0.0/24 other",
        ]
        assert _ip_routes(ns.name, "-6") == ["fd00:244::/122 ours"]
        # a restarted agent finds its own routes: nothing to do for the same blocks
        again = NetlinkBlackholes(netns=ns.name).sync(
            {N("10.244.0.0/26"), N("10.244.0.64/26"), N("fd00:244::/122")}
        )
        assert again.add == again.remove == ()
        gone = bh.sync({N("10.244.0.64/26")})
        assert gone.remove == (N("10.244.0.0/26"), N("fd00:244::/122"))
        assert _ip_routes(ns.name, "-4") == ["10.244.0.64/26 ours", "10.99.0.0/24 other"]
        assert _ip_routes(ns.name, "-6") == []
        assert bh.current() == {N("10.244.0.64/26")}
        # a block already routed by someone else's route stays theirs
        assert bh.sync({N("10.244.0.64/26"), N("10.99.0.0/24")}).add == ()
        assert bh.current() == {N("10.244.0.64/26")}
        bh.sync(set())
        assert _ip_routes(ns.name, "-4") == ["10.99.0.0/24 other"]


def test_a_blackholed_block_does_not_make_its_addresses_local() -> None:
    """The speaker's readiness: an address of a blackholed block is routed here only by its pod's host
    route (the longer one), never by the blackhole."""
    from bgp_speaker.kernel import RouteChange

    table = RouteTable()
    table.apply(
        RouteBatch(
            (
                RouteChange("add", N("10.244.0.0/26"), direct=False),
                RouteChange("add", N("10.244.0.5/32"), direct=True, oif=7),
            )
        )
    )
    assert table.is_local(A("10.244.0.5"))
    assert not table.is_local(A("10.244.0.6"))
