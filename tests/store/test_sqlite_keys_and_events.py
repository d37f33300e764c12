"""The SQLite store's allocation keys carry the address family, and its event log does not copy a
large pool into the event of every claim (issue 12, items 5 and 6), with the in-place migration of a
schema-2 file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipam.errors import Conflict
from ipam.records import Claim, Obj
from ipam.store.sqlite import SqliteStore
from ipam.store.sqlite_schema import SCHEMA_VERSION

SPIDER = "spiderpool.spidernet.io/v2beta1"


def pool(name: str, subnet: str, ips: str, **meta: object) -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": name, **meta},
        "spec": {"subnet": subnet, "ips": [ips]},
    }


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(db, history=8)
    try:
        yield s
    finally:
        s.close()


def claim(store: SqliteStore, pool_name: str, ip: str) -> None:
    version = store.usage(pool_name).resource_version
    store.commit(claims=[Claim(pool_name, version, ip, f"default/p-{ip.replace(':', '-')}", "u")])


def test_an_ipv4_address_and_its_ipv4_compatible_ipv6_twin_are_different_records(store: SqliteStore) -> None:
    """Admission refuses such IPv6 pools (``tests/unit/test_admission``); a pool written straight to the
    store still cannot make the database confuse the two (before: ``::a32:a`` had the key of
    ``10.50.0.10``, and every dual-stack ADD failed with Conflict)."""
    store.create(pool("v4", "10.50.0.0/24", "10.50.0.10-10.50.0.20"))
    store.create(pool("v6", "::a32:0/120", "::a32:a-::a32:14"))
    claim(store, "v4", "10.50.0.10")
    claim(store, "v6", "::a32:a")
    claim(store, "v6", "::a32:b")
    assert [r.ip for r in store.records("v4")] == ["10.50.0.10"]
    assert [r.ip for r in store.records("v6")] == ["::a32:a", "::a32:b"]
    assert list(store.usage("v4").allocated) == [0x0A32000A]
    assert list(store.usage("v6").allocated) == [0x0A32000A, 0x0A32000B]
    with pytest.raises(Conflict, match="already allocated"):  # the database still refuses a second owner
        claim(store, "v4", "10.50.0.10")


def event_bytes(db: Path) -> int:
    raw = sqlite3.connect(db)
    try:
        return int(raw.execute("SELECT coalesce(sum(length(body)), 0) FROM events").fetchone()[0])
    finally:
        raw.close()


def test_claims_on_a_large_pool_do_not_copy_it_into_the_event_log(store: SqliteStore, db: Path) -> None:
    """Before, every claim's event held the whole pool (a 52 MB pool: 52 MB per ADD).  The watch still
    serves each revision's whole object, also once the events it derives from are compacted away."""
    big = {"spiderbgp.io/note": "x" * 100_000}
    store.create(pool("big", "10.0.0.0/16", "10.0.0.1-10.0.0.200", annotations=big))
    start = store.revision()
    stored = store.get("SpiderIPPool", "big", allocated_ips=False)
    size = len(json.dumps(stored, separators=(",", ":")))
    expected: dict[str, Obj] = {}
    for host in range(1, 21):
        claim(store, "big", f"10.0.0.{host}")
        obj = store.get("SpiderIPPool", "big", allocated_ips=False)
        expected[obj["metadata"]["resourceVersion"]] = obj
    # the events kept: the whole body it derives from, then about a hundred bytes per claim
    assert event_bytes(db) < size + 20 * 200
    # history=8: the claims before the last 8 are compacted, the base body is kept
    events = list(store.watch(["SpiderIPPool"], str(int(store.revision()) - 8), timeout=0))
    assert len(events) == 8 and int(events[0].revision) > int(start)
    for event in events:
        assert event.object == expected[event.revision]
    assert events[-1].object["status"]["allocatedIPCount"] == 20


def test_small_pools_keep_whole_bodies_in_their_events(store: SqliteStore, db: Path) -> None:
    store.create(pool("small", "10.0.0.0/16", "10.0.0.1-10.0.0.200"))
    claim(store, "small", "10.0.0.1")
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("SELECT count(*) FROM events WHERE base IS NOT NULL").fetchone() == (0,)
    finally:
        raw.close()


def downgrade_to_schema_2(db: Path) -> None:
    """Turn a current file into what schema 2 wrote: IPv4 keys as 16 bytes, no ``events.base``."""
    raw = sqlite3.connect(db, isolation_level=None)
    try:
        for (key,) in raw.execute("SELECT ip_key FROM allocations WHERE length(ip_key) = 4").fetchall():
            raw.execute("UPDATE allocations SET ip_key = ? WHERE ip_key = ?", (bytes(12) + key, key))
        raw.execute("DROP INDEX events_by_base")
        raw.execute("ALTER TABLE events DROP COLUMN base")
        raw.execute("DROP TABLE record_heads")
        raw.execute("PRAGMA user_version = 2")
    finally:
        raw.close()


def test_a_schema_2_file_is_migrated_in_place(db: Path) -> None:
    first = SqliteStore(db)
    try:
        first.create(pool("v4", "10.0.0.0/16", "10.0.0.1-10.0.0.200"))
        first.create(pool("v6", "fd00::/64", "fd00::1-fd00::ff"))
        for ip in ("10.0.0.5", "10.0.0.3"):
            claim(first, "v4", ip)
        claim(first, "v6", "fd00::7")
    finally:
        first.close()
    downgrade_to_schema_2(db)
    store = SqliteStore(db)
    try:
        assert list(store.usage("v4").allocated) == [0x0A000003, 0x0A000005]
        claim(store, "v4", "10.0.0.4")
        assert [r.ip for r in store.records("v4")] == ["10.0.0.3", "10.0.0.4", "10.0.0.5"]
        with pytest.raises(Conflict):
            claim(store, "v4", "10.0.0.3")
        assert [r.ip for r in store.records("v6")] == ["fd00::7"]
    finally:
        store.close()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        keys = dict(raw.execute("SELECT ip, length(ip_key) FROM allocations").fetchall())
        assert keys == {"10.0.0.3": 4, "10.0.0.4": 4, "10.0.0.5": 4, "fd00::7": 16}
    finally:
        raw.close()
