"""Peer status from events and the status table; kernel route readiness (pure table and netlink)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp_speaker.commands import StateEvent
from bgp_speaker.kernel import (
    NetlinkRouteSource,
    RouteBatch,
    RouteChange,
    RouteTable,
    route_change_from_netlink,
)
from bgp_speaker.status import PeerStatus, apply_event, format_status_table, initial_status
from lab.netns import Sandbox

T0 = dt.datetime(2026, 11, 26, 13, 0, 0, tzinfo=dt.UTC)
N = ipaddress.ip_network
A = ipaddress.ip_address


def test_status_follows_neighbor_events() -> None:
    st0 = initial_status("172.16.13.1", local_as=64512, peer_as=23000, now=T0)
    assert (st0.peer_type, st0.state, st0.info) == ("eBGP", "start", "Idle")
    t1 = T0 + dt.timedelta(seconds=5)
    st1 = apply_event(st0, StateEvent("172.16.13.1", "connected"), now=t1)
    assert (st1.state, st1.info, st1.since) == ("start", "OpenSent", T0)
    st2 = apply_event(st1, StateEvent("172.16.13.1", "up"), now=t1)
    assert (st2.state, st2.info, st2.since, st2.established) == ("up", "Established", t1, True)
    t2 = t1 + dt.timedelta(seconds=60)
    st3 = apply_event(st2, StateEvent("172.16.13.1", "down", reason="notification received (6,4)"), now=t2)
    assert (st3.state, st3.info, st3.since) == ("start", "Active (notification received (6,4))", t2)
    assert initial_status("10.0.0.1", local_as=1, peer_as=1, now=T0).peer_type == "iBGP"


def test_status_table_looks_like_calicoctl() -> None:
    st = apply_event(
        initial_status("172.16.13.1", local_as=64512, peer_as=23000, now=T0),
        StateEvent("172.16.13.1", "up"),
        now=T0,
    )
    table = format_status_table([st]).splitlines()
    assert table[0] == "spiderbgp BGP speaker (ExaBGP) is running."
    assert table[3].startswith("+--")
    assert [c.strip() for c in table[4].split("|")[1:-1]] == [
        "PEER ADDRESS",
        "PEER TYPE",
        "STATE",
        "SINCE",
        "INFO",
    ]
    cells = [c.strip() for c in table[6].split("|")[1:-1]]
    assert cells[:3] == ["172.16.13.1", "eBGP", "up"] and cells[4] == "Established"
    assert len(cells[3]) == 8  # HH:MM:SS in local time
    assert st.as_dict()["since"] == "2026-11-26T13:00:00+00:00"
    assert PeerStatus.from_dict(st.as_dict()) == st


def test_route_table_longest_match() -> None:
    t = RouteTable()
    t.apply(
        RouteBatch(
            (
                RouteChange("add", N("0.0.0.0/0"), direct=False, gateway="172.16.13.1"),
                RouteChange("add", N("172.16.13.0/24"), direct=True, oif=2),
                RouteChange("add", N("10.244.1.5/32"), direct=True, oif=7),
                RouteChange("add", N("10.244.1.0/24"), direct=False, gateway="172.16.13.99"),
            ),
            reset=True,
        )
    )
    assert t.is_local(A("10.244.1.5"))
    assert not t.is_local(A("10.244.1.6"))  # matches the /24 via a gateway
    assert not t.is_local(A("8.8.8.8"))  # default route
    touched = t.apply(RouteBatch((RouteChange("del", N("10.244.1.5/32"), direct=True, oif=7),)))
    assert touched == {N("10.244.1.5/32")} and not t.is_local(A("10.244.1.5"))
    # two routes to one destination: removing one keeps the other
    t.apply(
        RouteBatch(
            (
                RouteChange("add", N("10.9.0.1/32"), True, oif=3),
                RouteChange("add", N("10.9.0.1/32"), True, oif=4),
            )
        )
    )
    t.apply(RouteBatch((RouteChange("del", N("10.9.0.1/32"), True, oif=3),)))
    assert t.is_local(A("10.9.0.1"))
    t.apply(RouteBatch((), reset=True))
    assert len(t) == 0 and not t.is_local(A("10.9.0.1"))


routes = st.lists(
    st.tuples(
        st.integers(0, 255),
        st.sampled_from([0, 8, 16, 24, 25, 28, 30, 31, 32]),
        st.booleans(),
        st.integers(1, 3),
    ).map(lambda x: RouteChange("add", N(f"10.0.0.{x[0]}/{x[1]}", strict=False), x[2], oif=x[3])),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(routes, st.integers(0, 255))
def test_route_table_agrees_with_a_brute_force_lookup(changes: list[RouteChange], host: int) -> None:
    t = RouteTable()
    t.apply(RouteBatch(tuple(changes), reset=True))
    ip = A(f"10.0.0.{host}")
    entries: dict[tuple[ipaddress.IPv4Network, tuple[int, str, int]], bool] = {}
    for ch in changes:  # the same entry (oif, gateway, metric) replaces; others add up
        assert isinstance(ch.dst, ipaddress.IPv4Network)
        entries[(ch.dst, ch.entry)] = ch.direct
    direct: dict[ipaddress.IPv4Network, bool] = {}
    for (dst, _), is_direct in entries.items():
        direct[dst] = direct.get(dst, False) or is_direct
    matches = [n for n in direct if ip in n]
    best = max(matches, key=lambda n: n.prefixlen) if matches else None
    expect = best is not None and best.prefixlen > 0 and direct[best]
    assert t.is_local(ip) == expect


def test_netlink_messages_become_changes() -> None:
    msg = {
        "event": "RTM_NEWROUTE",
        "family": 2,
        "dst_len": 32,
        "type": 1,
        "table": 254,
        "attrs": [("RTA_TABLE", 254), ("RTA_DST", "10.244.1.5"), ("RTA_OIF", 7)],
    }
    assert route_change_from_netlink(msg) == RouteChange("add", N("10.244.1.5/32"), True, oif=7)
    gw = {
        **msg,
        "event": "RTM_DELROUTE",
        "attrs": [("RTA_TABLE", 254), ("RTA_OIF", 2), ("RTA_GATEWAY", "172.16.13.1")],
    }
    assert route_change_from_netlink({**gw, "dst_len": 0}) == RouteChange(
        "del", N("0.0.0.0/0"), False, oif=2, gateway="172.16.13.1"
    )
    assert route_change_from_netlink({**msg, "attrs": [("RTA_TABLE", 255), ("RTA_DST", "10.0.0.1")]}) is None
    assert route_change_from_netlink({**msg, "event": "RTM_NEWADDR"}) is None
    blackhole = {**msg, "type": 6}
    change = route_change_from_netlink(blackhole)
    assert change is not None and not change.direct


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_netlink_source_sees_host_routes_come_and_go() -> None:
    with Sandbox() as sb:
        ns = sb.netns("rt")
        for argv in (
            ["link", "add", "pods", "type", "veth", "peer", "name", "p2"],
            ["link", "set", "pods", "up"],
        ):
            subprocess.run(["ip", "-n", ns.name, *argv], check=True)
        subprocess.run(["ip", "-n", ns.name, "route", "add", "10.244.1.1/32", "dev", "pods"], check=True)

        async def scenario() -> list[RouteBatch]:
            seen: list[RouteBatch] = []
            table = RouteTable()
            gen = NetlinkRouteSource(netns=ns.name).watch()
            try:
                first = await asyncio.wait_for(gen.__anext__(), 5)
                seen.append(first)
                table.apply(first)
                assert first.reset and table.is_local(A("10.244.1.1"))
                for argv in (
                    ["route", "add", "10.244.1.2/32", "dev", "pods"],
                    ["route", "del", "10.244.1.1/32"],
                ):
                    await asyncio.to_thread(subprocess.run, ["ip", "-n", ns.name, *argv], check=True)
                while table.is_local(A("10.244.1.1")) or not table.is_local(A("10.244.1.2")):
                    batch = await asyncio.wait_for(gen.__anext__(), 5)
                    seen.append(batch)
                    table.apply(batch)
            finally:
                await gen.aclose()
            return seen

        seen = asyncio.run(scenario())
        assert len(seen) >= 2


def test_routes_table_lists_each_route_once_sorted() -> None:
    from bgp_speaker.commands import AdjRibRoute
    from bgp_speaker.status import format_routes_table

    routes = [
        AdjRibRoute("172.16.13.1", N("10.244.1.10/32"), A("172.16.13.11"), {"community": ["64512:100"]}),
        AdjRibRoute("172.16.13.1", N("10.244.1.9/32"), A("172.16.13.11"), {"large-community": ["1:2:3"]}),
    ]
    lines = format_routes_table(routes).splitlines()
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == ["PEER", "PREFIX", "NEXT HOP", "COMMUNITIES"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == [
        "172.16.13.1",
        "10.244.1.9/32",
        "172.16.13.11",
        "1:2:3",
    ]
    assert [c.strip() for c in lines[4].split("|")[1:-1]][3] == "64512:100"


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_source_address_is_what_ip_route_get_says() -> None:
    """``nextHop: auto`` reads the kernel's choice of source address towards the peer."""
    from bgp_speaker.kernel import source_address

    with Sandbox() as sb:
        ns = sb.netns("src")
        for argv in (
            ["link", "add", "eth1", "type", "veth", "peer", "name", "p1"],
            ["link", "set", "eth1", "up"],
            ["link", "set", "p1", "up"],
            ["addr", "add", "172.16.13.11/24", "dev", "eth1"],
            ["addr", "add", "172.16.13.99/24", "dev", "eth1"],  # secondary: not the source
            ["route", "add", "10.30.0.0/16", "via", "172.16.13.1", "src", "172.16.13.99"],
        ):
            subprocess.run(["ip", "-n", ns.name, *argv], check=True)
        assert source_address(A("172.16.13.1"), netns=ns.name) == A("172.16.13.11")
        assert source_address(A("10.30.1.1"), netns=ns.name) == A("172.16.13.99")
        assert source_address(A("192.0.2.1"), netns=ns.name) is None  # no route there
