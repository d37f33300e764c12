"""Fixtures of the Kubernetes tests: an emulated API server and stores talking HTTP to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipam.store.kube import KubeStore
from tests.kube_emulator import KubeEmulator, kube_emulator

__all__ = ["kube_emulator", "kube_store", "store_factory"]


@pytest.fixture
def store_factory(kube_emulator: KubeEmulator) -> Iterator[Callable[..., KubeStore]]:
    """Make KubeStores on the test's emulator (closed after the test)."""
    made: list[KubeStore] = []

    def make(*, token: str | None = None, **kwargs: Any) -> KubeStore:
        """``token``: who the store is (default: the harness, see ``KubeEmulator.configuration``)."""
        store = KubeStore.connect(kube_emulator.configuration(token), **kwargs)
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            store.close()


@pytest.fixture
def kube_store(store_factory: Callable[..., KubeStore]) -> KubeStore:
    return store_factory()
