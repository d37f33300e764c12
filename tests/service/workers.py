"""The process side of test_processes: an allocator process that runs the real IpamService on its own
SqliteStore over a shared database file.  Kept apart from the test module so a spawned child imports
only what it needs (no pytest)."""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from ipam.errors import AllocationError
from ipam.service import AllocateRequest, IpamService
from ipam.store.sqlite import SqliteStore

POOL = "storm"
MAX_TRIES = 200

Report = tuple[str, str, str, int]  # pod name, pod UID, IP, store conflicts met before it succeeded


def allocator(path: str, node: str, pods: Sequence[tuple[str, str]], go: Event, report: Connection) -> None:
    """Say "ready" (``None``) once the store is open; when ``go`` is set, ADD every (name, uid) in order, sending a Report as soon as each ADD returns
    (the service promises the record is durable by then).  A retryable failure (the store kept
    changing under the service's own bounded retries) is retried here, as the kubelet would."""
    store = SqliteStore(path)
    conflicts = 0

    def count_conflict() -> None:
        nonlocal conflicts
        conflicts += 1

    service = IpamService(store, node_name=node, on_conflict=count_conflict)
    try:
        report.send(None)
        go.wait(60)
        for name, uid in pods:
            request = AllocateRequest(
                container_id=f"ctr-{name}",
                nic="eth0",
                pod_namespace="default",
                pod_name=name,
                pod_uid=uid,
                default_v4_pools=(POOL,),
            )
            conflicts = 0
            for _ in range(MAX_TRIES):
                try:
                    got = service.allocate(request)
                except AllocationError as exc:
                    if not exc.retryable:
                        raise
                    continue
                report.send((name, uid, got.ips[0].ip, conflicts))
                break
            else:
                raise RuntimeError(f"{name}: no IP after {MAX_TRIES} attempts")
    finally:
        store.close()
        report.close()
