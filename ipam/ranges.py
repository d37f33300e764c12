"""IP range math: sets of addresses kept as sorted, merged, inclusive integer intervals.

Spiderpool writes address sets as lists of ``"a.b.c.d"`` and ``"a.b.c.d-e.f.g.h"`` items.  Here such a
list becomes an :class:`IntervalSet`: a tuple of ``(first, last)`` integer pairs, sorted and with
overlapping or adjacent pairs joined.  Every operation costs time and memory in the number of intervals,
never in the number of addresses, so an IPv6 /64 costs what a /30 costs.  netaddr does the parsing and
printing; the arithmetic is on plain integers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import netaddr

__all__ = [
    "MAX_IP_COUNT",
    "Family",
    "Interval",
    "IntervalSet",
    "address_value",
    "canonical_cidr",
    "canonical_ip",
    "cidr_interval",
    "cidr_label_value",
    "family_of_cidr",
    "family_of_ip",
    "int_to_ip",
    "ip_to_int",
    "is_canonical_cidr",
    "parse_cidr",
    "parse_range",
    "total_ip_count",
]

Interval = tuple[int, int]
"""An inclusive range of addresses as integers: ``(first, last)`` with ``first <= last``."""

Family = Literal[4, 6]

MAX_IP_COUNT = 9223372036854775807
"""Kubernetes int64 maximum: ``status.totalIPCount`` saturates here (a /64 holds 2**64 addresses)."""

_BITS: dict[int, int] = {4: 32, 6: 128}


def _check_family(family: int) -> None:
    if family not in _BITS:
        raise ValueError(f"IP family must be 4 or 6, not {family!r}")


def _parse_ip(text: str) -> netaddr.IPAddress:
    """Strict parse of one bare address (no spaces, no prefix, no zone, no short IPv4 forms)."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string")
    if not text or text != text.strip() or "/" in text or "%" in text:
        raise ValueError(f'"{text}" is not a valid IP address')
    try:
        return netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f'"{text}" is not a valid IP address') from None


def family_of_ip(text: str) -> Family:
    """4 or 6 for a valid bare address; ValueError naming the text otherwise."""
    return 4 if _parse_ip(text).version == 4 else 6


def _ipv4_value(text: object) -> int | None:
    """An IPv4 address in dotted-quad form through inet_pton (strict: four decimal parts, no leading
    zeros; ~20x cheaper than netaddr, and records are parsed on every read of a pool or block), or None
    for anything else (which then takes the general path and its error)."""
    if not isinstance(text, str) or ":" in text:
        return None
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        return None


def address_value(text: str) -> int:
    """The integer value of a bare address of either family; ValueError naming the text otherwise."""
    value = _ipv4_value(text)
    return value if value is not None else int(_parse_ip(text))


def ip_to_int(text: str, family: int) -> int:
    """The integer value of a bare address of the given family; ValueError naming the text otherwise."""
    _check_family(family)
    if family == 4:
        value = _ipv4_value(text)
        if value is not None:
            return value
    addr = _parse_ip(text)
    if addr.version != family:
        raise ValueError(f'"{text}" is not an IPv{family} address')
    return int(addr)


def int_to_ip(value: int, family: int) -> str:
    """Canonical text of an integer address (``10.0.0.1``, ``fd00::1``)."""
    _check_family(family)
    if not 0 <= value < (1 << _BITS[family]):
        raise ValueError(f"{value} is out of range for IPv{family}")
    if family == 4:  # on every ADD: inet_ntoa is about 6x cheaper than netaddr
        return socket.inet_ntoa(value.to_bytes(4, "big"))
    return str(netaddr.IPAddress(value, family))


def canonical_ip(text: str) -> str:
    """The canonical text of a bare address (lower case, IPv6 compressed); ValueError if invalid."""
    value = _ipv4_value(text)
    if value is not None:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return str(_parse_ip(text))


def parse_cidr(text: str) -> netaddr.IPNetwork:
    """Strict parse of ``address/prefix``: the prefix is required, decimal, without leading zeros."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string")
    addr_text, slash, prefix_text = text.partition("/")
    if not slash:
        raise ValueError(f'"{text}" is not a CIDR (missing "/prefix")')
    if not prefix_text.isdigit() or not prefix_text.isascii() or str(int(prefix_text)) != prefix_text:
        raise ValueError(f'"{text}" has an invalid prefix length')
    try:
        addr = _parse_ip(addr_text)
    except ValueError:
        raise ValueError(f'"{text}" is not a valid CIDR') from None
    prefix = int(prefix_text)
    if prefix > _BITS[addr.version]:
        raise ValueError(f'"{text}" has a prefix length above {_BITS[addr.version]}')
    return netaddr.IPNetwork(f"{addr}/{prefix}")


def family_of_cidr(text: str) -> Family:
    return 4 if parse_cidr(text).version == 4 else 6


def is_canonical_cidr(text: str) -> bool:
    """True for a valid CIDR whose address is its network address (``10.0.0.0/16``, not ``10.0.5.0/16``)."""
    try:
        net = parse_cidr(text)
    except ValueError:
        return False
    return bool(int(net.ip) == int(net.first))


def canonical_cidr(text: str) -> str:
    """The canonical text of a CIDR as written (``FD00:0::/64`` -> ``fd00::/64``); ValueError if invalid.

    The host bits are kept, so a non-canonical CIDR stays visibly non-canonical."""
    net = parse_cidr(text)
    return f"{net.ip}/{net.prefixlen}"


def cidr_interval(text: str) -> Interval:
    """The addresses a CIDR covers, network to broadcast address inclusive."""
    net = parse_cidr(text)
    return (int(net.first), int(net.last))


def cidr_label_value(text: str) -> str:
    """A CIDR as a Kubernetes label value: ``10.244.0.0/16`` -> ``10-244-0-0-16`` (``.``, ``:``, ``/`` -> ``-``)."""
    return text.replace(".", "-").replace(":", "-").replace("/", "-")


def total_ip_count(size: int) -> int:
    """A count as Kubernetes stores it: saturating at the int64 maximum."""
    return min(size, MAX_IP_COUNT)


def _normalise(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sort, drop nothing, and join overlapping or adjacent intervals."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if lo > hi:
            raise ValueError(f"interval ({lo}, {hi}) has its start after its end")
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


@dataclass(frozen=True)
class IntervalSet:
    """A set of addresses of one family as sorted, disjoint, non-adjacent inclusive intervals.

    Build it with :meth:`of` (which normalises) or :meth:`from_strings`; the plain constructor expects
    already-normalised intervals.  The set does not know its family: callers keep sets of different
    families apart and pass the family to :meth:`to_strings`.
    """

    intervals: tuple[Interval, ...] = ()

    @classmethod
    def of(cls, intervals: Iterable[Interval]) -> IntervalSet:
        return cls(_normalise(intervals))

    @classmethod
    def from_strings(cls, items: Iterable[str], family: int) -> IntervalSet:
        """Parse Spiderpool's range items (``"a"`` or ``"a-b"``, no spaces, ``a <= b``, one family).

        ValueError names the offending item and the reason."""
        _check_family(family)
        if isinstance(items, str):
            raise ValueError(f'expected a list of IP ranges, got the string "{items}"')
        return cls.of(parse_range(item, family) for item in items)

    @classmethod
    def from_cidr(cls, text: str) -> IntervalSet:
        return cls((cidr_interval(text),))

    def to_strings(self, family: int) -> list[str]:
        """Spiderpool's merged format: a single address as ``"a"``, a run as ``"a-b"``."""
        _check_family(family)
        out: list[str] = []
        for lo, hi in self.intervals:
            if lo == hi:
                out.append(int_to_ip(lo, family))
            else:
                out.append(f"{int_to_ip(lo, family)}-{int_to_ip(hi, family)}")
        return out

    def __iter__(self) -> Iterator[Interval]:
        return iter(self.intervals)

    def __len__(self) -> int:
        """The number of intervals (not addresses: see :attr:`size`)."""
        return len(self.intervals)

    def __bool__(self) -> bool:
        return bool(self.intervals)

    @property
    def size(self) -> int:
        """The exact number of addresses."""
        return sum(hi - lo + 1 for lo, hi in self.intervals)

    @property
    def first(self) -> int | None:
        return self.intervals[0][0] if self.intervals else None

    @property
    def last(self) -> int | None:
        return self.intervals[-1][1] if self.intervals else None

    def contains(self, value: int) -> bool:
        """Membership of one address, by binary search over the intervals."""
        lo_i, hi_i = 0, len(self.intervals)
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            lo, hi = self.intervals[mid]
            if value < lo:
                hi_i = mid
            elif value > hi:
                lo_i = mid + 1
            else:
                return True
        return False

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.contains(value)

    def union(self, other: IntervalSet) -> IntervalSet:
        return IntervalSet.of((*self.intervals, *other.intervals))

    def intersection(self, other: IntervalSet) -> IntervalSet:
        a, b = self.intervals, other.intervals
        i = j = 0
        out: list[Interval] = []
        while i < len(a) and j < len(b):
            lo = max(a[i][0], b[j][0])
            hi = min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return IntervalSet(tuple(out))

    def difference(self, other: IntervalSet) -> IntervalSet:
        b = other.intervals
        j = 0
        out: list[Interval] = []
        for lo, hi in self.intervals:
            cur = lo
            while j < len(b) and b[j][1] < cur:
                j += 1
            k = j
            while k < len(b) and b[k][0] <= hi:
                if b[k][0] > cur:
                    out.append((cur, b[k][0] - 1))
                cur = max(cur, b[k][1] + 1)
                if cur > hi:
                    break
                k += 1
            if cur <= hi:
                out.append((cur, hi))
        return IntervalSet(tuple(out))

    def is_subset(self, other: IntervalSet) -> bool:
        return not self.difference(other)

    def overlaps(self, other: IntervalSet) -> bool:
        return bool(self.intersection(other))

    def __or__(self, other: IntervalSet) -> IntervalSet:
        return self.union(other)

    def __and__(self, other: IntervalSet) -> IntervalSet:
        return self.intersection(other)

    def __sub__(self, other: IntervalSet) -> IntervalSet:
        return self.difference(other)


def parse_range(item: object, family: int) -> Interval:
    """One Spiderpool range item (``"a"`` or ``"a-b"``) as an interval; ValueError names the item."""
    _check_family(family)
    if not isinstance(item, str):
        raise ValueError(f"{item!r} is not a string")
    if item != item.strip() or " " in item:
        raise ValueError(f'"{item}" contains spaces')
    start_text, dash, end_text = item.partition("-")
    try:
        start = _parse_ip(start_text)
        end = _parse_ip(end_text) if dash else start
    except ValueError:
        raise ValueError(f'"{item}" is not an IP address or a range "a-b"') from None
    if start.version != end.version:
        raise ValueError(f'"{item}" mixes IPv4 and IPv6')
    if start.version != family:
        raise ValueError(f'"{item}" is not IPv{family}')
    if int(start) > int(end):
        raise ValueError(f'"{item}" starts after it ends')
    return (int(start), int(end))
