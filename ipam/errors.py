"""Errors every layer of the IPAM may raise.

Each carries enough to print one clear line that names the object and the field; nothing here
formats a traceback.  The store errors mirror the Kubernetes API's status reasons so that both
backends raise the same things (NotFound 404, AlreadyExists 409, Conflict 409, Gone 410, Invalid 422).
"""

from __future__ import annotations

__all__ = [
    "AllocationError",
    "AlreadyExists",
    "Conflict",
    "Gone",
    "Invalid",
    "IpamError",
    "NotFound",
    "PoolFull",
    "StoreError",
    "StoreUnavailable",
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


class StoreUnavailable(StoreError):
    """The store could not be reached (retryable: the CNI plugin maps it to 'try again later')."""


class Invalid(IpamError):
    """An object failed admission.  Message: ``SpiderIPPool "name": spec.ips: reason``."""

    def __init__(self, kind: str, name: str, field: str, reason: str) -> None:
        self.kind, self.name, self.field, self.reason = kind, name, field, reason
        super().__init__(f'{kind} "{name}": {field}: {reason}')


class AllocationError(IpamError):
    """No IP could be allocated; the message names the pools tried and why each was skipped.

    ``reason`` is a stable word the agent maps to a CNI error code: ``exhausted`` (every candidate pool
    is full), ``no-pool`` (no eligible candidate), ``pod-not-found``, ``pod-dead``, ``uid-mismatch``,
    ``conflict`` (the store kept changing), ``mismatch`` (CHECK), or ``other``."""

    def __init__(self, message: str, *, retryable: bool = False, reason: str = "other") -> None:
        self.retryable = retryable
        self.reason = reason
        super().__init__(message)


class PoolFull(AllocationError):
    """A pool cannot take another record in this store (one Kubernetes object holds a bounded number of
    records); the allocator moves on to the next candidate pool."""

    def __init__(self, pool: str, message: str) -> None:
        self.pool = pool
        super().__init__(message, reason="exhausted")
