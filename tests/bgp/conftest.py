"""Fixtures for the BGP speaker tests: a router + node namespace pair (see labkit.py).

The namespaces are built by a synchronous fixture: lab.netns uses pyroute2's synchronous IPRoute,
which must not run inside the test's event loop.  The async wrapper stops the speakers first."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.bgp.labkit import BgpLab, bgp_lab, stop_speakers


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")


@pytest.fixture
def lab_v4() -> Iterator[BgpLab]:
    _need_root()
    with bgp_lab() as built:
        yield built


@pytest.fixture
def lab_v6() -> Iterator[BgpLab]:
    _need_root()
    with bgp_lab(ipv6=True) as built:
        yield built


@pytest.fixture
async def lab(lab_v4: BgpLab) -> AsyncIterator[BgpLab]:
    try:
        yield lab_v4
    finally:
        await stop_speakers(lab_v4)


@pytest.fixture
async def lab6(lab_v6: BgpLab) -> AsyncIterator[BgpLab]:
    try:
        yield lab_v6
    finally:
        await stop_speakers(lab_v6)
