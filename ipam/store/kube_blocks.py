"""The records of block pools on the Kubernetes store (issue 15): parsed and cached, no I/O.

A pool annotated ``spiderbgp.io/block-size`` keeps no records of its own on Kubernetes: each record
lives in ``status.allocatedIPs`` of the SpiderIPBlock whose CIDR holds the address, in Spiderpool's
format, written by a status PUT carrying the block's resourceVersion.  Nodes allocate in their own
blocks, so their writes go to different objects and never conflict; and no object holds more records
than its block has addresses (at most 4,096), so block pools have no per-pool record cap.

:class:`BlockBook` keeps what the store parsed: a pool's layout (IP family and block prefix length) per
pool resourceVersion, and a block's records per block resourceVersion, so ``usage`` costs the blocks that
changed plus one concatenation (blocks are disjoint aligned CIDRs: their sorted addresses, taken in block
order, are sorted).  The store's own block writes go into the book as written (``BlockRecords.changed``,
``BlockBook.keep``): a claim parses only the addresses it adds, not every record of its block again."""

from __future__ import annotations

import builtins
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import netaddr

from ipam.blocks import BLOCK_KIND, block_size_of, is_block_pool
from ipam.errors import Invalid
from ipam.model import IPPool, PoolIPAllocation, decode_allocated_ips
from ipam.ranges import address_value
from ipam.records import Obj

__all__ = ["BlockBook", "BlockRecords", "block_pool_of", "render_records"]


def block_pool_of(obj: Mapping[str, Any]) -> str:
    """``spec.pool`` of a SpiderIPBlock ('' when missing)."""
    spec = obj.get("spec")
    return str(spec.get("pool") or "") if isinstance(spec, Mapping) else ""


def render_records(records: Mapping[str, PoolIPAllocation]) -> str | None:
    """Spiderpool's ``status.allocatedIPs`` string, records in address order; None when there are none."""
    if not records:
        return None
    ordered = sorted(records.items(), key=lambda kv: address_value(kv[0]))
    return json.dumps({ip: {"pod": r.pod, "podUid": r.pod_uid} for ip, r in ordered}, separators=(",", ":"))


@dataclass(frozen=True)
class BlockRecords:
    """One block as last read: its records and their sorted integer values."""

    name: str
    resource_version: str
    start: int
    records: Mapping[str, PoolIPAllocation]
    values: tuple[int, ...]
    pods: frozenset[str]  # "namespace/name" of every record, for records_of_pod
    ips: tuple[str, ...]  # the records' addresses in the order of ``values``

    def changed(
        self, records: Mapping[str, PoolIPAllocation], added: Iterable[tuple[int, str]]
    ) -> BlockRecords:
        """This block holding ``records`` instead: its own records that remain plus ``added`` ((value,
        address) pairs of the claimed addresses), with no resourceVersion until it is written.  Only
        the added addresses were parsed."""
        new = builtins.list(added)
        fresh = {ip for _, ip in new}
        pairs = [
            (v, ip) for v, ip in zip(self.values, self.ips, strict=True) if ip in records and ip not in fresh
        ]
        pairs.extend(new)
        pairs.sort()
        pods = frozenset(r.pod for r in records.values())
        return BlockRecords(
            self.name, "", self.start, records, tuple(v for v, _ in pairs), pods, tuple(ip for _, ip in pairs)
        )

    def render(self) -> str | None:
        """``status.allocatedIPs`` of these records in address order (as ``render_records``); None when
        there are none."""
        if not self.ips:
            return None
        doc = {ip: {"pod": self.records[ip].pod, "podUid": self.records[ip].pod_uid} for ip in self.ips}
        return json.dumps(doc, separators=(",", ":"))


class BlockBook:
    """Parsed pool layouts and block records, shared by the store's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layouts: dict[str, tuple[str, tuple[int, int] | None]] = {}
        self._blocks: dict[str, BlockRecords] = {}

    def layout(self, obj: Obj) -> tuple[int, int] | None:
        """(IP family, block prefix length) of a block pool, None for a plain pool; Invalid (naming the
        pool and the annotation) when the annotation is malformed."""
        if not is_block_pool(obj):
            return None
        meta = obj["metadata"]
        name, rv = str(meta["name"]), str(meta.get("resourceVersion") or "")
        with self._lock:
            cached = self._layouts.get(name)
        if cached is not None and cached[0] == rv:
            return cached[1]
        pool = IPPool.from_obj(obj)
        size = block_size_of(pool)
        layout = None if size is None else (pool.ip_version, size)
        with self._lock:
            self._layouts[name] = (rv, layout)
        return layout

    def records(self, obj: Obj) -> BlockRecords:
        """The records a SpiderIPBlock holds; Invalid naming the block when its status is malformed."""
        meta = obj["metadata"]
        name, rv = str(meta["name"]), str(meta.get("resourceVersion") or "")
        with self._lock:
            cached = self._blocks.get(name)
        if cached is not None and cached.resource_version == rv:
            return cached
        status = obj.get("status") or {}
        try:
            records = decode_allocated_ips(status.get("allocatedIPs"))
        except ValueError as err:
            raise Invalid(BLOCK_KIND, name, "status.allocatedIPs", str(err)) from None
        cidr = str((obj.get("spec") or {}).get("cidr") or "")
        try:
            start = int(netaddr.IPNetwork(cidr).first)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise Invalid(BLOCK_KIND, name, "spec.cidr", f"{cidr!r} is not a CIDR") from None
        pairs = sorted((address_value(ip), ip) for ip in records)
        pods = frozenset(r.pod for r in records.values())
        values, ips = tuple(v for v, _ in pairs), tuple(ip for _, ip in pairs)
        book = BlockRecords(name, rv, start, records, values, pods, ips)
        with self._lock:
            self._blocks[name] = book
        return book

    def keep(self, book: BlockRecords, written: Obj) -> None:
        """``book`` as the block's records at the resourceVersion of ``written`` (the object the store's
        own write of them returned), so the next read of that version parses nothing."""
        rv = str((written.get("metadata") or {}).get("resourceVersion") or "")
        if rv:
            with self._lock:
                self._blocks[book.name] = replace(book, resource_version=rv)

    def forget(self, name: str) -> None:
        with self._lock:
            self._blocks.pop(name, None)

    def allocated(self, blocks: Iterable[BlockRecords]) -> tuple[int, ...]:
        """The ascending addresses of these blocks (disjoint CIDRs: concatenated in block order)."""
        out: builtins.list[int] = []
        for book in sorted(blocks, key=lambda b: b.start):
            out.extend(book.values)
        return tuple(out)
