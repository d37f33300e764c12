"""Block pools on the embedded store, where no CRD schema stands before the store: a SpiderIPBlock
applied with a bad spec is refused in one line and nothing is stored, and one written around admission
is ignored with a warning instead of stopping every allocation."""

from __future__ import annotations

import logging

import pytest

from ipam.admin import apply_object
from ipam.block_claims import list_blocks
from ipam.errors import Invalid
from ipam.service import IpamService
from ipam.store.sqlite import SqliteStore
from tests.service.world import SPIDER_API, World


def test_a_bad_block_is_refused_and_a_stored_one_ignored(
    store: SqliteStore, world: World, service: IpamService, caplog: pytest.LogCaptureFixture
) -> None:
    apply_object(
        store,
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": "bp", "annotations": {"spiderbgp.io/block-size": "29"}},
            "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.30"]},
        },
    )
    bad = {
        "apiVersion": "spiderbgp.io/v1alpha1",
        "kind": "SpiderIPBlock",
        "metadata": {"name": "bp-x"},
        "spec": {"pool": "bp", "cidr": "10.0.0.3/29", "node": "node9"},
    }
    with pytest.raises(Invalid, match=r'^SpiderIPBlock "bp-x": spec\.cidr: 10\.0\.0\.3/29 is not canonical'):
        apply_object(store, bad)
    assert store.list("SpiderIPBlock") == []
    store.create({**bad, "spec": {"pool": "bp", "cidr": "not-a-cidr", "node": "node9"}})
    world.pod("a")
    with caplog.at_level(logging.WARNING, logger="spiderbgp.ipam.blocks"):
        assert service.allocate(world.add("a", v4=["bp"])).ips[0].ip == "10.0.0.1"
    assert 'SpiderIPBlock "bp-x": spec.cidr:' in caplog.text
    assert [(b.cidr, b.node) for b in list_blocks(store)] == [("10.0.0.0/29", "node1")]


def test_block_pools_keep_excluded_and_reserved_addresses_and_work_for_ipv6(
    store: SqliteStore, world: World
) -> None:
    for name, subnet, ips, excluded, size in (
        ("v4", "10.0.0.0/24", "10.0.0.1-10.0.0.30", ["10.0.0.2"], "29"),
        ("v6", "fd00::/64", "fd00::1-fd00::ff", ["fd00::2"], "122"),
    ):
        apply_object(
            store,
            {
                "apiVersion": SPIDER_API,
                "kind": "SpiderIPPool",
                "metadata": {"name": name, "annotations": {"spiderbgp.io/block-size": size}},
                "spec": {"subnet": subnet, "ips": [ips], "excludeIPs": excluded},
            },
        )
    world.reserve("r", ["10.0.0.3", "10.0.0.9-10.0.0.15"])
    n1 = IpamService(store, node_name="node1")
    n2 = IpamService(store, node_name="node2")
    got = []
    for pod, svc in (("a", n1), ("b", n1), ("c", n2), ("d", n2)):
        world.pod(pod, node=svc.node_name)
        got.append([ip.address for ip in svc.allocate(world.add(pod, v4=["v4"], v6=["v6"])).ips])
    # node1: .1 then .4 (.2 excluded, .3 reserved); node2: its block 10.0.0.8/29 holds only .8 (the
    # rest reserved), then the next empty block; IPv6 blocks of 64 addresses, ::2 excluded
    assert got == [
        ["10.0.0.1/24", "fd00::1/64"],
        ["10.0.0.4/24", "fd00::3/64"],
        ["10.0.0.8/24", "fd00::40/64"],
        ["10.0.0.16/24", "fd00::41/64"],
    ]
    assert {(b.cidr, b.node) for b in list_blocks(store)} == {
        ("10.0.0.0/29", "node1"),
        ("10.0.0.8/29", "node2"),
        ("10.0.0.16/29", "node2"),
        ("fd00::/122", "node1"),
        ("fd00::40/122", "node2"),
    }
