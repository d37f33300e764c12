"""Group commit as one mode of the service (``IpamService.grouped``), over the store's optional
``GroupCommit`` capability: what the agent uses to answer the CNI calls of one event-loop turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipam.errors import AllocationError, WouldBlock
from ipam.service import IpamService
from ipam.store.sqlite import SqliteStore
from spiderbgp.stores import transaction
from tests.service.conftest import KubeWorld
from tests.service.test_allocate import ippool
from tests.service.world import World


def test_grouped_calls_share_one_commit(world: World, service: IpamService, tmp_path: Path) -> None:
    world.pool("g", "10.8.0.0/24", ["10.8.0.1-10.8.0.9"])
    for name in ("a", "b", "c"):
        world.pod(name, annotations=ippool(["g"]))
    other = SqliteStore(tmp_path / "state.db")  # another instance of the file: sees only commits
    try:
        before = other.revision()
        assert service.can_group
        with service.grouped(0.0):
            got = [service.allocate(world.add(name)).ips[0].ip for name in ("a", "b")]
            # a call that fails leaves nothing and the others stand (each call is a savepoint)
            world.set_phase("c", "Succeeded")
            with pytest.raises(AllocationError, match="dead pod"):
                service.allocate(world.add("c"))
            assert other.revision() == before  # nothing is visible before the block ends
        assert got == ["10.8.0.1", "10.8.0.2"]
        assert [r.ip for r in other.records("g")] == ["10.8.0.1", "10.8.0.2"]
    finally:
        other.close()


def test_grouped_mode_waits_for_no_other_writer(world: World, service: IpamService, tmp_path: Path) -> None:
    world.pool("g", "10.8.0.0/24", ["10.8.0.1-10.8.0.9"])
    world.pod("a", annotations=ippool(["g"]))
    request = world.add("a")
    other = SqliteStore(tmp_path / "state.db")
    try:
        revision = other.revision()
        # another writer holds the writer lock
        with other.batch(), pytest.raises(WouldBlock), service.grouped(0.001):
            service.allocate(request)
        assert other.revision() == revision and other.records("g") == []
        # outside the mode the same call waits as long as it takes, and is made
        assert service.allocate(request).ips[0].ip == "10.8.0.1"
    finally:
        other.close()


def test_a_release_in_grouped_mode_is_durable_when_the_block_ends(
    world: World, service: IpamService, store: SqliteStore
) -> None:
    world.pool("g", "10.8.0.0/24", ["10.8.0.1-10.8.0.9"])
    world.pod("a", annotations=ippool(["g"]))
    add = world.add("a")
    service.allocate(add)
    world.delete_pod("a")
    with service.grouped(0.0):
        released = service.release(world.delete_request(add))
    assert [r.ip for r in released.records] == ["10.8.0.1"]
    assert store.records("g") == []


def test_a_store_without_group_commit_has_no_grouped_mode(kube_world: KubeWorld) -> None:
    service = kube_world.service
    assert service.store.group_commit() is None and not service.can_group
    assert transaction(service.store) is None
    with pytest.raises(TypeError, match="no group commit"), service.grouped(0.0):
        pass
