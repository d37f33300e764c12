"""ipam.block_default's decision, as properties over random pools, defaults and states: the default is
stamped exactly onto unannotated, live, unused pools of a family that has one, at a size admission
accepts for that pool (never shorter than its subnet), and never changes a pool's setting otherwise."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.admission import admit
from ipam.block_default import BlockSizeDefaults, default_annotation
from ipam.blocks import BLOCK_SIZE_ANNOTATION, block_size_of
from ipam.errors import Invalid
from ipam.model import IPPool
from ipam.ranges import int_to_ip

Obj = dict[str, Any]


def _defaults() -> st.SearchStrategy[BlockSizeDefaults]:
    return st.builds(
        BlockSizeDefaults,
        ipv4=st.none() | st.integers(20, 32),
        ipv6=st.none() | st.integers(116, 128),
    )


@st.composite
def _pools(draw: st.DrawFn, *, plain_and_live: bool = False) -> Obj:
    """SpiderIPPools of any subnet prefix; ``plain_and_live``: unannotated and not terminating."""
    family = draw(st.sampled_from((4, 6)))
    bits = 32 if family == 4 else 128
    prefix = draw(st.integers(8 if family == 4 else 64, bits))
    base = (10 << 24) if family == 4 else (0xFD00 << 112)
    network = base >> (bits - prefix) << (bits - prefix)
    first = int_to_ip(network, family)
    annotations = draw(
        st.none()
        if plain_and_live
        else st.none()
        | st.fixed_dictionaries({BLOCK_SIZE_ANNOTATION: st.sampled_from(["none", str(bits), "26", "x"])})
    )
    meta: Obj = {"name": "pool1", "resourceVersion": "7"}
    if annotations is not None:
        meta["annotations"] = annotations
    if not plain_and_live and draw(st.booleans()):
        meta["deletionTimestamp"] = "2026-12-08T00:00:00Z"
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": meta,
        "spec": {"subnet": f"{first}/{prefix}", "ips": [f"{first}-{first}"]},
    }


@given(pool=_pools(), defaults=_defaults(), held=st.booleans(), blocks=st.booleans())
def test_the_default_is_stamped_exactly_where_it_may_be_and_admission_takes_it(
    pool: Obj, defaults: BlockSizeDefaults, held: bool, blocks: bool
) -> None:
    meta = pool["metadata"]
    family = 6 if ":" in pool["spec"]["subnet"] else 4
    prefix = int(pool["spec"]["subnet"].split("/")[1])
    value = default_annotation(pool, defaults, holds_allocations=held, has_blocks=blocks)
    stamps = (
        "annotations" not in meta
        and "deletionTimestamp" not in meta
        and not held
        and not blocks
        and defaults.of(family) is not None
    )
    assert (value is not None) == stamps
    if value is None:
        return
    size = defaults.of(family)
    assert size is not None
    assert value == str(max(size, prefix))
    stamped = {**pool, "metadata": {**meta, "annotations": {BLOCK_SIZE_ANNOTATION: value}}}
    # what admission says of the same write made by hand: accepted, and the pool is a block pool of it
    admitted = admit(stamped, old=pool, existing=[], in_use=[], blocks=[])
    assert block_size_of(IPPool.from_obj(admitted)) == int(value)


@given(
    pool=_pools(plain_and_live=True),
    defaults=st.builds(BlockSizeDefaults, ipv4=st.integers(20, 32), ipv6=st.integers(116, 128)),
)
def test_an_unused_plain_pool_takes_its_familys_default_or_its_subnets_prefix(
    pool: Obj, defaults: BlockSizeDefaults
) -> None:
    family = 6 if ":" in pool["spec"]["subnet"] else 4
    prefix = int(pool["spec"]["subnet"].split("/")[1])
    value = default_annotation(pool, defaults, holds_allocations=False, has_blocks=False)
    size = defaults.of(family)
    assert size is not None and value == str(max(size, prefix))
    stamped = {**pool, "metadata": {**pool["metadata"], "annotations": {BLOCK_SIZE_ANNOTATION: value}}}
    admitted = admit(stamped, old=pool, existing=[], in_use=[], blocks=[])
    assert block_size_of(IPPool.from_obj(admitted)) == int(value)
    # once the pool is in use or has blocks the default no longer applies (admission would refuse it)
    for held, blocks in ((True, False), (False, True)):
        assert default_annotation(pool, defaults, holds_allocations=held, has_blocks=blocks) is None


def test_the_decision_reads_nothing_but_its_inputs() -> None:
    pool: Obj = {"metadata": {"name": "p"}, "spec": {"subnet": "10.1.0.0/16", "ips": ["10.1.0.1"]}}
    both = BlockSizeDefaults(ipv4=26, ipv6=122)
    assert default_annotation(pool, both, holds_allocations=False, has_blocks=False) == "26"
    assert (
        default_annotation(pool, BlockSizeDefaults(ipv6=122), holds_allocations=False, has_blocks=False)
        is None
    )
    small = {**pool, "spec": {"subnet": "10.1.0.0/28", "ips": ["10.1.0.1"]}}
    assert default_annotation(small, both, holds_allocations=False, has_blocks=False) == "28"  # one block
    bad = {**pool, "spec": {"subnet": "10.1.0.0/33"}}
    with pytest.raises(
        Invalid, match=r'^SpiderIPPool "p": spec\.subnet: "10\.1\.0\.0/33" has a prefix length above 32$'
    ):
        default_annotation(bad, both, holds_allocations=False, has_blocks=False)
    assert default_annotation(bad, BlockSizeDefaults(), holds_allocations=True, has_blocks=False) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ipv4": 19}, "ipv4: /19 must be between /20 and /32 for IPv4"),
        ({"ipv4": 33}, "ipv4: /33 must be between /20 and /32 for IPv4"),
        ({"ipv6": 115}, "ipv6: /115 must be between /116 and /128 for IPv6"),
    ],
)
def test_defaults_are_bounded_as_the_annotation(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        BlockSizeDefaults(**kwargs)
    assert BlockSizeDefaults(ipv4=20, ipv6=128).of(4) == 20
    assert BlockSizeDefaults(ipv4=20, ipv6=128).of(6) == 128
