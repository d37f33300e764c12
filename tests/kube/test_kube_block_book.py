"""The Kubernetes store's parsed block records (``ipam.store.kube_blocks``): a block as the store's own
write changed it is what parsing the written status gives, so the store can keep it without parsing."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ipam.blocks import BLOCK_KIND
from ipam.model import PoolIPAllocation
from ipam.store.kube_blocks import BlockBook, render_records

CIDR_START = 10 << 24 | 7 << 16  # 10.7.0.0/26


def _ip(offset: int) -> str:
    value = CIDR_START + offset
    return ".".join(str(value >> shift & 255) for shift in (24, 16, 8, 0))


def _block(rv: str, records: dict[str, PoolIPAllocation]) -> dict[str, Any]:
    status: dict[str, Any] = {"allocatedIPCount": len(records)}
    text = render_records(records)
    if text is not None:
        status["allocatedIPs"] = text
    return {
        "kind": BLOCK_KIND,
        "metadata": {"name": "bp-10-7-0-0-26", "resourceVersion": rv},
        "spec": {"pool": "bp", "cidr": "10.7.0.0/26", "node": "node1"},
        "status": status,
    }


offsets = st.sets(st.integers(min_value=0, max_value=63), max_size=64)


@given(held=offsets, released=offsets, claimed=offsets)
def test_a_changed_block_is_what_parsing_its_written_status_gives(
    held: set[int], released: set[int], claimed: set[int]
) -> None:
    before_records = {_ip(o): PoolIPAllocation(f"default/p{o}", f"u{o}") for o in held}
    book = BlockBook()
    before = book.records(_block("1", before_records))
    records = {ip: r for ip, r in before_records.items() if int(ip.rpartition(".")[2]) not in released}
    new = sorted(claimed - {int(ip.rpartition(".")[2]) for ip in records})
    for o in new:
        records[_ip(o)] = PoolIPAllocation(f"default/n{o}", f"v{o}")
    after = before.changed(records, [(CIDR_START + o, _ip(o)) for o in new])
    assert after.render() == render_records(records)
    written = _block("2", records)
    book.keep(after, written)
    kept = book.records(written)
    parsed = BlockBook().records(written)
    assert kept.resource_version == "2" and kept.ips is after.ips  # kept, not parsed again
    assert (kept.values, kept.ips, kept.pods, dict(kept.records)) == (
        parsed.values,
        parsed.ips,
        parsed.pods,
        dict(parsed.records),
    )
    assert list(kept.values) == sorted(CIDR_START + int(ip.rpartition(".")[2]) for ip in records)
