"""The contract suite's fixtures: every test in tests/contract runs once per backend in ``BACKENDS``.

Tests are written against the ``ipam.store.protocol.Store`` Protocol only.  Adding a backend is one line in
``BACKENDS``: a name and a factory.  A factory takes a fresh temporary directory and the
``BackendOptions`` and returns a context manager that yields an empty store and cleans up everything it
started when it exits (also when the test failed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipam.store.protocol import Store
from ipam.store.sqlite import SqliteStore
from tests.kube.backend import kube_backend


@dataclass(frozen=True)
class BackendOptions:
    """Knobs a test may ask of any backend."""

    history: int = 100_000  # how many watch events the store keeps (older revisions raise Gone)


StoreFactory = Callable[[Path, BackendOptions], AbstractContextManager[Store]]


@contextmanager
def sqlite_backend(tmp: Path, options: BackendOptions) -> Iterator[Store]:
    store = SqliteStore(tmp / "state.db", history=options.history, poll_interval=0.01)
    try:
        yield store
    finally:
        store.close()


BACKENDS: dict[str, StoreFactory] = {
    "sqlite": sqlite_backend,
    "kubernetes": kube_backend,
}

MakeStore = Callable[[BackendOptions], Store]


@pytest.fixture(params=sorted(BACKENDS))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """A function that opens a new, empty store of the backend under test (closed at teardown)."""
    factory = BACKENDS[request.param]
    with ExitStack() as stack:
        count = 0

        def make(options: BackendOptions) -> Store:
            nonlocal count
            count += 1
            directory = tmp_path / f"store{count}"
            directory.mkdir()
            return stack.enter_context(factory(directory, options))

        yield make


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    """An empty store of the backend under test, with default options."""
    return make_store(BackendOptions())
