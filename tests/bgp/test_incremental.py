"""The speaker's incremental bookkeeping (``advertise: host``, no ``maxPrefixes``): after any sequence
of pod and kernel-route changes, the prefixes it keeps as desired equal what the pure
``desired_routes`` computes from scratch, and planning from the changed prefixes alone brings the
announced set to exactly that (the invariant the sync loop relies on to skip whole comparisons).

A sync here is the speaker's own: ``DesiredState.plan()`` and ``acknowledge()``, the two halves of
``BgpSpeaker._sync`` around the send to ExaBGP, with ExaBGP acking every command (what ExaBGP does
with a command is tests/bgp/test_driver.py's concern, against the real one)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp_speaker.config import IPNetwork, parse_bgp_config
from bgp_speaker.damping import is_suppressed
from bgp_speaker.desired import DesiredState
from bgp_speaker.exabgp import CommandResult
from bgp_speaker.kernel import RouteBatch, RouteChange
from bgp_speaker.metrics import SpeakerMetrics
from bgp_speaker.routes import desired_routes

POOL = "10.244.0.0/16"
PEER = "172.16.13.1"


def _speaker(
    *, families: list[str] | None = None, clock: Callable[[], float] = time.monotonic, **top: object
) -> DesiredState:
    peer: dict[str, object] = {"address": PEER, "asn": 23000}
    if families is not None:
        peer["families"] = families
    cfg = parse_bgp_config(
        {
            "asn": 64512,
            "nextHop": "172.16.13.11",
            "nextHopV6": "fd00:13::11",
            "runtimeDir": "/nonexistent",
            "announceWhen": "allocated",
            "peers": [peer],
            **top,
        },
        source="test",
    )
    sp = DesiredState(cfg, metrics=SpeakerMetrics(), clock=clock)
    sp.set_pool_subnets([POOL, "fd00:244::/64"])
    return sp


def _ip(n: int) -> str:
    return f"10.244.{n // 250}.{n % 250 + 1}"


def _apply(sp: DesiredState, changes: list[RouteChange], *, reset: bool = False) -> None:
    sp.apply_routes(RouteBatch(tuple(changes), reset=reset))


def _sync_changed(sp: DesiredState) -> None:
    """One sync: the speaker's plan (on the incremental path once ``_full_sync`` is off), every
    command acked."""
    ops = sp.plan()
    failed, _ = sp.acknowledge(ops, [CommandResult(line, ok=True) for _, cmds in ops for line in cmds])
    assert not failed


def _reference(sp: DesiredState) -> frozenset[IPNetwork]:
    ready = {ip for ip in sp._pods if sp._table.is_local(ip)}
    return desired_routes(
        sp._pods, mode="host", ready=ready, pool_subnets={ipaddress.ip_network(POOL)}
    ).prefixes


_STEP = st.one_of(
    st.tuples(st.just("pod+"), st.integers(0, 40)),
    st.tuples(st.just("pod-"), st.integers(0, 40)),
    st.tuples(st.just("route+"), st.integers(0, 40)),
    st.tuples(st.just("route-"), st.integers(0, 40)),
    st.tuples(st.just("link+"), st.integers(24, 30)),  # a connected subnet covering some pods
    st.tuples(st.just("link-"), st.integers(24, 30)),
    st.tuples(st.just("v6link"), st.integers(0, 3)),  # a new veth's fe80::/64: touches no pod
    st.tuples(st.just("sync"), st.just(0)),
)


def _host(n: int) -> IPNetwork:
    return ipaddress.ip_network(f"{_ip(n)}/32")


def _link(plen: int) -> IPNetwork:
    return ipaddress.ip_network(f"10.244.0.0/{plen}")


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_STEP, max_size=60))
def test_changed_prefixes_alone_keep_the_announced_set_exact(steps: list[tuple[str, int]]) -> None:
    sp = _speaker()
    _apply(sp, [RouteChange("add", ipaddress.ip_network("0.0.0.0/0"), False, gateway=PEER)], reset=True)
    sp._full_sync = False
    for kind, n in steps:
        if kind == "pod+":
            sp.add_pod_ip(_ip(n), POOL)
        elif kind == "pod-":
            sp.remove_pod_ip(_ip(n))
        elif kind == "route+":
            _apply(sp, [RouteChange("add", _host(n), True, oif=3)])
        elif kind == "route-":
            _apply(sp, [RouteChange("del", _host(n), True, oif=3)])
        elif kind == "link+":
            _apply(sp, [RouteChange("add", _link(n), True, oif=4)])
        elif kind == "link-":
            _apply(sp, [RouteChange("del", _link(n), True, oif=4)])
        elif kind == "v6link":
            _apply(sp, [RouteChange("add", ipaddress.ip_network("fe80::/64"), True, oif=10 + n)])
        else:
            _sync_changed(sp)
            assert sp._announced[PEER] == set(sp.desired())
        assert sp.desired() == _reference(sp)
    _sync_changed(sp)
    assert sp._announced[PEER] == set(_reference(sp))


def test_a_peer_gets_only_its_families() -> None:
    sp = _speaker(families=["ipv4"])
    _apply(sp, [], reset=True)
    sp._full_sync = False
    sp.add_pod_ip("10.244.0.7", POOL)
    sp.add_pod_ip("fd00:244::7", "fd00:244::/64")
    _apply(
        sp,
        [
            RouteChange("add", ipaddress.ip_network("10.244.0.7/32"), True, oif=3),
            RouteChange("add", ipaddress.ip_network("fd00:244::7/128"), True, oif=3),
        ],
    )
    _sync_changed(sp)
    assert sp._announced[PEER] == {ipaddress.ip_network("10.244.0.7/32")}


def test_a_change_costs_the_same_with_many_pods() -> None:
    """One new pod's sync looks at one prefix whatever the number of pods on the node."""
    sp = _speaker()
    ips = [_ip(n) for n in range(3000)]
    sp.set_pod_ips(dict.fromkeys(ips, POOL))
    _apply(sp, [RouteChange("add", ipaddress.ip_network(f"{ip}/32"), True, oif=3) for ip in ips], reset=True)
    _sync_changed(sp)  # the first sync announces all of them
    assert len(sp._announced[PEER]) == 3000
    sp.add_pod_ip("10.244.200.1", POOL)
    _apply(sp, [RouteChange("add", ipaddress.ip_network("10.244.200.1/32"), True, oif=3)])
    assert sp._dirty == {ipaddress.ip_network("10.244.200.1/32")}
    ops = [op for peer in sp.config.peers for op, _ in sp._changed_ops_for_peer(peer, sorted(sp._dirty))]
    assert [(op.action, op.prefixes) for op in ops] == [
        ("announce", (ipaddress.ip_network("10.244.200.1/32"),))
    ]


_GATED_STEP = st.one_of(
    _STEP,
    st.tuples(st.just("ready+"), st.integers(0, 40)),
    st.tuples(st.just("ready-"), st.integers(0, 40)),
    st.tuples(st.just("tick"), st.integers(1, 40)),  # seconds pass
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_GATED_STEP, max_size=80))
def test_readiness_and_damping_keep_the_announced_set_exact(steps: list[tuple[str, int]]) -> None:
    """announceWhen: ready with damping, over an injected clock: an address is desired exactly when it
    is allocated, routed, Ready and its prefix not suppressed; a prefix without withdrawals is never
    held back; the changed prefixes alone bring the announced set to the desired one."""
    now = [0.0]
    damping = {"halfLife": 10, "reuse": 750, "suppress": 2000, "maxSuppress": 30}
    sp = _speaker(clock=lambda: now[0], announceWhen="ready", damping=damping)
    params = sp.config.damping
    assert params is not None
    _apply(sp, [RouteChange("add", ipaddress.ip_network("0.0.0.0/0"), False, gateway=PEER)], reset=True)
    sp._full_sync = False
    ever_withdrawn: set[IPNetwork] = set()
    for kind, n in steps:
        if kind == "pod+":
            sp.add_pod_ip(_ip(n), POOL)
        elif kind == "pod-":
            sp.remove_pod_ip(_ip(n))
        elif kind == "route+":
            _apply(sp, [RouteChange("add", _host(n), True, oif=3)])
        elif kind == "route-":
            _apply(sp, [RouteChange("del", _host(n), True, oif=3)])
        elif kind in ("link+", "link-"):
            _apply(sp, [RouteChange("add" if kind == "link+" else "del", _link(n), True, oif=4)])
        elif kind == "ready+":
            sp.set_pod_ready({_ip(n): True})
        elif kind == "ready-":
            sp.set_pod_ready({_ip(n): False})
        elif kind == "tick":
            now[0] += n
            sp._release_reused()
        elif kind == "sync":
            sp._release_reused()
            _sync_changed(sp)
            assert sp._announced[PEER] == set(sp.desired())
        ever_withdrawn |= set(sp._flaps)
        announceable = {_host_of(ip) for ip in sp._pods if sp._table.is_local(ip) and ip in sp._pod_ready}
        held = set(sp._suppressed)
        assert set(sp.desired()) | held == announceable
        assert not set(sp.desired()) & held
        for host in held:
            assert host in ever_withdrawn  # never a prefix without history
            assert is_suppressed(sp._flaps[host], now[0], params) or now[0] >= sp._suppressed[host]
    now[0] += 1000.0  # every suppression has run out
    sp._release_reused()
    _sync_changed(sp)
    assert not sp._suppressed
    assert sp._announced[PEER] == {
        _host_of(ip) for ip in sp._pods if sp._table.is_local(ip) and ip in sp._pod_ready
    }


def _host_of(ip: object) -> IPNetwork:
    return ipaddress.ip_network(f"{ip}/32")
