"""Desired routes (host / aggregate / pool), the export policy, and the per-peer plan."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp_speaker.config import IPAddress, IPNetwork
from bgp_speaker.routes import desired_routes, export_refusal, plan_peer

POOL = ipaddress.ip_network("10.244.0.0/16")
V4 = ipaddress.IPv4Address
N = ipaddress.ip_network


def _ips(*texts: str) -> dict[IPAddress, IPNetwork]:
    return {ipaddress.ip_address(t): POOL for t in texts}


def test_host_mode_is_one_host_prefix_per_ready_ip() -> None:
    pods = _ips("10.244.1.1", "10.244.1.2", "10.244.1.3")
    got = desired_routes(pods, mode="host", ready={V4("10.244.1.1"), V4("10.244.1.3")})
    assert got.prefixes == {N("10.244.1.1/32"), N("10.244.1.3/32")}
    assert got.refused == ()


def test_aggregate_mode_example() -> None:
    pods = _ips(*[f"10.244.3.{i}" for i in (0, 1, 2, 3, 5, 6, 7, 9)])
    got = desired_routes(pods, mode="aggregate")
    assert got.prefixes == {N("10.244.3.0/30"), N("10.244.3.5/32"), N("10.244.3.6/31"), N("10.244.3.9/32")}


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.integers(min_value=0, max_value=255), max_size=60), st.sets(st.integers(0, 255), max_size=40)
)
def test_aggregate_cover_is_exact_and_minimal(v4_offsets: set[int], v6_offsets: set[int]) -> None:
    pods: dict[IPAddress, IPNetwork] = {V4(f"10.244.7.{o}"): POOL for o in v4_offsets}
    pool6 = N("fd00:244::/64")
    pods.update({ipaddress.IPv6Address(f"fd00:244::{o:x}"): pool6 for o in v6_offsets})
    got = desired_routes(pods, mode="aggregate").prefixes
    covered = {a for net in got for a in net}
    assert covered == set(pods)  # covers every pod IP and nothing else
    for net in got:  # minimal: no two prefixes could be merged into their common supernet
        if net.prefixlen == 0:
            continue
        sibling = next(s for s in net.supernet().subnets() if s != net)
        assert sibling not in got
    assert sum(n.num_addresses for n in got) == len(pods)  # disjoint


def test_pool_mode_announces_the_subnets_holding_ready_pods_narrowed_by_export_cidrs() -> None:
    pool_b = N("10.245.0.0/16")
    pods: dict[IPAddress, IPNetwork] = {
        V4("10.244.1.1"): POOL,
        V4("10.245.9.9"): pool_b,
        V4("10.244.2.2"): POOL,
    }
    got = desired_routes(pods, mode="pool", ready={V4("10.244.1.1"), V4("10.245.9.9")})
    assert got.prefixes == {POOL, pool_b}
    narrowed = desired_routes(
        pods, mode="pool", export_cidrs=[N("10.244.0.0/17"), N("10.245.0.0/16"), N("10.0.0.0/8")]
    )
    # 10.0.0.0/8 covers both pools entirely; the /17 alone would have narrowed 10.244/16
    assert narrowed.prefixes == {POOL, pool_b}
    only_part = desired_routes(pods, mode="pool", export_cidrs=[N("10.244.0.0/17"), N("10.245.0.0/24")])
    assert only_part.prefixes == {N("10.244.0.0/17")}  # 10.245.9.9 is outside every export CIDR
    assert [r.subject for r in only_part.refused] == ["10.245.9.9"]


def test_export_policy_reasons() -> None:
    none: frozenset[IPAddress] = frozenset()

    def why(ip: str, subnet: str = "10.244.0.0/16", **kw: object) -> str | None:
        return export_refusal(
            ipaddress.ip_address(ip),
            N(subnet),
            pool_subnets=kw.get("pools", {POOL}),  # type: ignore[arg-type]
            export_cidrs=kw.get("cidrs", ()),  # type: ignore[arg-type]
            node_addresses=kw.get("node", none),  # type: ignore[arg-type]
        )

    assert why("10.244.1.1") is None
    assert why("10.245.1.1") == "outside its pool subnet 10.244.0.0/16"
    assert why("10.1.1.1", "0.0.0.0/0") == "pool subnet 0.0.0.0/0 is a default route"
    assert why("10.1.1.1", "10.1.0.0/16") == "outside every pool subnet"
    assert why("10.244.1.1", cidrs=(N("10.244.2.0/24"),)) == "outside bgp.exportCIDRs"
    assert why("10.244.1.1", node={V4("10.244.1.1")}) == "is this node's own address"
    assert why("127.0.0.1", "127.0.0.0/8", pools={N("127.0.0.0/8")}) == "not a unicast address"
    assert why("10.1.1.1", "10.1.0.0/16", pools=None) is None  # no pool list: the pod's own pool decides


def test_refused_ips_are_reported_and_not_announced() -> None:
    pods: dict[IPAddress, IPNetwork] = {V4("10.244.1.1"): POOL, V4("10.9.0.1"): N("10.9.0.0/16")}
    got = desired_routes(pods, mode="host", pool_subnets={POOL})
    assert got.prefixes == {N("10.244.1.1/32")}
    assert [str(r) for r in got.refused] == ["10.9.0.1: outside every pool subnet"]


def test_plan_sends_only_differences() -> None:
    plan = plan_peer({N("10.0.0.1/32"), N("10.0.0.2/32")}, {N("10.0.0.2/32"), N("10.0.0.3/32")})
    assert plan.announce == (N("10.0.0.1/32"),)
    assert plan.withdraw == (N("10.0.0.3/32"),)
    assert plan_peer(plan.target, plan.target).empty


def test_plan_limit_keeps_what_is_announced() -> None:
    announced = {N("10.0.0.9/32"), N("10.0.0.8/32")}
    desired = announced | {N("10.0.0.1/32"), N("10.0.0.2/32")}
    plan = plan_peer(desired, announced, limit=3)
    assert plan.announce == (N("10.0.0.1/32"),)  # lowest new one fills the one free slot
    assert plan.withdraw == ()
    assert plan.held_back == (N("10.0.0.2/32"),)


nets = st.sets(st.integers(0, 63).map(lambda i: N(f"10.0.0.{i}/32")), max_size=30)


@settings(max_examples=300, deadline=None)
@given(nets, nets, st.one_of(st.none(), st.integers(1, 40)))
def test_plan_properties(desired: set[IPNetwork], announced: set[IPNetwork], limit: int | None) -> None:
    plan = plan_peer(desired, announced, limit=limit)
    after = (announced - set(plan.withdraw)) | set(plan.announce)
    assert after == plan.target
    assert plan.target <= desired
    assert set(plan.announce).isdisjoint(announced)
    assert set(plan.withdraw) <= announced
    if limit is None:
        assert plan.target == desired
    else:
        assert len(plan.target) == min(limit, len(desired))
        if len(announced & desired) <= limit:
            assert announced & desired <= plan.target  # no churn of what is already out
    assert set(plan.held_back) == desired - plan.target
