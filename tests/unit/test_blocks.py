"""ipam.blocks: the block allocator's preference order (own block, then a free block, then borrow), as
properties over random pools, claims and allocations, and the annotation's one-line errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.blocks import (
    Block,
    block_name,
    block_object,
    block_size_of,
    block_size_problem,
    block_start,
    block_status,
    blocks_of_pool,
    blocks_to_return,
    is_block_pool,
    parse_block,
    parse_block_size,
    pick,
    version_token,
)
from ipam.errors import Invalid
from ipam.model import IPPool, decode_allocated_ips
from ipam.ranges import IntervalSet
from ipam.records import IPRecord

SIZE = 29  # blocks of 8 addresses in a /24 (0..255)
SPAN = 8
NODES = ("n1", "n2", "n3")


@st.composite
def states(draw: st.DrawFn) -> tuple[IntervalSet, list[int], dict[int, str], str]:
    intervals = draw(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 40)), max_size=5))
    free = IntervalSet.of((lo, min(255, lo + n)) for lo, n in intervals)
    allocated = sorted(set(draw(st.lists(st.integers(0, 255), max_size=60))))
    starts = draw(st.lists(st.sampled_from(range(0, 256, SPAN)), max_size=12, unique=True))
    claimed = {s: draw(st.sampled_from(NODES)) for s in starts}
    return free, allocated, claimed, draw(st.sampled_from(NODES))


def _free_left(free: IntervalSet, allocated: list[int]) -> list[int]:
    return [v for lo, hi in free.intervals for v in range(lo, hi + 1) if v not in set(allocated)]


@given(states())
def test_pick_follows_the_preference_order(state: tuple[IntervalSet, list[int], dict[int, str], str]) -> None:
    free, allocated, claimed, node = state
    result = pick(free, allocated, claimed, node, family=4, size=SIZE)
    left = _free_left(free, allocated)
    if not left:
        assert result is None
        return
    assert result is not None
    assert result.value in left
    own = [v for v in left if claimed.get(block_start(v, 4, SIZE)) == node]
    if own:
        assert (result.value, result.claim, result.borrowed) == (min(own), None, False)
        return
    empty = [
        v
        for v in left
        if block_start(v, 4, SIZE) not in claimed
        and not any(block_start(a, 4, SIZE) == block_start(v, 4, SIZE) for a in allocated)
    ]
    if empty:
        assert (result.value, result.claim, result.borrowed) == (
            min(empty),
            block_start(min(empty), 4, SIZE),
            False,
        )
        return
    assert (result.value, result.claim, result.borrowed) == (min(left), None, True)


def test_a_node_fills_its_block_then_claims_the_next_empty_one() -> None:
    free = IntervalSet.of([(1, 30)])  # .0 and .31 excluded
    assert pick(free, [], {}, "n1", family=4, size=SIZE) == pick(free, [], {}, "n2", family=4, size=SIZE)
    first = pick(free, [], {}, "n1", family=4, size=SIZE)
    assert first is not None and (first.value, first.claim) == (1, 0)
    # n2 skips n1's block even though it has free addresses
    second = pick(free, [1], {0: "n1"}, "n2", family=4, size=SIZE)
    assert second is not None and (second.value, second.claim) == (8, 8)
    # n1 keeps taking from its own block
    third = pick(free, [1, 8], {0: "n1", 8: "n2"}, "n1", family=4, size=SIZE)
    assert third is not None and (third.value, third.claim, third.borrowed) == (2, None, False)
    # every block claimed by others and holding allocations: n3 borrows the lowest free address
    claimed = {0: "n1", 8: "n2", 16: "n1", 24: "n2"}
    fourth = pick(free, [1, 8, 16, 24], claimed, "n3", family=4, size=SIZE)
    assert fourth is not None and (fourth.value, fourth.claim, fourth.borrowed) == (2, None, True)


def test_ipv6_blocks_are_aligned_on_the_address() -> None:
    base = 0xFD00 << 112
    free = IntervalSet.of([(base + 5, base + 200)])
    result = pick(free, [], {base: "n1"}, "n2", family=6, size=122)
    assert result is not None and (result.value, result.claim) == (base + 64, base + 64)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("abc", '\'abc\' is not a prefix length (e.g. "26") or "none"'),
        ("23", "/23 must be between the subnet's /24 and /32 for IPv4"),
        ("33", "/33 must be between the subnet's /24 and /32 for IPv4"),
        ("-1", "'-1' is not a prefix length"),
        ("²", "'²' is not a prefix length"),
        ("none", "'none' is not a prefix length"),  # the opt-out is block_size_of's, not a size
    ],
)
def test_a_bad_block_size_is_one_line_naming_pool_and_annotation(text: str, reason: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_block_size("pool1", 4, 24, text)
    assert str(info.value).startswith(
        'SpiderIPPool "pool1": metadata.annotations.spiderbgp.io/block-size: ' + reason
    )
    assert "\n" not in str(info.value)
    assert parse_block_size("pool1", 6, 64, "122") == 122


@given(family=st.sampled_from((4, 6)), subnet_prefix=st.integers(0, 128), size=st.integers(0, 129))
def test_block_sizes_are_calicos_and_never_shorter_than_the_subnet(
    family: int, subnet_prefix: int, size: int
) -> None:
    """Accepted exactly when the block lies in the subnet and holds at most 4,096 addresses (Calico's
    blockSize bounds, /20../32 and /116../128): one SpiderIPBlock holds the records of its addresses."""
    bits = 32 if family == 4 else 128
    subnet_prefix = min(subnet_prefix, bits)
    ok = subnet_prefix <= size <= bits and bits - size <= 12
    assert (block_size_problem(family, size, subnet_prefix) is None) == ok
    assert (block_size_problem(family, size) is None) == (bits - 12 <= size <= bits)
    if ok:
        assert parse_block_size("p", family, subnet_prefix, str(size)) == size
    else:
        with pytest.raises(
            Invalid, match=r"^SpiderIPPool \"p\": metadata\.annotations\.spiderbgp\.io/block-size: /"
        ):
            parse_block_size("p", family, subnet_prefix, str(size))


def test_none_is_a_plain_pool() -> None:
    obj = {
        "metadata": {"name": "pool1", "annotations": {"spiderbgp.io/block-size": "none"}},
        "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.30"]},
    }
    assert block_size_of(IPPool.from_obj(obj)) is None
    assert is_block_pool(obj) is False
    assert version_token(obj) == "g1"  # defined for any pool; the stores ask only block pools for it
    sized = {**obj, "metadata": {"name": "pool1", "annotations": {"spiderbgp.io/block-size": "28"}}}
    assert (block_size_of(IPPool.from_obj(sized)), is_block_pool(sized)) == (28, True)
    plain = {**obj, "metadata": {"name": "pool1"}}
    assert (block_size_of(IPPool.from_obj(plain)), is_block_pool(plain)) == (None, False)


def _pool() -> IPPool:
    return IPPool.from_obj(
        {
            "metadata": {"name": "pool1", "uid": "u1", "annotations": {"spiderbgp.io/block-size": "29"}},
            "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.30"]},
        }
    )


def test_block_object_names_pool_and_cidr_and_round_trips() -> None:
    obj = block_object(_pool(), 167772168, 29, "node-a")  # 10.0.0.8
    assert obj["metadata"]["name"] == "pool1-10-0-0-8-29"
    assert obj["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert obj["spec"] == {"pool": "pool1", "cidr": "10.0.0.8/29", "node": "node-a"}
    block = parse_block(obj)
    assert (block.start, block.end, block.node) == (167772168, 167772175, "node-a")
    assert blocks_of_pool([obj, {**obj, "spec": {**obj["spec"], "pool": "other"}}], "pool1") == [block]


def test_block_name_of_a_long_pool_stays_a_dns_subdomain() -> None:
    name = block_name("p" * 250, "fd00::40/122")
    assert len(name) <= 253 and name.endswith("fd00--40-122")
    assert name != block_name("p" * 249 + "q", "fd00::40/122")


def test_block_status_holds_the_records_inside_it() -> None:
    block = Block("b", "pool1", "10.0.0.8/29", "n1", 167772168, 167772175)
    records = [
        IPRecord("pool1", "10.0.0.7", "ns/a", "ua"),
        IPRecord("pool1", "10.0.0.9", "ns/b", "ub"),
        IPRecord("pool1", "10.0.0.15", "ns/c", "uc"),
    ]
    status = block_status(block, records, 4)
    assert status["allocatedIPCount"] == 2
    assert set(decode_allocated_ips(status["allocatedIPs"])) == {"10.0.0.9", "10.0.0.15"}
    assert block_status(block, [], 4) == {"allocatedIPCount": 0}


def test_a_malformed_block_is_one_line() -> None:
    with pytest.raises(Invalid, match=r'SpiderIPBlock "b": spec\.node: must be a non-empty string'):
        parse_block({"metadata": {"name": "b"}, "spec": {"pool": "p", "cidr": "10.0.0.0/29"}})


def test_blocks_empty_for_the_grace_period_are_returned() -> None:
    a = Block("a", "p", "10.0.0.0/29", "n1", 0, 7)
    b = Block("b", "p", "10.0.0.8/29", "n2", 8, 15)
    gone = Block("c", "gone", "10.9.0.0/29", "n1", 100, 107)
    due, since = blocks_to_return([a, b, gone], {"p": [3]}, {}, now=100.0, grace=60.0)
    assert (due, since) == ([], {"b": 100.0, "c": 100.0})  # a holds .3; the pool of c is gone
    due, since = blocks_to_return([a, b, gone], {"p": [3]}, since, now=159.0, grace=60.0)
    assert (due, since) == ([], {"b": 100.0, "c": 100.0})
    due, since = blocks_to_return([a, b, gone], {"p": [3]}, since, now=160.0, grace=60.0)
    assert (due, since) == ([b, gone], {"b": 100.0, "c": 100.0})
    # an allocation in between starts the grace period again
    _, since = blocks_to_return([a, b], {"p": [3, 9]}, {"b": 100.0}, now=170.0, grace=60.0)
    assert since == {}
