"""Allocation blocks on the namespace lab (issue 15): the lab's agents run ``advertise: block``; a pool
annotated ``spiderbgp.io/block-size: "28"`` gives each node a /28 that the router learns as one prefix,
a StatefulSet pod moved to the other node keeps its address and is announced there as a /32, and the
client reaches every pod.  One lab for the module (the demo's block manifests); the pure checks of the
invariants' route rule need no lab."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import netaddr
import pytest

from ipam.store.sqlite import SqliteStore
from lab.build import REPO_ROOT, SEED_TOPOLOGY, Lab
from lab.frr import BgpPath, wait_until
from lab.invariants import BlockView, PodView, block_views, check_invariants, fetch_pages, route_problems
from lab.netns import list_netns
from lab.verbs import apply_file, delete_pod, label_node, wait_settled

CONFIGS = REPO_ROOT / "configs"
POOL_SPACE = netaddr.IPNetwork("10.246.0.0/24")  # configs/block-ippool-v4.yaml
WEB_LABEL = "spiderbgp.io/demo-web"  # configs/block-workloads.yaml pins blk-web by it


# ---- the invariants' route rule, pure --------------------------------------------------------

N1, N2 = frozenset({"172.16.13.11"}), frozenset({"172.16.13.21"})
BLOCKS = (BlockView("10.246.0.0/28", "node1", N1), BlockView("10.246.0.16/28", "node2", N2))


def _pod(name: str, ip: str, node: str) -> PodView:
    hops = N1 if node == "node1" else N2
    return PodView(f"default/{name}", f"uid-{name}", (ip,), hops, frozenset({ip}), node)


def test_route_rule_accepts_blocks_and_a_borrowed_32() -> None:
    pods = {
        "a": _pod("a", "10.246.0.1", "node1"),
        "b": _pod("b", "10.246.0.16", "node2"),
        "web": _pod("web", "10.246.0.0", "node2"),  # in node1's block, held by node2
        "seed": _pod("seed", "10.244.100.0", "node1"),  # a pool without blocks
    }
    routes = {
        "10.246.0.0/28": BgpPath("10.246.0.0/28", "172.16.13.11", "64512", False),
        "10.246.0.16/28": BgpPath("10.246.0.16/28", "172.16.13.21", "64512", False),
        "10.246.0.0/32": BgpPath("10.246.0.0/32", "172.16.13.21", "64512", False),
        "10.244.100.0/32": BgpPath("10.244.100.0/32", "172.16.13.11", "64512", False),
    }
    assert route_problems(routes, pods, BLOCKS) == []
    missing = {k: v for k, v in routes.items() if k != "10.246.0.0/32"}
    assert route_problems(missing, pods, BLOCKS) == [
        "router: no BGP route for 10.246.0.0/32 (pod default/web)"
    ]
    no_block = {k: v for k, v in routes.items() if k != "10.246.0.16/28"}
    assert route_problems(no_block, pods, BLOCKS) == [
        "router: no BGP route for 10.246.0.16/28 (block of node2)"
    ]


def test_route_rule_refuses_a_32_inside_its_holders_block() -> None:
    pods = {"a": _pod("a", "10.246.0.1", "node1")}
    routes = {
        "10.246.0.0/28": BgpPath("10.246.0.0/28", "172.16.13.11", "64512", False),
        "10.246.0.16/28": BgpPath("10.246.0.16/28", "172.16.13.21", "64512", False),
        "10.246.0.1/32": BgpPath("10.246.0.1/32", "172.16.13.11", "64512", False),
    }
    assert route_problems(routes, pods, BLOCKS) == [
        "router: BGP route 10.246.0.1/32 via 172.16.13.11 is a /32 announced for an address inside "
        "its holder's block (pod default/a, inside node1's block 10.246.0.0/28)"
    ]
    wrong_hop = {**routes, "10.246.0.16/28": BgpPath("10.246.0.16/28", "172.16.13.11", "64512", False)}
    del wrong_hop["10.246.0.1/32"]
    assert route_problems(wrong_hop, pods, BLOCKS) == [
        "router: 10.246.0.16/28 (block of node2) has next hop 172.16.13.11, its node is ['172.16.13.21']"
    ]


# ---- the lab ---------------------------------------------------------------------------------


@dataclass
class Blocks:
    lab: Lab
    store: SqliteStore


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Blocks]:
    base = tmp_path_factory.mktemp("blocks")
    lab = Lab.create(run_dir=base / "run", env=dict(os.environ), topology_file=SEED_TOPOLOGY)
    store: SqliteStore | None = None
    prefix = lab.sandbox.prefix
    try:
        lab.up(timeout=60)
        store = SqliteStore(lab.store_path)
        apply_file(store, CONFIGS / "block-ippool-v4.yaml")
        label_node(store, lab.k8s_nodes[0], [f"{WEB_LABEL}=yes"])
        apply_file(store, CONFIGS / "block-workloads.yaml")
        assert wait_settled(store, timeout=120) == []
        yield Blocks(lab, store)
    finally:
        if store is not None:
            store.close()
        lab.down()
    assert not list_netns(prefix), "the lab left namespaces behind"


def _pods(b: Blocks) -> dict[str, tuple[str, str]]:
    """name -> (IP, node) of the running pods of the block pool."""
    out: dict[str, tuple[str, str]] = {}
    for pod in b.store.list("Pod", namespace="default"):
        status, spec = pod.get("status") or {}, pod.get("spec") or {}
        ip = str(status.get("podIP") or "")
        if status.get("phase") == "Running" and ip and netaddr.IPAddress(ip) in POOL_SPACE:
            out[pod["metadata"]["name"]] = (ip, str(spec.get("nodeName") or ""))
    return out


def _pool_routes(b: Blocks) -> dict[str, str]:
    """The router's best BGP paths into the block pool: prefix -> next hop."""
    routes = b.lab.router.bgp_routes(("ipv4",))
    return {p: path.nexthop for p, path in routes.items() if netaddr.IPNetwork(p) in POOL_SPACE}


def _hop(b: Blocks, node: str) -> str:
    return b.lab.node_addresses(node)[0]


def _routes_become(b: Blocks, wanted: dict[str, str]) -> dict[str, str]:
    seen: dict[str, str] = {}

    def probe() -> bool:
        seen.clear()
        seen.update(_pool_routes(b))
        return seen == wanted

    with contextlib.suppress(TimeoutError):  # the caller's assertion shows what the router holds
        wait_until(probe, timeout=30, what=f"the router's routes into {POOL_SPACE} to be {wanted}")
    return seen


def _blackholes(b: Blocks, node: str) -> set[str]:
    res = subprocess.run(
        ["ip", "-n", b.lab.sandbox.name(node), "-j", "-4", "route", "show", "type", "blackhole"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return {str(r["dst"]) for r in json.loads(res.stdout or "[]")}


def _assert_no_32_inside_own_block(b: Blocks, routes: dict[str, str]) -> None:
    owners = {netaddr.IPNetwork(v.cidr): _hop(b, v.node) for v in block_views(b.lab, b.store)}
    for prefix, hop in routes.items():
        net = netaddr.IPNetwork(prefix)
        if net.prefixlen == 32:
            inside = [blk for blk, owner in owners.items() if net in blk and owner == hop]
            assert not inside, f"{prefix} via {hop} is announced inside its holder's block {inside}"


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_the_router_holds_one_prefix_per_node_block(blocks: Blocks) -> None:
    b = blocks
    node1, node2 = b.lab.k8s_nodes[0], b.lab.k8s_nodes[1]
    pods = _pods(b)
    assert len(pods) == 3 and {node for _, node in pods.values()} == {node1, node2}, pods
    owned = {v.cidr: v.node for v in block_views(b.lab, b.store)}
    assert sorted(owned.values()) == [node1, node2], owned
    for cidr in owned:
        assert netaddr.IPNetwork(cidr).prefixlen == 28
    # every pod's address lies in its own node's block, so the router has the two /28s and no /32
    for name, (ip, node) in pods.items():
        assert [n for c, n in owned.items() if netaddr.IPAddress(ip) in netaddr.IPNetwork(c)] == [node], name
    wanted = {cidr: _hop(b, node) for cidr, node in owned.items()}
    assert _routes_become(b, wanted) == wanted
    fib = b.lab.router.kernel_routes("bgp", (4,))
    assert {p: fib.get(p) for p in wanted} == wanted
    for cidr, node in owned.items():
        assert cidr in _blackholes(b, node), f"{node} has no blackhole route for its block {cidr}"
    answers = fetch_pages(b.lab, sorted(ip for ip, _ in pods.values()))
    assert answers == {ip: name for name, (ip, _) in pods.items()}


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_a_moved_statefulset_pod_is_announced_as_a_borrowed_32(blocks: Blocks) -> None:
    b = blocks
    node1, node2 = b.lab.k8s_nodes[0], b.lab.k8s_nodes[1]
    ip, node = _pods(b)["blk-web-0"]
    assert node == node1
    label_node(b.store, node1, [f"{WEB_LABEL}-"])
    label_node(b.store, node2, [f"{WEB_LABEL}=yes"])
    delete_pod(b.store, "blk-web-0")
    wait_until(lambda: _pods(b).get("blk-web-0", ("", ""))[1] == node2, timeout=60, what="blk-web-0 on node2")
    assert wait_settled(b.store, timeout=120) == []
    pods = _pods(b)
    assert pods["blk-web-0"] == (ip, node2), "the StatefulSet pod keeps its address on the other node"
    owned = {v.cidr: v.node for v in block_views(b.lab, b.store)}
    assert [n for c, n in owned.items() if netaddr.IPAddress(ip) in netaddr.IPNetwork(c)] == [node1]
    wanted = {**{cidr: _hop(b, n) for cidr, n in owned.items()}, f"{ip}/32": _hop(b, node2)}
    routes = _routes_become(b, wanted)
    assert routes == wanted
    _assert_no_32_inside_own_block(b, routes)
    fib = b.lab.router.kernel_routes("bgp", (4,))
    assert fib.get(f"{ip}/32") == _hop(b, node2)
    answers = fetch_pages(b.lab, sorted(i for i, _ in pods.values()))
    assert answers == {i: name for name, (i, _) in pods.items()}
    assert check_invariants(b.lab, b.store, timeout=30) == []
