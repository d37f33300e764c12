"""The embedded store's SQLite schema, its version, and how a connection is opened and prepared.

Tables (``PRAGMA user_version`` = ``SCHEMA_VERSION``):

``meta``
    One row: ``compacted`` (``events`` rows at or below it were removed) and
    ``revision``, a floor of the global, strictly increasing store revision (every change takes the
    next one and writes one event, so the revision is ``max(meta.revision, max(events.revision))``;
    ``meta.revision`` is written only when events are compacted, to keep commits small).
``objects``
    One row per object: (kind, namespace, name), unique -> revision (= metadata.resourceVersion) and
    the object as JSON.  A SpiderIPPool's JSON never holds ``status.allocatedIPs``: that is rendered
    from ``allocations`` when the pool is read.  A rowid table with a unique index, not a WITHOUT
    ROWID table: bodies of a few hundred bytes inserted in name order split its pages on most inserts.
``events``
    The watch history: one row per revision (type ADDED/MODIFIED/DELETED and the object at that
    revision), appended in the same transaction as the change it describes.  A SpiderIPPool event
    whose change added or removed records lists them in ``changes`` (``+N`` / ``-N``, N the address
    as an integer, comma-separated, in order): what a per-pool usage cache replays instead of
    re-reading a whole pool.
    A claim or release on a pool whose body is large (``sqlite_store``) does not copy the body:
    its event has ``base``, the revision of the pool's last event with a whole body, and ``body``
    is the merge patch (RFC 7396: ``resourceVersion`` and ``allocatedIPCount``) that turns that
    body into this revision's; a watch applies it with ``json_patch``.  Compaction keeps an event
    that a kept event names as its ``base``.
``allocations``
    One row per allocated IP, keyed by the address in network byte order: 4 bytes for IPv4, 16 for
    IPv6, so the key carries the family (``10.50.0.10`` and ``::a32:a`` are different keys) and
    is unique across pools (the database itself refuses a second owner); in address order within
    a family, so consecutive claims append; with its canonical text, pool, pod and pod UID.
``record_heads``
    One row per block pool (``spiderbgp.io/block-size``, issue 15) that has had a claim or release
    in its blocks: ``revision``, the last revision that changed the pool's records (a claim or
    release moves its block's revision, not the pool's, so the pool's own revision does not tell
    a usage cache that it is stale), and ``count``, the pool's records (its derived
    ``allocatedIPCount``).  A block's records change in a MODIFIED event of the block, whose
    ``changes`` lists them as a pool's does.  A SpiderIPBlock's JSON holds its
    ``status.allocatedIPCount`` (kept in the same transaction as its records) but never
    ``allocatedIPs``, which is rendered from ``allocations`` as for pools.

Version 1 kept (kind, namespace, name) as a WITHOUT ROWID key, allocations keyed by the address text
and a separate ``allocation_log`` table; version 2 keyed IPv4 records by 16 bytes like IPv6 (so an
IPv4-compatible IPv6 address had its IPv4 address's key) and copied every pool body into every claim's
event; version 3 had no ``record_heads`` and bumped a block pool's revision per claim.
``ensure_schema`` migrates such files in place, one version after the other.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ipam.errors import StoreUnavailable

__all__ = ["SCHEMA_VERSION", "connect", "ensure_schema"]

SCHEMA_VERSION = 4
WAL_AUTOCHECKPOINT = 8192

_OBJECTS = """CREATE TABLE objects (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        revision INTEGER NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (kind, namespace, name)
    )"""
_ALLOCATIONS = """CREATE TABLE allocations (
        ip_key BLOB NOT NULL PRIMARY KEY,
        ip TEXT NOT NULL,
        pool TEXT NOT NULL,
        pod TEXT NOT NULL,
        pod_uid TEXT NOT NULL,
        revision INTEGER NOT NULL
    ) WITHOUT ROWID"""
_ALLOCATION_INDEXES = (
    "CREATE INDEX allocations_by_pool ON allocations (pool, ip_key)",
    "CREATE INDEX allocations_by_pod ON allocations (pod)",
)

_RECORD_HEADS = """CREATE TABLE record_heads (
        pool TEXT NOT NULL PRIMARY KEY,
        revision INTEGER NOT NULL,
        count INTEGER NOT NULL
    ) WITHOUT ROWID"""

_EVENTS_BY_BASE = "CREATE INDEX events_by_base ON events (base) WHERE base IS NOT NULL"

_DDL: tuple[str, ...] = (
    """CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision INTEGER NOT NULL,
        compacted INTEGER NOT NULL
    )""",
    "INSERT INTO meta (id, revision, compacted) VALUES (1, 0, 0)",
    _OBJECTS,
    """CREATE TABLE events (
        revision INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
        body TEXT NOT NULL,
        changes TEXT,
        base INTEGER
    )""",
    _EVENTS_BY_BASE,
    _ALLOCATIONS,
    *_ALLOCATION_INDEXES,
    _RECORD_HEADS,
)

# version 1 -> 2, inside the schema transaction.  The revision stays; everything before it counts as
# compacted, because version 1 kept record changes elsewhere: a usage cache or a watch from before
# the migration reloads or lists again (Gone), as after any compaction.
_MIGRATE_1_TO_2: tuple[str, ...] = (
    "UPDATE meta SET revision = max(revision, coalesce((SELECT max(revision) FROM events), 0))",
    "UPDATE meta SET compacted = revision",
    "DELETE FROM events",
    "ALTER TABLE objects RENAME TO objects_v1",
    _OBJECTS,
    "INSERT INTO objects (kind, namespace, name, revision, body) "
    "SELECT kind, namespace, name, revision, body FROM objects_v1 ORDER BY kind, namespace, name",
    "DROP TABLE objects_v1",
    "ALTER TABLE events ADD COLUMN changes TEXT",
    "ALTER TABLE allocations RENAME TO allocations_v1",
    "DROP INDEX allocations_by_pool",
    "DROP INDEX allocations_by_pod",
    _ALLOCATIONS,
    "INSERT INTO allocations (ip_key, ip, pool, pod, pod_uid, revision) "
    "SELECT ip_key, ip, pool, pod, pod_uid, revision FROM allocations_v1 ORDER BY ip_key",
    "DROP TABLE allocations_v1",
    *_ALLOCATION_INDEXES,
    "DROP TABLE allocation_log",
)


# version 2 -> 3: IPv4 keys become their last 4 bytes (a version-2 IPv4 key is the address as 16
# bytes, so its first 12 are zero); IPv6 keys stay 16 bytes.  Events gain ``base``.
_MIGRATE_2_TO_3: tuple[str, ...] = (
    "UPDATE allocations SET ip_key = substr(ip_key, 13, 4) WHERE instr(ip, ':') = 0 AND length(ip_key) = 16",
    "ALTER TABLE events ADD COLUMN base INTEGER",
    _EVENTS_BY_BASE,
)
# version 3 -> 4: block pools' record heads; a block's stored status loses the derived fields a
# previous version may have mirrored into it (its count is then counted from the rows when read,
# and kept from its next record change on).
_MIGRATE_3_TO_4: tuple[str, ...] = (
    _RECORD_HEADS,
    "UPDATE objects SET body = json_remove(body, '$.status.allocatedIPs', '$.status.allocatedIPCount') "
    "WHERE kind = 'SpiderIPBlock'",
)
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: _MIGRATE_1_TO_2, 2: _MIGRATE_2_TO_3, 3: _MIGRATE_3_TO_4}


def connect(path: Path, *, busy_timeout: float, fsync: bool) -> sqlite3.Connection:
    """Open one connection in autocommit mode (transactions are explicit BEGIN ... COMMIT).

    ``fsync=False`` sets ``synchronous=NORMAL``: in WAL mode a committed transaction survives the
    death of the process at any moment (it is in the WAL file), but the last transactions may be lost
    if the machine loses power.  ``fsync=True`` sets ``synchronous=FULL``, which also survives power
    loss at the price of an fsync per commit.
    """
    conn = sqlite3.connect(
        str(path),
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=256,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = FULL" if fsync else "PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = OFF")
        # the store checkpoints from a thread of its own (sqlite_store._Checkpointer); this threshold
        # (pages of WAL) only bounds the file for processes that commit too rarely to trigger that
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(conn: sqlite3.Connection, path: Path, *, busy_timeout: float) -> None:
    """Switch the file to WAL and create the schema if the file is new (safe if several processes
    open a new file at once: the check is repeated inside the write transaction).

    Switching a new file to WAL needs it to itself, and SQLite answers "database is locked" at once
    instead of calling the busy handler while another connection is doing the same; so that
    statement is retried here for up to ``busy_timeout`` seconds.  (``SqliteStore`` also holds its
    writer file lock around this call, so two stores opening one new file take turns.)"""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(0.002)
    if mode is None or str(mode[0]).lower() != "wal":
        raise StoreUnavailable(f"{path}: cannot switch the store database to WAL mode (got {mode!r})")
    if _version(conn) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _version(conn)
        if version == 0:
            for statement in _DDL:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version in _MIGRATIONS:
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise StoreUnavailable(
                f"{path}: store schema version {version} is not the version {SCHEMA_VERSION} this "
                "program understands"
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0
