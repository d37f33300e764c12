"""The IPv4 fast path of ``ipam.ranges`` (inet_pton) agrees with the general netaddr path on every
input: the same value, the same canonical text, and the same refusals."""

from __future__ import annotations

import netaddr
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.ranges import address_value, canonical_ip, ip_to_int

_octet = st.one_of(st.integers(0, 255).map(str), st.sampled_from(["00", "01", "256", "-1", "", " 1", "0x1"]))
_texts = st.one_of(
    st.lists(_octet, min_size=1, max_size=5).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.text(max_size=20),
)


def _netaddr_value(text: str) -> int | None:
    if not text or text != text.strip() or "/" in text or "%" in text:
        return None
    try:
        addr = netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    return int(addr) if addr.version == 4 else None


@given(_texts)
def test_the_fast_path_matches_netaddr(text: str) -> None:
    expected = _netaddr_value(text)
    if expected is None:
        with pytest.raises(ValueError):
            ip_to_int(text, 4)
        return
    assert ip_to_int(text, 4) == expected
    assert address_value(text) == expected
    assert canonical_ip(text) == str(netaddr.IPAddress(text))


@given(st.ip_addresses(v=6))
def test_ipv6_takes_the_general_path(addr: object) -> None:
    text = str(addr)
    assert address_value(text) == int(netaddr.IPAddress(text))
    assert canonical_ip(text.upper()) == str(netaddr.IPAddress(text))
