"""Fixtures for the IPAM service tests: a real SqliteStore in tmp_path and a small world builder that
creates pools (through admission, as ``spiderbgp apply`` does) and Kubernetes objects (through the
store, as the lab's kubelet stand-in does).

``kube_world`` runs the same world on the KubeStore and the API emulator in tests/ (both stores keep
terminating objects: deleted but held by a finalizer)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipam.service import IpamService, IpamSettings
from ipam.store.sqlite import SqliteStore
from tests.kube.backend import kube_backend
from tests.service.world import World


def no_sleep(_: float) -> None:
    """The service's backoff sleep: tests never wait."""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    db = SqliteStore(tmp_path / "state.db")
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def world(store: SqliteStore) -> World:
    return World(store)


@pytest.fixture
def service(store: SqliteStore) -> IpamService:
    return IpamService(store, node_name="node1", settings=IpamSettings(), sleep=no_sleep)


@dataclass(frozen=True)
class _EmulatorOptions:
    history: int = 10_000


@dataclass(frozen=True)
class KubeWorld:
    world: World
    service: IpamService


@pytest.fixture
def kube_world(tmp_path: Path) -> Iterator[KubeWorld]:
    """A World and an IpamService on the Kubernetes store, against a fresh API emulator."""
    with kube_backend(tmp_path, _EmulatorOptions()) as kube:
        yield KubeWorld(World(kube), IpamService(kube, node_name="node1", sleep=no_sleep))
