"""Opening the object store a command or the agent was pointed at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ipam.store import Store

__all__ = ["KUBERNETES", "open_store"]

KUBERNETES = "kubernetes"


def open_store(
    spec: str,
    *,
    kubeconfig: str | None = None,
    cached_kinds: Sequence[str] = (),
    max_pool_records: int | None = None,
) -> Store:
    """``spec`` is a SQLite path or ``kubernetes`` (in-cluster config, else ``kubeconfig``).

    ``cached_kinds`` (Kubernetes only) are served from an informer cache for hot-path reads; writes
    always go to the server.  ``max_pool_records`` (Kubernetes only): records one pool object may hold
    (Spiderpool's SPIDERPOOL_IPPOOL_MAX_ALLOCATED_IPS).  Raises ipam.errors.StoreUnavailable with one
    line when it cannot open."""
    if spec == KUBERNETES:
        from ipam.kube_store import DEFAULT_MAX_POOL_RECORDS, KubeStore, load_configuration

        return KubeStore.connect(
            load_configuration(kubeconfig),
            cached_kinds=cached_kinds,
            max_pool_records=max_pool_records or DEFAULT_MAX_POOL_RECORDS,
        )
    from ipam.sqlite_store import SqliteStore

    return SqliteStore(Path(spec).expanduser())
