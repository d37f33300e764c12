"""``advertise: block``: a node's announcements from its affine blocks and its own addresses (the pure
``block_routes``), through the speaker's ``DesiredState``, and a property over N nodes: for any sequence
of allocations, releases, pod moves, block returns and agent restarts, the union of the nodes'
announcements routes every allocated address (longest match) to its holder, no two nodes announce the
same prefix, and an address routed to a node that does not hold it is covered by that node's blackhole."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp_speaker.blocks import block_routes
from bgp_speaker.config import BgpConfig, IPAddress, IPNetwork, parse_bgp_config
from bgp_speaker.desired import DesiredState
from bgp_speaker.metrics import SpeakerMetrics
from bgp_speaker.routes import Refusal

N = ipaddress.ip_network
A = ipaddress.ip_address
POOL = ipaddress.IPv4Network("10.244.0.0/27")
POOL6 = N("fd00:244::/120")


def _config(**top: object) -> BgpConfig:
    return parse_bgp_config(
        {
            "asn": 64512,
            "nextHop": "172.16.13.11",
            "nextHopV6": "fd00:13::11",
            "runtimeDir": "/nonexistent",
            "announceWhen": "allocated",
            "requireHostRoute": False,
            "advertise": "block",
            "peers": [{"address": "172.16.13.1", "asn": 23000}],
            **top,
        },
        source="test",
    )


def _hosts(*ips: str) -> dict[IPNetwork, IPNetwork]:
    return {N(ip): POOL if A(ip).version == 4 else POOL6 for ip in ips}


def test_blocks_as_prefixes_borrowed_as_hosts() -> None:
    r = block_routes(
        [N("10.244.0.0/29"), N("fd00:244::40/122")],
        _hosts("10.244.0.1", "10.244.0.9", "fd00:244::41", "fd00:244::1"),
        pool_subnets={POOL, POOL6},
    )
    assert r.blocks == {N("10.244.0.0/29"), N("fd00:244::40/122")}
    assert r.borrowed == {N("10.244.0.9/32"), N("fd00:244::1/128")}
    assert r.prefixes == r.blocks | r.borrowed
    assert r.blackholes == r.blocks
    assert r.refused == ()


def test_an_empty_block_is_announced_and_blackholed() -> None:
    r = block_routes([N("10.244.0.8/29")], {}, pool_subnets={POOL})
    assert r.prefixes == {N("10.244.0.8/29")} == r.blackholes


def test_export_policy_refuses_blocks_outside_the_pools() -> None:
    r = block_routes(
        [N("10.244.0.0/29"), N("10.99.0.0/29"), N("10.244.0.16/29")],
        {},
        pool_subnets={POOL},
        node_addresses={A("10.244.0.17")},
    )
    assert r.prefixes == {N("10.244.0.0/29")}
    assert r.refused == (
        Refusal("10.99.0.0/29", "outside every pool subnet"),
        Refusal("10.244.0.16/29", "holds this node's own address 10.244.0.17"),
    )
    # still blackholed: a block of this node is never routed back to the router
    assert r.blackholes == {N("10.244.0.0/29"), N("10.99.0.0/29"), N("10.244.0.16/29")}
    unknown = block_routes([N("10.244.0.0/29")], {}, pool_subnets=None)
    assert unknown.prefixes == frozenset()
    assert unknown.refused == (Refusal("10.244.0.0/29", "the pool subnets are not known yet"),)


def test_export_cidrs_narrow_a_block() -> None:
    r = block_routes(
        [N("10.244.0.0/29"), N("10.244.0.8/29")],
        {},
        pool_subnets={POOL},
        export_cidrs=[N("10.244.0.4/30")],
    )
    assert r.prefixes == {N("10.244.0.4/30")}
    assert r.refused == (Refusal("10.244.0.8/29", "outside bgp.exportCIDRs"),)


def test_desired_state_in_block_mode() -> None:
    ds = DesiredState(_config(), metrics=SpeakerMetrics())
    ds.set_pool_subnets([str(POOL)])
    ds.set_pod_ips({"10.244.0.1": str(POOL), "10.244.0.9": str(POOL), "10.99.0.1": str(POOL)})
    assert ds.desired() == {N("10.244.0.1/32"), N("10.244.0.9/32")}  # no block yet: all borrowed
    ds.set_blocks(["10.244.0.0/29"])
    assert ds.desired() == {N("10.244.0.0/29"), N("10.244.0.9/32")}
    ds.remove_pod_ip("10.244.0.9")
    ds.set_blocks([])
    assert ds.desired() == {N("10.244.0.1/32")}
    assert ds.block_routes().blackholes == frozenset()


def test_a_refused_block_is_logged_once_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    ds = DesiredState(_config(), metrics=SpeakerMetrics())
    ds.set_pool_subnets([str(POOL)])
    with caplog.at_level(logging.WARNING, logger="bgp_speaker.speaker"):
        ds.set_blocks(["10.99.0.0/29", "10.244.0.0/29"])
        ds.set_blocks(["10.99.0.0/29", "10.244.0.0/29", "10.244.0.8/29"])
    assert [r.getMessage() for r in caplog.records] == [
        "BGP export policy: not announcing block 10.99.0.0/29: outside every pool subnet"
    ]
    assert ds.desired() == {N("10.244.0.0/29"), N("10.244.0.8/29")}


def test_block_mode_is_a_config_choice() -> None:
    assert _config().advertise == "block"


# ---- the property over N nodes --------------------------------------------------------------------

NODES = 3
BLOCK_LEN = 29
BLOCKS: list[IPNetwork] = list(POOL.subnets(new_prefix=BLOCK_LEN))
ADDRESSES: list[IPAddress] = list(POOL)


@dataclass
class Cluster:
    """The store's view (block owners, address holders) under the issue's allocation rule, and each
    node's agent: a ``DesiredState`` fed by events like the agent's watch feeds the speaker."""

    owner: dict[IPNetwork, int] = field(default_factory=dict)
    holder: dict[IPAddress, int] = field(default_factory=dict)
    agents: list[DesiredState] = field(default_factory=list)

    def start(self, node: int) -> DesiredState:
        ds = DesiredState(_config(), metrics=SpeakerMetrics())
        ds.set_pool_subnets([str(POOL)])
        ds.set_pod_ips({str(ip): str(POOL) for ip, n in self.holder.items() if n == node})
        ds.set_blocks([str(b) for b, n in self.owner.items() if n == node])
        return ds

    def blocks_of(self, node: int) -> list[str]:
        return [str(b) for b, n in self.owner.items() if n == node]

    def allocate(self, node: int) -> None:
        free = [ip for ip in ADDRESSES if ip not in self.holder]
        if not free:
            return
        mine = [ip for ip in free if any(ip in b for b, n in self.owner.items() if n == node)]
        if not mine:
            empty = [b for b in BLOCKS if b not in self.owner and not any(ip in b for ip in self.holder)]
            if empty:
                self.owner[empty[0]] = node
                self.agents[node].set_blocks(self.blocks_of(node))
                mine = [ip for ip in free if ip in empty[0]]
        ip = (mine or free)[0]  # none of its own: borrow the lowest free address anywhere
        self.holder[ip] = node
        self.agents[node].add_pod_ip(str(ip), str(POOL))

    def release(self, k: int) -> None:
        if self.holder:
            ip = sorted(self.holder)[k % len(self.holder)]
            node = self.holder.pop(ip)
            self.agents[node].remove_pod_ip(str(ip))

    def move(self, k: int, to: int) -> None:
        """A StatefulSet pod re-created on node ``to`` keeps its address (borrowed there)."""
        if self.holder:
            ip = sorted(self.holder)[k % len(self.holder)]
            self.agents[self.holder[ip]].remove_pod_ip(str(ip))
            self.holder[ip] = to
            self.agents[to].add_pod_ip(str(ip), str(POOL))

    def return_empty_blocks(self) -> None:
        """The leader's grace period ran out: blocks holding no allocation go back to the pool."""
        for b in [b for b in self.owner if not any(ip in b for ip in self.holder)]:
            node = self.owner.pop(b)
            self.agents[node].set_blocks(self.blocks_of(node))

    def check(self) -> None:
        routes: dict[IPNetwork, int] = {}
        for node, ds in enumerate(self.agents):
            # what the agent keeps current event by event is what the pure rules give from scratch
            held = [N(ip) for ip, n in self.holder.items() if n == node]
            scratch = block_routes(map(N, self.blocks_of(node)), held, pool_subnets={POOL})
            assert ds.desired() == scratch.prefixes
            for prefix in ds.desired():
                assert prefix not in routes, f"{prefix} announced by nodes {routes[prefix]} and {node}"
                routes[prefix] = node
            assert ds.block_routes().blackholes == set(map(N, self.blocks_of(node)))
        for ip in ADDRESSES:
            matches = [p for p in routes if ip in p]
            if not matches:
                assert ip not in self.holder, f"{ip} is allocated on node {self.holder[ip]} but unrouted"
                continue
            node = routes[max(matches, key=lambda p: p.prefixlen)]
            if self.holder.get(ip) != node:
                assert ip not in self.holder, f"{ip} held by {self.holder[ip]} but routed to {node}"
                blackholes = self.agents[node].block_routes().blackholes
                assert any(ip in b for b in blackholes), f"{ip} routed to {node}, unallocated, no blackhole"


_nodes = st.integers(0, NODES - 1)
_step = st.one_of(
    st.tuples(st.just("allocate"), _nodes, st.just(0)),
    st.tuples(st.just("release"), st.integers(0, 63), st.just(0)),
    st.tuples(st.just("move"), st.integers(0, 63), _nodes),
    st.tuples(st.just("restart"), _nodes, st.just(0)),
    st.tuples(st.just("return"), st.just(0), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_step, max_size=60))
def test_announcements_over_nodes_route_every_address_to_its_holder(
    steps: list[tuple[str, int, int]],
) -> None:
    c = Cluster()
    c.agents = [c.start(n) for n in range(NODES)]
    for op, a, b in steps:
        if op == "allocate":
            c.allocate(a)
        elif op == "release":
            c.release(a)
        elif op == "move":
            c.move(a, b)
        elif op == "restart":
            c.agents[a] = c.start(a)  # a restarted agent reads the store again
        else:
            c.return_empty_blocks()
        c.check()
