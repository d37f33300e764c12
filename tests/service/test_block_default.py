"""The agent's default block size written onto a pool (ipam.block_default, issue 15), on both stores: the
embedded SQLite store and the Kubernetes store on the API emulator as the agent's ServiceAccount (so
rbac.yaml must let the agent update SpiderIPPools).  The stamp turns a fresh plain pool into a block
pool that the service then allocates from in blocks; a pool in use, opted out or of another family is
not written; a racing allocation or another agent's stamp wins by the resourceVersion precondition."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipam.block_claims import list_blocks
from ipam.block_default import BlockSizeDefaults, stamp_default_block_size
from ipam.errors import Conflict
from ipam.records import Obj
from ipam.service import IpamService, IpamSettings
from ipam.store.protocol import Store
from ipam.store.sqlite import SqliteStore
from tests.kube.backend import kube_backend
from tests.service.conftest import no_sleep
from tests.service.world import World

DEFAULTS = BlockSizeDefaults(ipv4=29, ipv6=122)
ANNOTATION = "spiderbgp.io/block-size"


@dataclass(frozen=True)
class _EmulatorOptions:
    history: int = 10_000


@pytest.fixture(params=["sqlite", "kubernetes"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        db = SqliteStore(tmp_path / "state.db")
        try:
            yield db
        finally:
            db.close()
    else:
        with kube_backend(tmp_path, _EmulatorOptions()) as kube:
            yield kube


def _read(store: Store, name: str) -> Obj:
    return store.get("SpiderIPPool", name, allocated_ips=False)


def _version(obj: Obj) -> str:
    return str(obj["metadata"]["resourceVersion"])


def test_a_fresh_plain_pool_becomes_a_block_pool_of_the_default(store: Store) -> None:
    world = World(store)
    world.pool("p4", "10.0.0.0/24", ["10.0.0.1-10.0.0.30"])
    world.pool("p6", "fd00::/124", ["fd00::1-fd00::f"])
    before = _read(store, "p4")
    stamped = stamp_default_block_size(store, before, DEFAULTS)
    assert stamped["metadata"]["annotations"] == {ANNOTATION: "29"}
    assert _version(stamped) != _version(before)
    assert _read(store, "p4")["metadata"]["annotations"] == {ANNOTATION: "29"}  # what every reader sees
    # a default shorter than the subnet (/122 for a /124) gives the subnet's prefix: one block
    assert stamp_default_block_size(store, _read(store, "p6"), DEFAULTS)["metadata"]["annotations"] == {
        ANNOTATION: "124"
    }
    # the service now allocates from it as from any block pool: a block claimed for its node
    service = IpamService(store, node_name="node1", sleep=no_sleep)
    world.pod("a")
    assert service.allocate(world.add("a", v4=["p4"])).ips[0].ip == "10.0.0.1"
    assert [(b.pool, b.cidr, b.node) for b in list_blocks(store)] == [("p4", "10.0.0.0/29", "node1")]
    assert store.usage("p4").resource_version.startswith("g")  # claims hang on its generation now


def test_a_pool_in_use_opted_out_or_without_a_default_is_not_written(store: Store) -> None:
    world = World(store)
    world.pool("used", "10.0.0.0/24", ["10.0.0.1-10.0.0.30"])
    world.pool("v6", "fd00::/64", ["fd00::1-fd00::ff"])
    store.create(
        {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPPool",
            "metadata": {"name": "optout", "annotations": {ANNOTATION: "none"}},
            "spec": {"subnet": "10.1.0.0/24", "ips": ["10.1.0.1-10.1.0.30"]},
        }
    )
    world.pod("a")
    IpamService(store, node_name="node1", sleep=no_sleep).allocate(world.add("a", v4=["used"]))
    for name, defaults in (("used", DEFAULTS), ("optout", DEFAULTS), ("v6", BlockSizeDefaults(ipv4=26))):
        obj = _read(store, name)
        assert stamp_default_block_size(store, obj, defaults) is obj
        assert _version(_read(store, name)) == _version(obj)  # nothing written
    # "none" is a plain pool: claims on its resourceVersion, the lowest free address, no block
    # claimed, the record on the pool
    assert store.usage("optout").resource_version == _version(_read(store, "optout"))
    world.pod("b")
    service = IpamService(store, node_name="node1", sleep=no_sleep)
    assert service.allocate(world.add("b", v4=["optout"])).ips[0].ip == "10.1.0.1"
    assert list_blocks(store) == []
    assert [r.ip for r in store.records("optout")] == ["10.1.0.1"]
    assert store.get("SpiderIPPool", "optout")["status"]["allocatedIPCount"] == 1


def test_an_allocation_or_another_agents_stamp_since_the_read_wins(store: Store) -> None:
    world = World(store)
    world.pool("p", "10.0.0.0/24", ["10.0.0.1-10.0.0.30"])
    world.pool("q", "10.1.0.0/24", ["10.1.0.1-10.1.0.30"])
    # an allocation from the plain pool after the agent read it: the stamp conflicts, the pool stays
    # plain, and read again it holds an allocation, so the default no longer applies
    stale = _read(store, "p")
    world.pod("a")
    IpamService(store, node_name="node2", sleep=no_sleep).allocate(world.add("a", v4=["p"]))
    with pytest.raises(Conflict):
        stamp_default_block_size(store, stale, DEFAULTS)
    fresh = _read(store, "p")
    assert "annotations" not in fresh["metadata"]
    assert stamp_default_block_size(store, fresh, DEFAULTS) is fresh
    # two agents with different defaults read the same pool: the first stamp wins, the second
    # conflicts and, reading again, finds the pool annotated and leaves it
    read1, read2 = _read(store, "q"), _read(store, "q")
    assert stamp_default_block_size(store, read1, BlockSizeDefaults(ipv4=28))["metadata"]["annotations"] == {
        ANNOTATION: "28"
    }
    with pytest.raises(Conflict):
        stamp_default_block_size(store, read2, DEFAULTS)
    again = _read(store, "q")
    assert stamp_default_block_size(store, again, DEFAULTS) is again
    assert again["metadata"]["annotations"] == {ANNOTATION: "28"}


def _annotations(store: Store, pool: str) -> dict[str, str]:
    return dict(store.get("SpiderIPPool", pool, allocated_ips=False)["metadata"].get("annotations") or {})


def test_the_first_allocation_writes_the_default_and_takes_a_block(store: Store) -> None:
    world = World(store)
    world.pool("fresh", "10.0.0.0/24", ["10.0.0.1-10.0.0.60"])
    world.pool("used", "10.1.0.0/24", ["10.1.0.1-10.1.0.60"])
    world.pool("optout", "10.2.0.0/24", ["10.2.0.1-10.2.0.60"])
    store.update({**store.get("SpiderIPPool", "optout"), "metadata": {
        **store.get("SpiderIPPool", "optout")["metadata"], "annotations": {ANNOTATION: "none"}}})  # fmt: skip
    plain = IpamService(store, node_name="node1", sleep=no_sleep)
    world.pod("u0", node="node1")
    assert plain.allocate(world.add("u0", v4=["used"])).ips[0].ip == "10.1.0.1"  # before any default

    settings = IpamSettings(enable_ipv6=False, block_size=BlockSizeDefaults(ipv4=28))
    n1 = IpamService(store, node_name="node1", settings=settings, sleep=no_sleep)
    n2 = IpamService(store, node_name="node2", settings=settings, sleep=no_sleep)
    got = {}
    for svc, pod in ((n1, "a"), (n2, "b"), (n1, "c")):
        world.pod(pod, node=svc.node_name)
        got[pod] = svc.allocate(world.add(pod, v4=["fresh"])).ips[0].ip
    assert _annotations(store, "fresh") == {ANNOTATION: "28"}
    assert got == {"a": "10.0.0.1", "b": "10.0.0.16", "c": "10.0.0.2"}  # each node in its own /28
    assert [(b.cidr, b.node) for b in list_blocks(store)] == [
        ("10.0.0.0/28", "node1"),
        ("10.0.0.16/28", "node2"),
    ]

    world.pod("u1", node="node2")
    assert n2.allocate(world.add("u1", v4=["used"])).ips[0].ip == "10.1.0.2"  # in use: stays plain
    world.pod("o1", node="node2")
    assert n2.allocate(world.add("o1", v4=["optout"])).ips[0].ip == "10.2.0.1"
    assert _annotations(store, "used") == {}
    assert _annotations(store, "optout") == {ANNOTATION: "none"}
    assert {b.pool for b in list_blocks(store)} == {"fresh"}
