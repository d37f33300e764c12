"""The pure allocator: lowest free address, literal cases and Hypothesis properties."""

from __future__ import annotations

from bisect import insort
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ipam.allocator import free_intervals, lowest_free
from ipam.model import IPPool
from ipam.ranges import IntervalSet, int_to_ip, ip_to_int


def pool(subnet: str, ips: list[str], exclude: list[str] | None = None) -> IPPool:
    spec: dict[str, Any] = {"subnet": subnet, "ips": ips}
    if exclude:
        spec["excludeIPs"] = exclude
    return IPPool.from_obj({"kind": "SpiderIPPool", "metadata": {"name": "p"}, "spec": spec})


def n4(text: str) -> int:
    return ip_to_int(text, 4)


def n6(text: str) -> int:
    return ip_to_int(text, 6)


def test_seed_pool_first_allocations() -> None:
    p = pool("10.244.0.0/16", ["10.244.100.0-10.244.200.1"])
    free = free_intervals(p, IntervalSet())
    allocated: list[int] = []
    got = []
    for _ in range(3):
        ip = lowest_free(free, allocated)
        assert ip is not None
        insort(allocated, ip)
        got.append(int_to_ip(ip, 4))
    assert got == ["10.244.100.0", "10.244.100.1", "10.244.100.2"]


def test_skips_excluded_reserved_and_allocated() -> None:
    p = pool("10.0.0.0/24", ["10.0.0.1-10.0.0.10"], exclude=["10.0.0.1", "10.0.0.3"])
    reserved = IntervalSet.from_strings(["10.0.0.4"], 4)
    free = free_intervals(p, reserved)
    assert free.to_strings(4) == ["10.0.0.2", "10.0.0.5-10.0.0.10"]
    assert lowest_free(free, []) == n4("10.0.0.2")
    assert lowest_free(free, [n4("10.0.0.2")]) == n4("10.0.0.5")
    assert lowest_free(free, [n4("10.0.0.2"), n4("10.0.0.5"), n4("10.0.0.6")]) == n4("10.0.0.7")
    # a hole in the middle of the run is found
    assert lowest_free(free, [n4(f"10.0.0.{i}") for i in (2, 5, 6, 8, 9)]) == n4("10.0.0.7")


def test_allocated_outside_free_is_ignored() -> None:
    p = pool("10.0.0.0/24", ["10.0.0.10-10.0.0.12"])
    # 10.0.0.1 was handed out before it left the pool; 10.0.0.200 belongs to nobody here
    allocated = [n4("10.0.0.1"), n4("10.0.0.10"), n4("10.0.0.200")]
    assert lowest_free(free_intervals(p, IntervalSet()), allocated) == n4("10.0.0.11")


def test_exhausted_and_empty() -> None:
    p = pool("10.0.0.0/30", ["10.0.0.1-10.0.0.2"])
    free = free_intervals(p, IntervalSet())
    assert lowest_free(free, [n4("10.0.0.1"), n4("10.0.0.2")]) is None
    assert lowest_free(IntervalSet(), []) is None
    assert lowest_free(free_intervals(pool("10.0.0.0/30", []), IntervalSet()), []) is None


def test_slash8_pool_with_one_allocation() -> None:
    p = pool("10.0.0.0/8", ["10.0.0.0-10.255.255.255"], exclude=["10.0.0.0"])
    free = free_intervals(p, IntervalSet())
    assert lowest_free(free, [n4("10.0.0.1")]) == n4("10.0.0.2")
    # the whole /8 but its last address taken, expressed as one run: still one bisection
    taken = range(n4("10.0.0.1"), n4("10.255.255.255"))
    assert lowest_free(free, taken) == n4("10.255.255.255")
    assert lowest_free(free, range(n4("10.0.0.1"), n4("10.255.255.255") + 1)) is None


def test_ipv6_slash64_pool() -> None:
    p = pool("fd00:10::/64", ["fd00:10::-fd00:10::ffff:ffff:ffff:ffff"], exclude=["fd00:10::"])
    free = free_intervals(p, IntervalSet.from_strings(["fd00:10::2"], 6))
    assert free.size == 2**64 - 2
    assert lowest_free(free, []) == n6("fd00:10::1")
    assert lowest_free(free, [n6("fd00:10::1")]) == n6("fd00:10::3")
    # the first 2**62 addresses above ::3 taken (a range stands in for a huge sorted list)
    start = n6("fd00:10::3")
    upper = free.intersection(IntervalSet(((start, n6("fd00:10::ffff:ffff:ffff:ffff")),)))
    assert lowest_free(upper, range(start, start + 2**62)) == start + 2**62


def test_zero_address_and_edges() -> None:
    free = IntervalSet.from_strings(["::-::2"], 6)
    assert lowest_free(free, []) == 0
    assert lowest_free(free, [0, 2]) == 1
    assert (
        lowest_free(IntervalSet.from_strings(["255.255.255.254-255.255.255.255"], 4), [2**32 - 2])
        == 2**32 - 1
    )


# ---------------------------------------------------------------------------------------------- properties

UNIVERSE = 80
ranges_st = st.lists(
    st.tuples(st.integers(0, UNIVERSE - 1), st.integers(0, 10)).map(
        lambda t: (t[0], min(t[0] + t[1], UNIVERSE))
    ),
    max_size=5,
)
allocated_st = st.lists(st.integers(0, UNIVERSE + 5), unique=True, max_size=40).map(sorted)


def members(s: IntervalSet) -> set[int]:
    return {x for lo, hi in s for x in range(lo, hi + 1)}


@given(ranges_st, allocated_st)
def test_lowest_free_is_the_minimum_of_free_minus_allocated(
    raw: list[tuple[int, int]], allocated: list[int]
) -> None:
    free = IntervalSet.of(raw)
    expected = members(free) - set(allocated)
    got = lowest_free(free, allocated)
    if expected:
        assert got == min(expected)
    else:
        assert got is None


@given(ranges_st, ranges_st, ranges_st, allocated_st, st.integers(0, 30))
def test_repeated_allocation_is_unique_and_inside_the_pool(
    ips_raw: list[tuple[int, int]],
    exclude_raw: list[tuple[int, int]],
    reserved_raw: list[tuple[int, int]],
    preallocated: list[int],
    count: int,
) -> None:
    base = n4("10.20.0.0")

    def shift(raw: list[tuple[int, int]]) -> IntervalSet:
        return IntervalSet.of((lo + base, hi + base) for lo, hi in raw)

    ips, exclude, reserved = shift(ips_raw), shift(exclude_raw), shift(reserved_raw)
    p = pool("10.20.0.0/16", ips.to_strings(4), exclude.to_strings(4))
    free = free_intervals(p, reserved)
    allowed = members(ips) - members(exclude) - members(reserved)
    assert members(free) == allowed
    allocated = [a + base for a in preallocated]
    handed: list[int] = []
    for _ in range(count):
        ip = lowest_free(free, allocated)
        if ip is None:
            assert allowed <= set(allocated)
            break
        assert ip in allowed and ip not in allocated and ip not in handed
        handed.append(ip)
        insort(allocated, ip)


@given(ranges_st, allocated_st, st.data())
def test_allocate_then_release_restores_the_answer(
    raw: list[tuple[int, int]], allocated: list[int], data: st.DataObject
) -> None:
    free = IntervalSet.of(raw)
    before = lowest_free(free, allocated)
    if before is None:
        return
    after_alloc = list(allocated)
    insort(after_alloc, before)
    assert lowest_free(free, after_alloc) != before
    after_alloc.remove(before)
    assert lowest_free(free, after_alloc) == before
    # releasing any other address gives the lower of the two
    if allocated:
        victim = data.draw(st.sampled_from(allocated))
        released = [a for a in allocated if a != victim]
        expected = min(before, victim) if victim in members(free) else before
        assert lowest_free(free, released) == expected
