"""The SQLite store's records of block pools (issue 15): the ``allocations`` table stays the one place
records live, a SpiderIPBlock's status is rendered from it (its count kept in its body in the same
transaction), and a claim or release moves its block's revision, not the pool's.  What both stores
share is in ``tests/contract/test_block_pools.py``; here: two store instances on one file keeping
their usage caches right through the blocks' events, the block's watch event, the in-place
migration of a schema-3 file and a block pool deleted and created again."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipam.blocks import BLOCK_KIND, block_object
from ipam.errors import Conflict
from ipam.model import IPPool, decode_allocated_ips
from ipam.records import Claim, IPRecord, Obj
from ipam.store.sqlite import SqliteStore
from ipam.store.sqlite_schema import SCHEMA_VERSION

SPIDER = "spiderpool.spidernet.io/v2beta1"
BASE = 0x0A000000  # 10.0.0.0
SIZE = 28  # blocks of 16 addresses
BLOCKS = (0, 2, 3)  # the blocks that exist (by index in 10.0.0.0/24); addresses elsewhere have none


def ip_of(offset: int) -> str:
    return f"10.0.0.{offset}"


def block_name(index: int) -> str:
    return f"bp-10-0-0-{index * 16}-{SIZE}"


def make_block_pool(store: SqliteStore, name: str = "bp", blocks: tuple[int, ...] = BLOCKS) -> IPPool:
    """A block pool over 10.0.0.1-10.0.0.254 and the /28 blocks ``blocks`` of it, for node1."""
    created = store.create(
        {
            "apiVersion": SPIDER,
            "kind": "SpiderIPPool",
            "metadata": {"name": name, "annotations": {"spiderbgp.io/block-size": str(SIZE)}},
            "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.254"]},
        }
    )
    pool = IPPool.from_obj(created)
    for index in blocks:
        store.create(block_object(pool, BASE + index * 16, SIZE, "node1"))
    return pool


def claim(store: SqliteStore, offset: int, pool: str = "bp") -> None:
    version = store.usage(pool).resource_version
    store.commit(claims=[Claim(pool, version, ip_of(offset), f"default/p{offset}", f"u{offset}")])


def release(store: SqliteStore, offset: int, pool: str = "bp") -> None:
    store.commit(releases=[IPRecord(pool, ip_of(offset), f"default/p{offset}", f"u{offset}")])


def count_of(obj: Obj) -> int:
    return int((obj.get("status") or {}).get("allocatedIPCount", -1))


def assert_store_matches(store: SqliteStore, held: set[int]) -> None:
    """Every view of the store agrees with the addresses ``held`` (offsets in 10.0.0.0/24)."""
    assert list(store.usage("bp").allocated) == sorted(BASE + o for o in held)
    assert store.usage("bp").resource_version == "g1"
    assert sorted(int(r.ip.rsplit(".", 1)[1]) for r in store.records("bp")) == sorted(held)
    listed = {b["metadata"]["name"]: b for b in store.list(BLOCK_KIND, allocated_ips=False)}
    for index in BLOCKS:
        inside = {o for o in held if o // 16 == index}
        assert count_of(listed[block_name(index)]) == len(inside), index
        status = store.get(BLOCK_KIND, block_name(index))["status"]
        assert status["allocatedIPCount"] == len(inside), index
        assert {
            ip: (a.pod, a.pod_uid) for ip, a in decode_allocated_ips(status.get("allocatedIPs")).items()
        } == {ip_of(o): (f"default/p{o}", f"u{o}") for o in inside}, index
    for pool in (store.get("SpiderIPPool", "bp"), store.list("SpiderIPPool", allocated_ips=False)[0]):
        assert count_of(pool) == len(held)
        assert "allocatedIPs" not in pool["status"]


# an operation: (which store instance, claim or release, offset in 10.0.0.0/24 within 1..254)
OPS = st.lists(
    st.tuples(st.integers(0, 1), st.booleans(), st.sampled_from([1, 2, 15, 16, 33, 40, 47, 48, 50, 63, 64])),
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, history=st.sampled_from([4, 100_000]))
def test_two_instances_on_one_file_agree_with_the_records(
    ops: list[tuple[int, bool, int]], history: int
) -> None:
    """Each instance's usage cache follows the other's commits through the blocks' events (or reloads
    when they are compacted, ``history=4``); counts of blocks and pool follow the rows.  A claim in
    10.0.0.16/28 (no block) fails with Conflict and changes nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        stores = [SqliteStore(Path(tmp) / "state.db", history=history) for _ in range(2)]
        try:
            make_block_pool(stores[0])
            held: set[int] = set()
            for which, is_claim, offset in ops:
                store = stores[which]
                if not is_claim:
                    release(store, offset)
                    held.discard(offset)
                elif offset // 16 not in BLOCKS:
                    with pytest.raises(
                        Conflict, match=rf'SpiderIPBlock "{block_name(offset // 16)}": not claimed'
                    ):
                        claim(store, offset)
                elif offset in held:
                    with pytest.raises(Conflict, match="already allocated"):
                        claim(store, offset)
                else:
                    claim(store, offset)
                    held.add(offset)
                assert_store_matches(stores[1 - which], held)
            assert_store_matches(stores[0], held)
        finally:
            for store in stores:
                store.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    try:
        yield s
    finally:
        s.close()


def test_a_commit_is_one_modified_event_per_block_touched_and_none_of_the_pool(store: SqliteStore) -> None:
    make_block_pool(store)
    claim(store, 1)
    pool_before = store.get("SpiderIPPool", "bp")["metadata"]["resourceVersion"]
    since = str(store.revision())
    store.commit(
        claims=[
            Claim("bp", "g1", ip_of(2), "default/p2", "u2"),
            Claim("bp", "g1", ip_of(33), "default/p33", "u33"),
        ],
        releases=[IPRecord("bp", ip_of(1), "default/p1", "u1")],
    )
    events = list(store.watch(["SpiderIPPool", BLOCK_KIND], since, timeout=0))
    assert [(e.type, e.object["metadata"]["name"], count_of(e.object)) for e in events] == [
        ("MODIFIED", block_name(0), 1),  # 10.0.0.1 released, 10.0.0.2 claimed
        ("MODIFIED", block_name(2), 1),
    ]
    assert all(e.object["metadata"]["resourceVersion"] == e.revision for e in events)
    assert store.get("SpiderIPPool", "bp")["metadata"]["resourceVersion"] == pool_before
    assert store.get(BLOCK_KIND, block_name(0))["metadata"]["resourceVersion"] == events[0].revision


def test_the_callers_block_status_is_ignored_and_a_write_of_it_alone_changes_nothing(
    store: SqliteStore,
) -> None:
    """What the service's after-commit mirror (``record_in_blocks``) writes: the store keeps its own."""
    make_block_pool(store)
    claim(store, 1)
    block = store.get(BLOCK_KIND, block_name(0))
    revision = store.revision()
    block["status"] = {
        "allocatedIPCount": 7,
        "allocatedIPs": json.dumps({ip_of(9): {"pod": "x/y", "podUid": "z"}}),
    }
    written = store.update_status(block)
    assert store.revision() == revision  # nothing changed: no new revision
    assert count_of(written) == 1
    block = store.get(BLOCK_KIND, block_name(0))
    block["spec"]["node"] = "node2"
    block["status"] = {"allocatedIPCount": 0}
    store.update(block)
    moved = store.get(BLOCK_KIND, block_name(0))
    assert (moved["spec"]["node"], count_of(moved)) == ("node2", 1)
    assert list(decode_allocated_ips(moved["status"]["allocatedIPs"])) == [ip_of(1)]


def test_a_block_pool_deleted_and_created_again_starts_empty(store: SqliteStore) -> None:
    pool = make_block_pool(store, blocks=(0,))
    claim(store, 1)
    claim(store, 2)
    store.delete("SpiderIPPool", pool.name)
    if store.list("SpiderIPPool"):  # a finalizer holds it: drop it as the GC would
        held = store.get("SpiderIPPool", pool.name)
        held["metadata"]["finalizers"] = []
        store.update(held)
    assert store.records("bp") == []
    assert [count_of(b) for b in store.list(BLOCK_KIND, allocated_ips=False)] == [0]
    store.delete(BLOCK_KIND, block_name(0))  # no owner garbage collection here: returned as empty
    make_block_pool(store, blocks=(0,))
    assert count_of(store.get("SpiderIPPool", "bp")) == 0
    assert list(store.usage("bp").allocated) == []
    claim(store, 2)
    assert count_of(store.get("SpiderIPPool", "bp")) == 1


def downgrade_to_schema_3(db: Path) -> None:
    """What schema 3 with the service's mirror left: no ``record_heads``, a block pool's count in its
    own body, and blocks carrying the mirrored status (here a stale one)."""
    raw = sqlite3.connect(db, isolation_level=None)
    try:
        raw.execute("DROP TABLE record_heads")
        raw.execute(
            "UPDATE objects SET body = json_set(body, '$.status.allocatedIPCount', "
            "(SELECT count(*) FROM allocations WHERE pool = 'bp')) WHERE kind = 'SpiderIPPool'"
        )
        stale = json.dumps({ip_of(9): {"pod": "x/y", "podUid": "z"}})
        raw.execute(
            "UPDATE objects SET body = json_set(body, '$.status.allocatedIPCount', 5, "
            "'$.status.allocatedIPs', ?) WHERE kind = 'SpiderIPBlock'",
            (stale,),
        )
        raw.execute("PRAGMA user_version = 3")
    finally:
        raw.close()


def test_a_schema_3_file_is_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    first = SqliteStore(db)
    try:
        make_block_pool(first)
        claim(first, 1)
        claim(first, 33)
    finally:
        first.close()
    downgrade_to_schema_3(db)
    store = SqliteStore(db)
    try:
        assert_store_matches(store, {1, 33})
        claim(store, 2)
        release(store, 33)
        assert_store_matches(store, {1, 2})
    finally:
        store.close()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert raw.execute("SELECT count(*) FROM record_heads").fetchone() == (1,)
        bodies = [
            json.loads(b) for (b,) in raw.execute("SELECT body FROM objects WHERE kind = 'SpiderIPBlock'")
        ]
        assert all("allocatedIPs" not in b.get("status", {}) for b in bodies)  # rendered, never stored
    finally:
        raw.close()
