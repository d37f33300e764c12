"""Errors every layer of the IPAM may raise.

Each carries enough to print one clear line that names the object and the field; nothing here
formats a traceback.  The store errors mirror the Kubernetes API's status reasons so that both
backends raise the same things (NotFound 404, AlreadyExists 409, Conflict 409, Gone 410, Invalid 422).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AllocationError",
    "AllocationReason",
    "AlreadyExists",
    "Conflict",
    "Gone",
    "Invalid",
    "IpamError",
    "NotFound",
    "PoolFull",
    "StoreError",
    "StoreUnavailable",
    "WouldBlock",
]


class IpamError(Exception):
    """Base class: ``str(err)`` is the one line shown to a user."""


class StoreError(IpamError):
    """A failure reported by an object store."""


class NotFound(StoreError):
    def __init__(self, kind: str, name: str, namespace: str = "") -> None:
        self.kind, self.name, self.namespace = kind, name, namespace
        where = f"{namespace}/{name}" if namespace else name
        super().__init__(f'{kind} "{where}" not found')


class AlreadyExists(StoreError):
    def __init__(self, kind: str, name: str, namespace: str = "") -> None:
        self.kind, self.name, self.namespace = kind, name, namespace
        where = f"{namespace}/{name}" if namespace else name
        super().__init__(f'{kind} "{where}" already exists')


class Conflict(StoreError):
    """A write whose resourceVersion precondition failed, or an IP another writer claimed first.

    Retryable: the caller re-reads and tries again."""


class Gone(StoreError):
    """A watch asked for a revision the store no longer keeps (HTTP 410): re-list, then watch again."""


class WouldBlock(Exception):
    """A call in group-commit mode (``IpamService.grouped``) would have waited: for another writer
    of the store, or for the back-off before a retry.  It raised this before writing anything, so the
    caller can make the same call again where waiting is fine.  Not an IpamError: it never reaches a
    user."""


class StoreUnavailable(StoreError):
    """The store could not be reached (retryable: the CNI plugin maps it to 'try again later')."""


class Invalid(IpamError):
    """An object failed admission.  Message: ``SpiderIPPool "name": spec.ips: reason``."""

    def __init__(self, kind: str, name: str, field: str, reason: str) -> None:
        self.kind, self.name, self.field, self.reason = kind, name, field, reason
        super().__init__(f'{kind} "{name}": {field}: {reason}')


class AllocationReason(StrEnum):
    """Why no IP could be allocated: what the agent maps to a CNI error code (by a table in
    spiderbgp/ipam_backend.py), never the message text.  The values are stable words."""

    EXHAUSTED = "exhausted"  # every candidate pool is full
    AWAITING_POOL = "awaiting-pool"  # an auto pool the SpiderSubnet controller has yet to make or grow
    NO_POOL = "no-pool"  # no eligible candidate pool
    POD_NOT_FOUND = "pod-not-found"  # the store does not show the pod (yet)
    POD_DEAD = "pod-dead"  # the pod is terminating or finished
    UID_MISMATCH = "uid-mismatch"  # the runtime asked for another incarnation of the pod
    CONFLICT = "conflict"  # the store kept changing under every attempt
    MISMATCH = "mismatch"  # CHECK: the reservation is not what the runtime expects
    OTHER = "other"


# a retry can succeed once the store or the leader's controllers catch up
_RETRYABLE = frozenset(
    {
        AllocationReason.AWAITING_POOL,
        AllocationReason.POD_NOT_FOUND,
        AllocationReason.UID_MISMATCH,
        AllocationReason.CONFLICT,
    }
)


class AllocationError(IpamError):
    """No IP could be allocated; the message names the pools tried and why each was skipped, and
    ``reason`` says what kind of failure it is (``retryable`` follows from it)."""

    def __init__(self, message: str, *, reason: AllocationReason = AllocationReason.OTHER) -> None:
        self.reason = reason
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        return self.reason in _RETRYABLE


class PoolFull(AllocationError):
    """A pool cannot take another record in this store (one Kubernetes object holds a bounded number of
    records); the allocator moves on to the next candidate pool."""

    def __init__(self, pool: str, message: str) -> None:
        self.pool = pool
        super().__init__(message, reason=AllocationReason.EXHAUSTED)
