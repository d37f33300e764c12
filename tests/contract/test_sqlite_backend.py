"""What only the embedded SQLite backend promises, beyond the shared contract: one transaction per
commit, its file handling and errors, durability settings, the incremental usage cache."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipam.errors import Conflict, Gone, Invalid, StoreUnavailable
from ipam.records import Claim, IPRecord, Obj
from ipam.store.sqlite import SqliteStore
from ipam.store.sqlite_schema import SCHEMA_VERSION

SPIDER = "spiderpool.spidernet.io/v2beta1"
NOON = 1795698000.0  # 2026-11-26T13:00:00Z


def pool(name: str, ips: str = "10.0.0.1-10.0.0.200") -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": "10.0.0.0/16", "ips": [ips]},
    }


def endpoint(name: str, uid: str, version: str | None = None) -> Obj:
    meta: dict[str, str] = {"name": name, "namespace": "default"}
    if version is not None:
        meta["resourceVersion"] = version
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderEndpoint",
        "metadata": meta,
        "status": {"current": {"uid": uid}},
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db", poll_interval=0.01)
    try:
        yield s
    finally:
        s.close()


def test_injected_clock_and_uids(tmp_path: Path) -> None:
    uids = iter(["uid-1", "uid-2"])
    s = SqliteStore(tmp_path / "state.db", clock=lambda: NOON, uid_factory=lambda: next(uids))
    try:
        created = s.create(pool("p1"))
        assert created["metadata"]["creationTimestamp"] == "2026-11-26T13:00:00Z"
        assert created["metadata"]["uid"] == "uid-1"
        assert created["metadata"]["resourceVersion"] == "1"
        assert s.create(pool("p2", "10.0.1.1"))["metadata"]["uid"] == "uid-2"
        assert s.revision() == "2"
    finally:
        s.close()


def test_revision_strictly_increases_across_instances(tmp_path: Path) -> None:
    a = SqliteStore(tmp_path / "state.db")
    b = SqliteStore(tmp_path / "state.db")
    try:
        seen = []
        for i in range(6):
            writer = a if i % 2 else b
            seen.append(int(writer.create(pool(f"p{i}", f"10.0.{i}.1"))["metadata"]["resourceVersion"]))
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert a.revision() == b.revision() == str(seen[-1])
    finally:
        a.close()
        b.close()


def test_commit_is_one_transaction(store: SqliteStore) -> None:
    store.create(pool("p1"))
    version = store.usage("p1").resource_version
    store.commit(claims=[Claim("p1", version, "10.0.0.9", "default/x", "ux")])
    version = store.usage("p1").resource_version
    revision = store.revision()

    # the second claim collides: the first claim must not stay behind
    with pytest.raises(Conflict):
        store.commit(
            claims=[
                Claim("p1", version, "10.0.0.1", "default/a", "ua"),
                Claim("p1", version, "10.0.0.9", "default/b", "ub"),
            ],
            endpoint=endpoint("a", "ua"),
        )
    # a stale endpoint version undoes the claims and releases of the same commit
    with pytest.raises(Conflict):
        store.commit(
            claims=[Claim("p1", version, "10.0.0.2", "default/a", "ua")],
            releases=[IPRecord("p1", "10.0.0.9", "default/x", "ux")],
            endpoint=endpoint("a", "ua", version="12345"),
        )
    assert store.revision() == revision
    assert store.records("p1") == [IPRecord("p1", "10.0.0.9", "default/x", "ux")]
    assert store.usage("p1").resource_version == version
    assert store.list("SpiderEndpoint") == []
    assert store.get("SpiderIPPool", "p1")["status"]["allocatedIPCount"] == 1


@pytest.mark.parametrize(
    ("ip", "pod"),
    [("10.0.0.300", "default/a"), ("10.0.0.3/24", "default/a"), ("10.0.0.3", "no-namespace")],
)
def test_malformed_claim_is_invalid(store: SqliteStore, ip: str, pod: str) -> None:
    store.create(pool("p1"))
    version = store.usage("p1").resource_version
    with pytest.raises(Invalid) as err:
        store.commit(claims=[Claim("p1", version, ip, pod, "u")])
    assert str(err.value).startswith('SpiderIPPool "p1": claim ')
    assert store.records("p1") == []


def test_claims_are_stored_canonically(store: SqliteStore) -> None:
    store.create(pool("v6", "fd00::1-fd00::ff"))
    version = store.usage("v6").resource_version
    store.commit(claims=[Claim("v6", version, "FD00:0:0::0A", "default/a", "ua")])
    assert [r.ip for r in store.records("v6")] == ["fd00::a"]
    with pytest.raises(Conflict):
        store.commit(claims=[Claim("v6", store.usage("v6").resource_version, "fd00::a", "default/b", "ub")])


def test_deleting_a_pool_removes_its_records(store: SqliteStore) -> None:
    store.create(pool("p1"))
    store.commit(claims=[Claim("p1", store.usage("p1").resource_version, "10.0.0.5", "default/a", "ua")])
    store.delete("SpiderIPPool", "p1")
    assert store.records_of_pod("default", "a") == []
    store.create(pool("p2"))
    store.commit(claims=[Claim("p2", store.usage("p2").resource_version, "10.0.0.5", "default/b", "ub")])
    store.create(pool("p1"))
    assert list(store.usage("p1").allocated) == []


def test_pool_watch_events_carry_the_count_not_the_records(store: SqliteStore) -> None:
    store.create(pool("p1"))
    start = store.revision()
    store.commit(claims=[Claim("p1", store.usage("p1").resource_version, "10.0.0.5", "default/a", "ua")])
    (event,) = list(store.watch(["SpiderIPPool"], start, timeout=0.1))
    assert event.object["status"] == {"allocatedIPCount": 1}
    assert json.loads(store.get("SpiderIPPool", "p1")["status"]["allocatedIPs"]) == {
        "10.0.0.5": {"pod": "default/a", "podUid": "ua"}
    }


def test_derived_pool_status_cannot_be_written(store: SqliteStore) -> None:
    store.create(pool("p1"))
    store.commit(claims=[Claim("p1", store.usage("p1").resource_version, "10.0.0.5", "default/a", "ua")])
    obj = store.get("SpiderIPPool", "p1")
    obj["status"] = {"allocatedIPs": '{"10.0.0.99":{"pod":"x/y","podUid":"z"}}', "allocatedIPCount": 7}
    obj["status"]["totalIPCount"] = 200
    written = store.update_status(obj)
    assert written["status"]["totalIPCount"] == 200
    assert written["status"]["allocatedIPCount"] == 1
    assert json.loads(written["status"]["allocatedIPs"]) == {"10.0.0.5": {"pod": "default/a", "podUid": "ua"}}


def test_usage_cache_follows_other_writers_and_compaction(tmp_path: Path) -> None:
    reader = SqliteStore(tmp_path / "state.db", history=5)
    writer = SqliteStore(tmp_path / "state.db", history=5)
    try:
        writer.create(pool("p1"))
        assert list(reader.usage("p1").allocated) == []

        def claim(ip: str) -> None:
            writer.commit(claims=[Claim("p1", writer.usage("p1").resource_version, ip, f"default/{ip}", "u")])

        claim("10.0.0.2")
        claim("10.0.0.1")  # not an append: the reader's cache rebuilds its list
        assert list(reader.usage("p1").allocated) == [167772161, 167772162]
        for host in range(3, 40):  # far past the 5 events the store keeps: the reader reloads
            claim(f"10.0.0.{host}")
        writer.commit(releases=[IPRecord("p1", "10.0.0.7", "default/10.0.0.7", "u")])
        usage = reader.usage("p1")
        assert usage.resource_version == writer.usage("p1").resource_version
        assert list(usage.allocated) == [167772160 + h for h in range(1, 40) if h != 7]
    finally:
        reader.close()
        writer.close()


def test_usage_cache_replays_claims_and_releases_and_reloads_after_a_pool_is_recreated(
    tmp_path: Path,
) -> None:
    reader = SqliteStore(tmp_path / "state.db")
    writer = SqliteStore(tmp_path / "state.db")
    try:
        writer.create(pool("p1"))
        writer.create(pool("p2", "10.0.1.1-10.0.1.9"))
        assert list(reader.usage("p1").allocated) == []

        def claim(name: str, ip: str) -> None:
            version = writer.usage(name).resource_version
            writer.commit(claims=[Claim(name, version, ip, f"default/{ip}", "u")])

        claim("p1", "10.0.0.9")
        claim("p2", "10.0.1.1")  # another pool's changes in between are skipped by the replay
        claim("p1", "10.0.0.3")
        writer.commit(releases=[IPRecord("p1", "10.0.0.9", "default/10.0.0.9", "u")])
        writer.create(endpoint("e1", "u1"))  # an event of another kind in between
        assert list(reader.usage("p1").allocated) == [0x0A000003]
        # the pool goes (with its records) and comes back under the same name: nothing is replayed
        # across that, the reader reloads
        writer.delete("SpiderIPPool", "p1")
        writer.create(pool("p1"))
        claim("p1", "10.0.0.200")
        usage = reader.usage("p1")
        assert list(usage.allocated) == [0x0A0000C8]
        assert usage.resource_version == writer.usage("p1").resource_version
    finally:
        reader.close()
        writer.close()


_SCHEMA_1 = (
    "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL, "
    "compacted INTEGER NOT NULL)",
    "CREATE TABLE objects (kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, "
    "revision INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, namespace, name)) WITHOUT ROWID",
    "CREATE TABLE events (revision INTEGER PRIMARY KEY, kind TEXT NOT NULL, namespace TEXT NOT NULL, "
    "name TEXT NOT NULL, type TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE TABLE allocations (ip TEXT NOT NULL PRIMARY KEY, pool TEXT NOT NULL, ip_key BLOB NOT NULL, "
    "pod TEXT NOT NULL, pod_uid TEXT NOT NULL, revision INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX allocations_by_pool ON allocations (pool, ip_key)",
    "CREATE INDEX allocations_by_pod ON allocations (pod)",
    "CREATE TABLE allocation_log (revision INTEGER NOT NULL, pool TEXT NOT NULL, "
    "added INTEGER NOT NULL, ip_key BLOB NOT NULL)",
    "CREATE INDEX allocation_log_by_pool ON allocation_log (pool, revision)",
)


def test_a_schema_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    """A file written by the first release (schema 1, as its DDL was) opens, keeps every object,
    record and the revision, and goes on allocating; a watch from before the migration is Gone."""
    path = tmp_path / "state.db"
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode = WAL")
        for statement in _SCHEMA_1:
            raw.execute(statement)
        body = {**pool("p1"), "metadata": {"name": "p1", "uid": "u-p1", "resourceVersion": "3"}}
        body["status"] = {"allocatedIPCount": 1}
        raw.execute("INSERT INTO meta VALUES (1, 3, 0)")
        raw.execute("INSERT INTO objects VALUES ('SpiderIPPool', '', 'p1', 3, ?)", (json.dumps(body),))
        raw.execute(
            "INSERT INTO events VALUES (3, 'SpiderIPPool', '', 'p1', 'MODIFIED', ?)", (json.dumps(body),)
        )
        key = (0x0A000005).to_bytes(16, "big")
        raw.execute("INSERT INTO allocations VALUES ('10.0.0.5', 'p1', ?, 'default/a', 'ua', 3)", (key,))
        raw.execute("INSERT INTO allocation_log VALUES (3, 'p1', 1, ?)", (key,))
        raw.execute("PRAGMA user_version = 1")
    finally:
        raw.close()
    store = SqliteStore(path)
    try:
        assert store.revision() == "3"
        got = store.get("SpiderIPPool", "p1")
        assert got["metadata"]["uid"] == "u-p1" and got["metadata"]["resourceVersion"] == "3"
        assert json.loads(got["status"]["allocatedIPs"]) == {"10.0.0.5": {"pod": "default/a", "podUid": "ua"}}
        assert list(store.usage("p1").allocated) == [0x0A000005]
        with pytest.raises(Gone):
            store.watch(["SpiderIPPool"], "2", timeout=0)
        store.commit(claims=[Claim("p1", "3", "10.0.0.6", "default/b", "ub")])
        with pytest.raises(Conflict):  # the database still refuses a second owner
            store.commit(claims=[Claim("p1", "4", "10.0.0.5", "default/c", "uc")])
        assert [r.ip for r in store.records("p1")] == ["10.0.0.5", "10.0.0.6"]
        assert store.get("SpiderIPPool", "p1")["status"]["allocatedIPCount"] == 2
    finally:
        store.close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"meta", "objects", "events", "allocations", "record_heads"}
    finally:
        raw.close()


def test_usage_view_is_a_read_only_sorted_sequence(store: SqliteStore) -> None:
    store.create(pool("p1"))
    version = store.usage("p1").resource_version
    store.commit(claims=[Claim("p1", version, f"10.0.0.{h}", f"default/p{h}", "u") for h in (3, 1, 2)])
    view = store.usage("p1").allocated
    store.commit(claims=[Claim("p1", store.usage("p1").resource_version, "10.0.0.4", "default/p4", "u")])
    base = 167772160
    assert len(view) == 3
    assert view == [base + 1, base + 2, base + 3]
    assert view[-1] == base + 3 and view[0] == base + 1
    assert list(view[1:]) == [base + 2, base + 3]
    assert base + 2 in view and base + 4 not in view
    with pytest.raises(IndexError):
        view[3]


def test_non_sqlite_file_is_one_line_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database, it is a note\n" * 200)
    with pytest.raises(StoreUnavailable) as err:
        SqliteStore(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert path.read_bytes().startswith(b"this is not a database")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreUnavailable) as err:
        SqliteStore(path)
    assert str(path) in str(err.value) and "schema version" in str(err.value)


def test_missing_directory_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "spiderbgp" / "state.db"
    SqliteStore(path).close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.exists()


def test_locked_database_is_store_unavailable_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SqliteStore(path, busy_timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        with pytest.raises(StoreUnavailable) as err:
            s.create(pool("p1"))
        assert str(path) in str(err.value) and "locked" in str(err.value)
        assert s.list("SpiderIPPool") == []  # readers are not blocked in WAL mode
        blocker.execute("ROLLBACK")
        assert s.create(pool("p1"))["metadata"]["name"] == "p1"
    finally:
        blocker.close()
        s.close()


def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
    s.close()
    with pytest.raises(StoreUnavailable):
        s.list("SpiderIPPool")


def test_durability_setting(tmp_path: Path) -> None:
    normal = SqliteStore(tmp_path / "a.db")
    full = SqliteStore(tmp_path / "b.db", fsync=True)
    try:
        assert normal.synchronous() == "NORMAL"
        assert full.synchronous() == "FULL"
    finally:
        normal.close()
        full.close()


def test_a_batch_commits_its_writes_together_and_a_failing_write_leaves_nothing(tmp_path: Path) -> None:
    """Group commit: writes inside batch() share one transaction (another connection sees none of them
    before the block ends); a write that fails inside is rolled back alone (its savepoint); the usage
    cache follows the writes that stand."""
    store = SqliteStore(tmp_path / "state.db")
    other = SqliteStore(tmp_path / "state.db")
    try:
        store.create(pool("p1"))
        before = other.revision()
        with store.batch():
            store.commit(
                claims=[Claim("p1", store.usage("p1").resource_version, "10.0.0.1", "default/a", "ua")]
            )
            with pytest.raises(Conflict):  # the same address again: refused, and nothing of it stays
                store.commit(
                    claims=[Claim("p1", store.usage("p1").resource_version, "10.0.0.1", "default/b", "ub")]
                )
            with pytest.raises(Conflict):  # a stale version
                store.commit(claims=[Claim("p1", "1", "10.0.0.9", "default/c", "uc")])
            store.commit(
                claims=[Claim("p1", store.usage("p1").resource_version, "10.0.0.2", "default/d", "ud")],
                endpoint=endpoint("d", "ud"),
            )
            assert other.revision() == before  # nothing is visible outside before the block ends
            assert [r.ip for r in store.records("p1")] == ["10.0.0.1", "10.0.0.2"]
        assert [r.ip for r in other.records("p1")] == ["10.0.0.1", "10.0.0.2"]
        assert list(store.usage("p1").allocated) == [0x0A000001, 0x0A000002]
        assert other.get("SpiderIPPool", "p1")["status"]["allocatedIPCount"] == 2
        # revisions stay one per event, with no gap left by the refused writes
        events = list(other.watch(["SpiderIPPool", "SpiderEndpoint"], before, timeout=0))
        assert [int(e.revision) for e in events] == list(
            range(int(before) + 1, int(before) + 1 + len(events))
        )
    finally:
        store.close()
        other.close()


def test_an_exception_out_of_a_batch_rolls_every_write_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    try:
        store.create(pool("p1"))
        store.usage("p1")  # a usage cache the batch advances, then must forget
        with pytest.raises(RuntimeError), store.batch():
            store.commit(
                claims=[Claim("p1", store.usage("p1").resource_version, "10.0.0.1", "default/a", "ua")]
            )
            assert list(store.usage("p1").allocated) == [0x0A000001]
            raise RuntimeError("the caller gave up")
        assert store.records("p1") == []
        assert list(store.usage("p1").allocated) == []
        version = store.usage("p1").resource_version
        store.commit(claims=[Claim("p1", version, "10.0.0.1", "default/a", "ua")])  # still free
        assert [r.ip for r in store.records("p1")] == ["10.0.0.1"]
    finally:
        store.close()
