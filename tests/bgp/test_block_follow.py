"""The agent's view of the blocks affine to its node (``spiderbgp.block_follow``): from a full list and
from watch events, other nodes' and malformed blocks left out with a one-line warning."""

from __future__ import annotations

import logging

import pytest

from ipam.records import Obj, WatchEvent
from spiderbgp.block_follow import AffineBlocks


def block(name: str, cidr: object, node: str = "node1") -> Obj:
    return {
        "apiVersion": "spiderbgp.io/v1alpha1",
        "kind": "SpiderIPBlock",
        "metadata": {"name": name},
        "spec": {"pool": "pool1", "cidr": cidr, "node": node},
    }


def ev(kind: str, obj: Obj) -> WatchEvent:
    return WatchEvent(kind, obj, "1")  # type: ignore[arg-type]


def test_reset_keeps_this_nodes_blocks_only() -> None:
    t = AffineBlocks("node1")
    got = t.reset(
        [block("a", "10.244.0.0/26"), block("b", "10.244.0.64/26", "node2"), block("c", "fd00::40/122")]
    )
    assert got == {"10.244.0.0/26", "fd00::40/122"}


def test_events_add_move_and_delete_blocks() -> None:
    t = AffineBlocks("node1")
    t.reset([])
    assert t.apply([ev("ADDED", block("a", "10.244.0.0/26"))]) == frozenset({"10.244.0.0/26"})
    assert t.apply([ev("MODIFIED", block("a", "10.244.0.0/26"))]) is None  # status writes change nothing
    assert t.apply([ev("ADDED", block("b", "10.244.0.64/26", "node2"))]) is None
    assert t.apply([ev("MODIFIED", {"kind": "SpiderEndpoint", "metadata": {"name": "x"}})]) is None
    assert t.apply([ev("DELETED", block("a", "10.244.0.0/26"))]) == frozenset()


def test_malformed_blocks_are_left_out_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    t = AffineBlocks("node1")
    with caplog.at_level(logging.WARNING, logger="spiderbgp.block_follow"):
        assert t.reset([block("bad", "10.244.0.0"), block("worse", 7), block("ok", "10.244.0.0/26")]) == {
            "10.244.0.0/26"
        }
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith('SpiderIPBlock "bad": spec.cidr: ') and lines[0].endswith("; ignored")
    assert lines[1].startswith('SpiderIPBlock "worse": spec.cidr: ')
    assert all("\n" not in line for line in lines)


def test_status_only_events_are_skipped_before_parsing(caplog: pytest.LogCaptureFixture) -> None:
    """A block's records live in its status: an event whose spec is unchanged is not parsed again (a
    malformed block warns once, not once per record written into it); a spec change is."""
    t = AffineBlocks("node1")
    bad = block("bad", "10.244.0.0")
    with caplog.at_level(logging.WARNING, logger="spiderbgp.block_follow"):
        assert t.reset([bad, block("a", "10.244.0.0/26")]) == {"10.244.0.0/26"}
        for i in range(5):
            assert t.apply([ev("MODIFIED", {**bad, "status": {"allocatedIPCount": i}})]) is None
            assert t.apply([ev("MODIFIED", {**block("a", "10.244.0.0/26"), "status": {"n": i}})]) is None
        assert len(caplog.records) == 1
        fixed = block("bad", "10.244.0.64/26")
        assert t.apply([ev("MODIFIED", fixed)]) == frozenset({"10.244.0.0/26", "10.244.0.64/26"})
        assert t.apply([ev("MODIFIED", block("bad", "10.244.0.64/26", "node2"))]) == frozenset(
            {"10.244.0.0/26"}
        )
    assert len(caplog.records) == 1
