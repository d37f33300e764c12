"""The Kubernetes backend of the contract suite: a KubeStore talking HTTP to a fresh emulator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ipam.store.kube import KubeStore
from ipam.store.protocol import Store
from tests.kube_emulator import KubeEmulator

__all__ = ["kube_backend"]


class _Options(Protocol):
    @property
    def history(self) -> int: ...


@contextmanager
def kube_backend(tmp: Path, options: _Options) -> Iterator[Store]:
    """An empty store: a new emulator (its watch history as the options say) and a KubeStore on it."""
    del tmp  # nothing on disk
    # The suite writes into namespaces it never creates (the embedded store has no namespace rule).
    # Bookmarks every 50 ms (the API server: about a minute), so a quiet watch's progress shows at once.
    emulator = KubeEmulator(history=options.history, require_namespaces=False, bookmark_interval=0.05).start()
    try:
        # As the agent's ServiceAccount, authorized by configs/kubernetes/rbac.yaml; the suite's writes
        # of what other actors write (pods, namespaces, new pools) are granted by cluster_actors.yaml.
        store = KubeStore.connect(emulator.configuration())
        try:
            yield store
        finally:
            store.close()
    finally:
        emulator.stop()
