"""Opening the object store a command or the agent was pointed at."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from ipam.errors import StoreUnavailable
from ipam.store.protocol import Store

__all__ = ["KUBERNETES", "open_store", "transaction"]

KUBERNETES = "kubernetes"


def open_store(
    spec: str,
    *,
    kubeconfig: str | None = None,
    cached_kinds: Sequence[str] = (),
    max_pool_records: int | None = None,
    create: bool = True,
) -> Store:
    """``spec`` is a SQLite path or ``kubernetes`` (in-cluster config, else ``kubeconfig``).

    ``cached_kinds`` (Kubernetes only) are served from an informer cache for hot-path reads; writes
    always go to the server.  ``max_pool_records`` (Kubernetes only): records one pool object may hold
    (Spiderpool's SPIDERPOOL_IPPOOL_MAX_ALLOCATED_IPS).  Raises ipam.errors.StoreUnavailable with one
    line when it cannot open.  ``create=False`` (commands that only read or change what is there):
    a SQLite path that does not exist is refused instead of created, so a mistyped ``--store`` is an
    error rather than an empty store."""
    if spec == KUBERNETES:
        from ipam.store.kube import DEFAULT_MAX_POOL_RECORDS, KubeStore, load_configuration

        return KubeStore.connect(
            load_configuration(kubeconfig),
            cached_kinds=cached_kinds,
            max_pool_records=max_pool_records or DEFAULT_MAX_POOL_RECORDS,
        )
    from ipam.store.sqlite import SqliteStore

    path = Path(spec).expanduser()
    if not create and not path.exists():
        raise StoreUnavailable(
            f"{path}: no store database there (check --store or $SPIDERBGP_STORE; "
            "`spiderbgp apply` and the agent create one)"
        )
    return SqliteStore(path)


def transaction(store: Store) -> Callable[[], AbstractContextManager[None]] | None:
    """What makes several writes one commit on ``store``: its group commit's ``batch``; None for a
    store without one (the Kubernetes API has no transactions)."""
    group = store.group_commit()
    return group.batch if group is not None else None
