"""The values the object store and the pure core share: Kubernetes-shaped objects (``Obj``), watch
events, allocation records and claims, and a pool's usage (its allocated addresses as a sorted view).

Pure data, no I/O: the store protocol (``ipam.store.protocol``) and its backends hand these out, and
the pure core (allocator, GC policy, workload rules) reads them.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

__all__ = ["Claim", "IPRecord", "Obj", "PoolUsage", "SortedPrefix", "WatchEvent"]

Obj = dict[str, Any]


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    object: Obj
    revision: str  # the store revision of this change (resume a watch from here)


@dataclass(frozen=True)
class IPRecord:
    """One allocated IP of one pool, in Spiderpool's terms ({"pod": "ns/name", "podUid": uid})."""

    pool: str
    ip: str  # canonical bare address, no prefix length ("10.244.100.90", "fd00::5a")
    pod: str  # "namespace/name"
    pod_uid: str


@dataclass(frozen=True)
class PoolUsage:
    """A consistent snapshot of one pool: its resourceVersion and the IPs allocated in it.

    ``allocated`` is sorted ascending by integer value and holds ``int(netaddr.IPAddress(ip))`` for
    each record (the pure allocator works on integers).  It is a read-only view: do not mutate it.
    """

    pool: str
    resource_version: str
    allocated: Sequence[int]


@dataclass(frozen=True)
class Claim:
    """Give ``ip`` of ``pool`` to a pod.  ``pool_version`` is the pool resourceVersion the caller read."""

    pool: str
    pool_version: str
    ip: str
    pod: str  # "namespace/name"
    pod_uid: str


class SortedPrefix(Sequence[int]):
    """A read-only view of the first ``length`` items of an ascending list of addresses.

    A store's usage cache hands these out and only ever appends to a list it has handed out (other
    changes build a new list), so a view stays a consistent snapshot without copying.
    :func:`lowest_free` searches the list itself (in C) instead of going through ``__getitem__``."""

    __slots__ = ("_items", "_length")

    def __init__(self, items: list[int], length: int) -> None:
        self._items = items
        self._length = length

    @property
    def items(self) -> list[int]:
        """The backing list: only its first ``len(self)`` items belong to this view."""
        return self._items

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...

    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if isinstance(index, slice):
            return tuple(self._items[: self._length][index])
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("index out of range")
        return self._items[index]

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._items, self._length)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect.bisect_left(self._items, value, 0, self._length)
        return i < self._length and self._items[i] == value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(other) == self._length and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SortedPrefix({list(self)!r})"
