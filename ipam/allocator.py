"""The pure allocator: the lowest free address of a pool.

Spiderpool (since v0.9.4) hands out the first free address of the pool's merged, sorted ``ips`` minus
``excludeIPs``, reserved IPs and allocated IPs.  Here that is two steps: :func:`free_intervals` (set
algebra over intervals) and :func:`lowest_free` (binary search over the sorted list of allocated
addresses).  Neither builds a set of the pool's addresses nor walks the allocated list, so a /8 or an
IPv6 /64 pool costs what a /30 costs.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from ipam.model import IPPool
from ipam.ranges import IntervalSet
from ipam.records import SortedPrefix

__all__ = ["free_intervals", "lowest_free"]


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
