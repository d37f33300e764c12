"""The pure allocator: the lowest free address of a pool.

Spiderpool (since v0.9.4) hands out the first free address of the pool's merged, sorted ``ips`` minus
``excludeIPs``, reserved IPs and allocated IPs.  Here that is two steps: :func:`free_intervals` (set
algebra over intervals) and :func:`lowest_free` (binary search over the sorted list of allocated
addresses).  Neither builds a set of the pool's addresses nor walks the allocated list, so a /8 or an
IPv6 /64 pool costs what a /30 costs.
"""

from __future__ import annotations

import bisect
import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from typing import overload

from ipam.model import IPPool
from ipam.ranges import IntervalSet

__all__ = ["SortedPrefix", "free_intervals", "lowest_free"]


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


def free_intervals(pool: IPPool, reserved: IntervalSet) -> IntervalSet:
    """The addresses the pool may hand out now, before allocations: ``ips - excludeIPs - reserved``."""
    return pool.usable.difference(reserved)


def lowest_free(free: IntervalSet, allocated: Sequence[int]) -> int | None:
    """The lowest address of ``free`` that is not in ``allocated``, or None when every one is taken.

    ``allocated`` is strictly ascending (no duplicates) and may hold addresses outside ``free`` (an IP
    reserved or excluded after it was handed out).  Cost: O(#intervals * log len(allocated)).

    Within an interval ``[lo, hi]`` let ``a[i:j]`` be the allocated addresses it contains.  Because the
    list is strictly ascending, ``a[k] - (k - i)`` never decreases and is ``lo`` exactly while
    ``a[i..k]`` fill ``lo..`` without a gap; the first ``k`` where it exceeds ``lo`` marks the first
    hole, found by bisection.
    """
    items: Sequence[int] = allocated
    count = len(allocated)
    if isinstance(allocated, SortedPrefix):
        items = allocated.items  # the same values up to ``count``, without a Python call per probe
    for lo, hi in free.intervals:
        i = bisect_left(items, lo, 0, count)
        j = bisect_right(items, hi, i, count)
        # find the first k in [i, j) with allocated[k] - (k - i) > lo; j when the run has no gap
        left, right = i, j
        while left < right:
            mid = (left + right) // 2
            if items[mid] - (mid - i) > lo:
                right = mid
            else:
                left = mid + 1
        candidate = lo + (left - i)
        if candidate <= hi:
            return candidate
    return None
