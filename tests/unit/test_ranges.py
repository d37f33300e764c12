"""IP range math: literal Spiderpool cases and interval-set algebra checked against Python sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.ranges import (
    MAX_IP_COUNT,
    IntervalSet,
    canonical_cidr,
    canonical_ip,
    cidr_interval,
    cidr_label_value,
    int_to_ip,
    ip_to_int,
    is_canonical_cidr,
    total_ip_count,
)


def v4(*items: str) -> IntervalSet:
    return IntervalSet.from_strings(items, 4)


def v6(*items: str) -> IntervalSet:
    return IntervalSet.from_strings(items, 6)


# ---------------------------------------------------------------------------------------------- parsing


def test_seed_pool_size() -> None:
    s = v4("10.244.100.0-10.244.200.1")
    assert s.size == 25602
    assert s.to_strings(4) == ["10.244.100.0-10.244.200.1"]


def test_merges_adjacent_and_overlapping_and_sorts() -> None:
    s = v4("10.0.0.20-10.0.0.30", "10.0.0.11", "10.0.0.1-10.0.0.10", "10.0.0.25-10.0.0.35", "10.0.0.50")
    assert s.to_strings(4) == ["10.0.0.1-10.0.0.11", "10.0.0.20-10.0.0.35", "10.0.0.50"]
    assert s.size == 11 + 16 + 1


def test_single_address_and_degenerate_range_print_as_one_address() -> None:
    assert v4("10.0.0.7-10.0.0.7").to_strings(4) == ["10.0.0.7"]


def test_ipv6_edge_cases() -> None:
    s = v6("::", "::1", "fd00:0:0::1-fd00::3", "FD00::4")
    assert s.to_strings(6) == ["::-::1", "fd00::1-fd00::4"]
    assert v6("fd00:0000:0000:0000:0000:0000:0000:0005").to_strings(6) == ["fd00::5"]
    slash64 = IntervalSet.from_cidr("fd00:1:2:3::/64")
    assert slash64.size == 2**64
    assert slash64.to_strings(6) == ["fd00:1:2:3::-fd00:1:2:3:ffff:ffff:ffff:ffff"]


def test_slash8_costs_one_interval() -> None:
    s = IntervalSet.from_cidr("10.0.0.0/8")
    assert len(s) == 1 and s.size == 2**24
    hole = s - v4("10.1.2.3")
    assert len(hole) == 2 and hole.size == 2**24 - 1
    assert not hole.contains(ip_to_int("10.1.2.3", 4))
    assert hole.contains(ip_to_int("10.1.2.4", 4))


@pytest.mark.parametrize(
    ("item", "family", "reason"),
    [
        ("10.0.0.5-10.0.0.1", 4, "starts after it ends"),
        ("10.0.0.1 - 10.0.0.5", 4, "contains spaces"),
        (" 10.0.0.1", 4, "contains spaces"),
        ("10.0.0.1-fd00::1", 4, "mixes IPv4 and IPv6"),
        ("fd00::1", 4, "is not IPv4"),
        ("10.0.0.1", 6, "is not IPv6"),
        ("10.0.0.0/24", 4, "is not an IP address"),
        ("010.0.0.1", 4, "is not an IP address"),
        ("10.1", 4, "is not an IP address"),
        ("10.0.0.256", 4, "is not an IP address"),
        ("", 4, "is not an IP address"),
        ("10.0.0.1-", 4, "is not an IP address"),
    ],
)
def test_bad_items_name_the_item(item: str, family: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as err:
        IntervalSet.from_strings(["10.0.0.9", item] if family == 4 else [item], family)
    assert f'"{item}"' in str(err.value)


def test_a_bare_string_is_not_a_list() -> None:
    with pytest.raises(ValueError, match="list"):
        IntervalSet.from_strings("10.0.0.1", 4)


def test_non_string_item() -> None:
    with pytest.raises(ValueError, match="not a string"):
        IntervalSet.from_strings([167772161], 4)  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------- helpers


def test_ip_int_round_trip_and_canonical_text() -> None:
    assert ip_to_int("10.0.0.1", 4) == 0x0A000001
    assert int_to_ip(0x0A000001, 4) == "10.0.0.1"
    assert int_to_ip(0, 6) == "::"
    assert canonical_ip("FD00:0:0:0::0A") == "fd00::a"
    with pytest.raises(ValueError):
        ip_to_int("10.0.0.1", 6)
    with pytest.raises(ValueError):
        int_to_ip(2**32, 4)
    with pytest.raises(ValueError):
        canonical_ip("10.0.0.1/32")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("10.0.0.0/16", True),
        ("10.0.5.0/16", False),
        ("172.10.0.0/16", True),
        ("172.10.5.0/16", False),
        ("10.0.0.1/32", True),
        ("0.0.0.0/0", True),
        ("fd00::/64", True),
        ("fd00::1/64", False),
        ("fd00:0::/64", True),
        ("10.0.0.0", False),
        ("10.0.0.0/33", False),
        ("10.0.0.0/016", False),
        ("10.0.0.0/", False),
        ("10.0.0.0/ 8", False),
        ("fd00::/129", False),
        ("bogus/8", False),
    ],
)
def test_is_canonical_cidr(text: str, ok: bool) -> None:
    assert is_canonical_cidr(text) is ok


def test_cidr_helpers() -> None:
    assert cidr_label_value("10.244.0.0/16") == "10-244-0-0-16"
    assert cidr_label_value("fd00:10::/64") == "fd00-10---64"
    assert canonical_cidr("FD00:0::/64") == "fd00::/64"
    assert cidr_interval("10.0.0.0/30") == (0x0A000000, 0x0A000003)


def test_total_ip_count_saturates() -> None:
    assert total_ip_count(25602) == 25602
    assert total_ip_count(2**64) == MAX_IP_COUNT == 9223372036854775807
    assert total_ip_count(MAX_IP_COUNT) == MAX_IP_COUNT


# ---------------------------------------------------------------------------------------------- algebra

UNIVERSE = 64
intervals = st.lists(
    st.tuples(st.integers(0, UNIVERSE - 1), st.integers(0, 8)).map(
        lambda t: (t[0], min(t[0] + t[1], UNIVERSE))
    ),
    max_size=6,
)


def as_set(s: IntervalSet) -> set[int]:
    return {x for lo, hi in s for x in range(lo, hi + 1)}


def is_normal(s: IntervalSet) -> bool:
    return all(lo <= hi for lo, hi in s) and all(
        a[1] + 1 < b[0] for a, b in zip(s, s.intervals[1:], strict=False)
    )


@given(intervals, intervals)
def test_algebra_agrees_with_python_sets(a_raw: list[tuple[int, int]], b_raw: list[tuple[int, int]]) -> None:
    a, b = IntervalSet.of(a_raw), IntervalSet.of(b_raw)
    sa, sb = as_set(a), as_set(b)
    assert sa == {x for lo, hi in a_raw for x in range(lo, hi + 1)}
    for result, expected in ((a | b, sa | sb), (a & b, sa & sb), (a - b, sa - sb), (b - a, sb - sa)):
        assert is_normal(result)
        assert as_set(result) == expected
        assert result.size == len(expected)
    assert a.is_subset(b) == (sa <= sb)
    assert a.overlaps(b) == bool(sa & sb)
    for x in range(-1, UNIVERSE + 2):
        assert a.contains(x) == (x in sa)


@given(intervals)
def test_strings_round_trip(raw: list[tuple[int, int]]) -> None:
    base = ip_to_int("192.168.0.0", 4)
    s = IntervalSet.of((lo + base, hi + base) for lo, hi in raw)
    assert IntervalSet.from_strings(s.to_strings(4), 4) == s
    base6 = ip_to_int("fd00::fff0", 6)
    s6 = IntervalSet.of((lo + base6, hi + base6) for lo, hi in raw)
    assert IntervalSet.from_strings(s6.to_strings(6), 6) == s6
