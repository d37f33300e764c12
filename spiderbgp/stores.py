"""Opening the object store a command or the agent was pointed at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ipam.store import Store

__all__ = ["KUBERNETES", "open_store"]

KUBERNETES = "kubernetes"


def open_store(spec: str, *, kubeconfig: str | None = None, cached_kinds: Sequence[str] = ()) -> Store:
    """``spec`` is a SQLite path or ``kubernetes`` (in-cluster config, else ``kubeconfig``).

    ``cached_kinds`` (Kubernetes only) are served from an informer cache for hot-path reads; writes
    always go to the server.  Raises ipam.errors.StoreUnavailable with one line when it cannot open."""
    if spec == KUBERNETES:
        from ipam.kube_store import KubeStore, load_configuration

        return KubeStore.connect(load_configuration(kubeconfig), cached_kinds=cached_kinds)
    from ipam.sqlite_store import SqliteStore

    return SqliteStore(Path(spec).expanduser())
