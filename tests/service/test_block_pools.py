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
