"""The embedded object store: Kubernetes-shaped objects and allocation records in one SQLite file.

``SqliteStore`` implements ``ipam.store.protocol.Store`` (see that module for the contract) for every kind of
``ipam.kinds``.  Design:

- stdlib ``sqlite3`` in WAL mode, a connection per thread (the agent calls the store from a thread
  pool), ``busy_timeout`` for waiting on other writers, and ``BEGIN IMMEDIATE`` for every write so that
  a read-check-write is atomic across processes sharing the file.
- Durability: ``synchronous=NORMAL`` by default, so a change is safe against the death of the process
  (even SIGKILL) as soon as the call returns; ``fsync=True`` selects ``synchronous=FULL``, which also
  survives power loss (one fsync per commit).
- One global revision counter; every change takes the next revision, which becomes the object's
  ``metadata.resourceVersion`` and the revision of its watch event (same transaction).
- Allocation records are rows (one per IP, keyed by the address), never a rewritten list: a claim
  costs O(log n).  ``usage()`` keeps a per-pool sorted list in this instance and brings it up to date
  from the record changes listed on the pool's watch events, so it costs O(changes since the last
  call).  A claim bumps the pool's resourceVersion and count with ``json_set`` in SQL.
- A SpiderIPPool read with ``get``/``list`` (and returned by ``create``/``update``/``update_status``)
  carries ``status.allocatedIPs`` in Spiderpool's JSON-string format and ``status.allocatedIPCount``,
  both from the rows.  Watch events of SpiderIPPool carry ``allocatedIPCount`` but NOT
  ``allocatedIPs`` (rendering every record into every event would make a fill quadratic): read the
  records with ``get``/``records`` when needed.
- Deletion has the API server's rules (``ipam.store.protocol``): finalizers keep an object, terminating, with
  ``metadata.deletionTimestamp``; Pods deleted with a grace period stay until the final delete with
  grace 0; the update that removes the last finalizer of a terminating object removes it; a
  terminating SpiderIPPool takes releases but no claims.
- SQLite failures a caller can meet become ``StoreUnavailable`` with one line naming the file
  ("database is locked" past the busy timeout, a corrupt or non-SQLite file, a read-only directory).
"""

from __future__ import annotations

import bisect
import builtins
import calendar
import fcntl
import ipaddress
import json
import os
import random
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ipam.admission import check_size, validate_metadata
from ipam.errors import AlreadyExists, Conflict, Gone, Invalid, NotFound, StoreUnavailable, WouldBlock
from ipam.kinds import KindInfo, kind_info
from ipam.model import FINALIZER
from ipam.records import Claim, IPRecord, Obj, PoolUsage, SortedPrefix, WatchEvent
from ipam.store.protocol import GroupCommit
from ipam.store.sqlite_schema import connect, ensure_schema

__all__ = ["SqliteStore", "WriterBusy", "format_timestamp"]

POOL_KIND = "SpiderIPPool"
ENDPOINT_KIND = "SpiderEndpoint"
POD_KIND = "Pod"  # the one kind with graceful deletion

# metadata fields the store owns: an update never takes them from the caller's object
_SYSTEM_METADATA = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation")
# metadata fields only a delete sets: create drops the caller's, update keeps the stored ones
_DELETION_METADATA = ("deletionTimestamp", "deletionGracePeriodSeconds")
# status fields of a SpiderIPPool that are derived from the allocation records
_DERIVED_POOL_STATUS = ("allocatedIPs", "allocatedIPCount")
# above this many changes since the cached revision, re-read the pool instead of replaying the log
_REPLAY_LIMIT = 256
_SPIN_SECONDS = 0.0005  # how long a bounded wait for the file lock yields before it sleeps
_REPLAY_SCAN_LIMIT = 4096  # revisions of events a replay may scan
_POOL_STATE = (
    "SELECT revision, json_extract(body, '$.metadata.deletionTimestamp') IS NOT NULL FROM objects "
    "WHERE kind = ? AND namespace = '' AND name = ?"
)
# a claim's or release's change to its pool: the next revision, as resourceVersion too, and the count
_POOL_BUMP = (
    "UPDATE objects SET revision = ?, body = json_set(body, '$.metadata.resourceVersion', ?, "
    "'$.status.allocatedIPCount', coalesce(json_extract(body, '$.status.allocatedIPCount'), 0) + ?) "
    "WHERE kind = ? AND namespace = '' AND name = ?"
)
# A claim's or release's event.  A pool body longer than _DELTA_EVENT_MIN is not copied into it (a
# fill would write the body once per claim): when the pool's previous event (the revision before the
# bump) is still kept, this one names the whole-body event it derives from as ``base`` and holds only
# the merge patch of what the bump changed (``sqlite_schema``).
_DELTA_EVENT_MIN = 1024
_POOL_EVENT = (
    "INSERT INTO events (revision, kind, namespace, name, type, body, changes, base) "
    "SELECT ?1, o.kind, o.namespace, o.name, 'MODIFIED', "
    "CASE WHEN p.revision IS NULL THEN o.body ELSE json_object("
    "'metadata', json_object('resourceVersion', json_extract(o.body, '$.metadata.resourceVersion')), "
    "'status', json_object('allocatedIPCount', json_extract(o.body, '$.status.allocatedIPCount'))) END, "
    "?2, coalesce(p.base, p.revision) "
    "FROM objects AS o LEFT JOIN events AS p ON p.revision = ?3 AND length(o.body) > ?4 "
    "WHERE o.kind = ?5 AND o.namespace = '' AND o.name = ?6"
)
# an event as the watch serves it: a patch event applied to its base
_EVENT_BODY = "CASE WHEN e.base IS NULL THEN e.body ELSE json_patch(b.body, e.body) END"
# The store's revision is the newest event's (every revision writes exactly one event, in the same
# transaction); ``meta.revision`` is only brought up to date when events are compacted, so a commit
# does not rewrite the meta page (one page less in the WAL per write).
_REVISION_AND_COMPACTED = (
    "SELECT max(m.revision, coalesce((SELECT max(revision) FROM events), 0)), m.compacted FROM meta AS m"
)
# a background checkpoint after this many write transactions of one instance (see _Checkpointer)
_CHECKPOINT_EVERY = 64

EventType = Literal["ADDED", "MODIFIED", "DELETED"]

# Spiderpool's allocatedIPs string, {"10.0.0.1":{"pod":"ns/name","podUid":"..."},...}, built by SQLite;
# the subquery walks the (pool, ip_key) index, so keys come in IP order.
_RENDER_RECORDS = (
    "SELECT count(*), json_group_object(ip, json_object('pod', pod, 'podUid', pod_uid)) "
    "FROM (SELECT ip, pod, pod_uid FROM allocations WHERE pool = ? ORDER BY ip_key)"
)


class WriterBusy(WouldBlock):
    """A write with a bounded ``wait`` (``SqliteStore.batch(wait=...)``) found another writer (a
    thread of this process, or another process) holding the write lock.  Nothing was written."""


def random_uid() -> str:
    """A random (version 4) UUID as Kubernetes gives objects, from the ``random`` module's generator
    (seeded from the OS, re-seeded in a forked child) instead of a ``getrandom`` call per object."""
    value = random.getrandbits(128)
    value = (value & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    value = (value & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def format_timestamp(seconds: float) -> str:
    """RFC 3339 UTC with second precision, as Kubernetes writes it: ``2026-11-26T13:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _parse_timestamp(text: object) -> float | None:
    """The seconds of a timestamp this store wrote (``format_timestamp``); None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _grace_period(info: KindInfo, namespace: str, name: str, seconds: object) -> int | None:
    """The grace period a delete asks for, as the API server takes it: only Pods have graceful
    deletion (other kinds ignore it); a negative or non-integer value is refused."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise Invalid(
            info.kind, _shown(namespace, name), "gracePeriodSeconds", f"{seconds!r} is not an integer"
        )
    if seconds < 0:
        raise Invalid(info.kind, _shown(namespace, name), "gracePeriodSeconds", f"{seconds} must be >= 0")
    return seconds if info.kind == POD_KIND else None


def _finalizers(meta: Obj) -> builtins.list[str]:
    value = meta.get("finalizers")
    return [str(f) for f in value] if isinstance(value, builtins.list) else []


def _grace_pending(meta: Obj) -> bool:
    """A pod deleted with a grace period that its final delete (grace 0) has not ended yet."""
    return bool(meta.get("deletionTimestamp")) and int(meta.get("deletionGracePeriodSeconds") or 0) > 0


_SQLITE_MAGIC = b"SQLite format 3\x00"
# the database and the files SQLite and this store keep beside it
_COMPANIONS = ("", "-wal", "-shm", ".lock")


def _prepare_file(path: Path) -> None:
    """Before anything is created beside it: refuse a path that holds something other than an SQLite
    database (no lock file appears next to it), and create a new database file with mode 0600 (SQLite
    gives its -wal and -shm files the database file's mode), since allocation records name every pod."""
    try:
        # O_NONBLOCK: a FIFO in the way must not hang the open
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except IsADirectoryError:
        raise StoreUnavailable(f"{path}: is a directory, not a store database") from None
    except OSError as err:
        if path.is_file():  # read-only: SQLite may still read it
            return
        raise StoreUnavailable(f"{path}: cannot create the store database: {err.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreUnavailable(f"{path}: is not a regular file, so not a store database")
        header = os.pread(fd, len(_SQLITE_MAGIC), 0)
    finally:
        os.close(fd)
    if header and header != _SQLITE_MAGIC[: len(header)]:
        raise StoreUnavailable(f"{path}: is not an SQLite store database")


def _restrict_modes(path: Path) -> None:
    """Files of an existing store that others may read (made before stores used 0600) become 0600,
    when this process owns them."""
    uid = os.geteuid()
    for suffix in _COMPANIONS:
        target = Path(f"{path}{suffix}")
        with suppress(OSError):
            st = target.lstat()
            if st.st_uid == uid and st.st_mode & 0o077 and not target.is_symlink():
                target.chmod(0o600)


@dataclass
class _PoolCache:
    revision: int
    items: builtins.list[int]


def _apply_changes(cache: _PoolCache, changes: Sequence[tuple[bool, int]], upto: int) -> None:
    """Apply record additions (True) and removals (False), in order, to a usage cache now at ``upto``."""
    items = cache.items
    tail = items[-1] if items else -1
    appends: builtins.list[int] = []
    for added, value in changes:
        if not added or value <= tail:
            break
        appends.append(value)
        tail = value
    if len(appends) == len(changes):
        # views handed out earlier cover only a prefix: appending in place keeps them valid
        items.extend(appends)
    else:
        items = builtins.list(items)
        for added, value in changes:
            i = bisect.bisect_left(items, value)
            present = i < len(items) and items[i] == value
            if added and not present:
                items.insert(i, value)
            elif not added and present:
                del items[i]
        cache.items = items
    cache.revision = upto


class _Checkpointer:
    """Copies the WAL back into the database file from a thread of its own, every ``every`` commits.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold: that caller then
    waits for two fsyncs and a thousand page writes (4-5 ms, every ~75 allocations).  Here the
    committing thread only sets an event; the checkpoint (PASSIVE: it never waits for readers or
    writers) runs with the GIL released.  Durability is unchanged: a commit is in the WAL when it
    returns whether or not it was checkpointed yet.  The connection's own automatic checkpoint stays on
    with a higher threshold (``sqlite_schema.connect``) for processes that write rarely."""

    def __init__(self, run: Callable[[], None], every: int) -> None:
        self._run = run
        self._every = every
        self._count = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def committed(self) -> None:
        with self._guard:
            self._count += 1
            if self._count < self._every or self._stopping:
                return
            self._count = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sqlite-checkpoint", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            self._run()

    def stop(self) -> None:
        with self._guard:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()


@dataclass
class _Tx:
    """One write transaction: its connection, the revisions it hands out, and the pools whose usage
    caches it advanced (dropped if a batch rolls back)."""

    conn: sqlite3.Connection
    revision: int
    pools: set[str] = field(default_factory=set)

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def give_back(self, rev: int) -> None:
        """Return the revision just taken, unused (every revision must write exactly one event)."""
        assert rev == self.revision
        self.revision -= 1

    def event(
        self, info: KindInfo, namespace: str, name: str, change: EventType, body: str, rev: int
    ) -> None:
        self.conn.execute(
            "INSERT INTO events (revision, kind, namespace, name, type, body) VALUES (?, ?, ?, ?, ?, ?)",
            (rev, info.kind, namespace, name, change, body),
        )


def _dumps(obj: Obj) -> str:
    """Compact JSON; NaN and infinities are refused (ValueError), as JSON and the API server have none
    (and SQLite's JSON functions could not read the body back)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _check_version(info: KindInfo, namespace: str, name: str, wanted: object, stored: int) -> None:
    """The resourceVersion precondition: absent or empty means none; otherwise it must be current."""
    if wanted is None or wanted == "":
        return
    if str(wanted) != str(stored):
        raise Conflict(
            f'{info.kind} "{_shown(namespace, name)}": resourceVersion {wanted} is stale '
            f"(now {stored}); re-read and retry"
        )


def _canonical_ip(text: str, pool: str, field_name: str) -> tuple[str, int, bytes]:
    """The canonical text, integer and record key of an address (IPv4 through inet_pton: 4x cheaper
    per claim).  The key is the address in network byte order, 4 bytes for IPv4 and 16 for IPv6, so
    it carries the family: ``10.50.0.10`` and the IPv4-compatible ``::a32:a`` never share one."""
    try:
        if isinstance(text, str) and ":" not in text:
            packed = socket.inet_pton(socket.AF_INET, text)
            return socket.inet_ntop(socket.AF_INET, packed), int.from_bytes(packed, "big"), packed
        address = ipaddress.ip_address(text)
    except (OSError, ValueError):
        raise Invalid(POOL_KIND, pool, field_name, f"{text!r} is not an IP address") from None
    return str(address), int(address), address.packed


def _shown(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _typed(info: KindInfo, obj: Obj) -> Obj:
    """The object with apiVersion and kind set from the kind table, first (as kubectl shows them)."""
    rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    return {"apiVersion": info.api_version, "kind": info.kind, **rest}


def _without_derived_status(obj: Obj) -> None:
    status = obj.get("status")
    if isinstance(status, dict):
        for key in _DERIVED_POOL_STATUS:
            status.pop(key, None)


def _spec_part(info: KindInfo, obj: Obj) -> dict[str, Any]:
    """What a change of bumps metadata.generation: everything but metadata (and status for kinds with
    a status subresource)."""
    skip = {"metadata", "status"} if info.has_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skip and k not in ("apiVersion", "kind")}


class SqliteStore:
    """``ipam.store.protocol.Store`` on one SQLite file, shared safely by threads and processes."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        uid_factory: Callable[[], str] = random_uid,
        fsync: bool = False,
        busy_timeout: float = 10.0,
        history: int = 100_000,
        poll_interval: float = 0.02,
    ) -> None:
        """Open (and on first use create) the store at ``path``; its directory is created with mode
        0700 if missing.  ``history`` is how many watch events are kept; a watch from before them
        raises Gone.  Raises StoreUnavailable naming the path if the file cannot be used."""
        if history < 1:
            raise ValueError("history must be at least 1")
        self._path = Path(path)
        self._clock = clock
        self._uid_factory = uid_factory
        self._fsync = fsync
        self._busy_timeout_s = busy_timeout
        self._history = history
        self._compact_step = max(1, min(1000, history // 10))
        self._poll_interval = poll_interval
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: builtins.list[sqlite3.Connection] = []
        self._closed = False
        self._cache_lock = threading.Lock()
        # One writer at a time: threads of this process queue on a lock, and processes sharing the file
        # on an flock of "<db>.lock", instead of in SQLite's busy handler, which sleeps 1..100 ms
        # between retries (agents sat idle while ADDs took 30+ ms).  busy_timeout still bounds a wait
        # for a writer that does not take the flock (another tool, a checkpoint).
        self._write_lock = threading.Lock()
        self._checkpointer = _Checkpointer(self._checkpoint, _CHECKPOINT_EVERY)
        self._lock_fd: int | None = None
        self._cache: dict[str, _PoolCache] = {}
        self._rendered: dict[str, tuple[str, int, str | None]] = {}  # pool -> (revision, count, text)
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise StoreUnavailable(f"{self._path}: cannot create its directory: {err.strerror}") from err
        _prepare_file(self._path)
        try:
            self._lock_fd = os.open(f"{self._path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            self._lock_fd = None  # read-only directory: SQLite's own locking alone still works
        try:
            conn = self._connection()
            with self._setup_lock():
                ensure_schema(conn, self._path, busy_timeout=busy_timeout)
            _restrict_modes(self._path)
        except sqlite3.Error as err:
            self.close()
            raise self._unavailable(err) from err
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _setup_lock(self) -> Iterator[None]:
        """The writer file lock for opening the file: stores that open one new file take turns."""
        fd = self._lock_fd
        if fd is None:
            yield
            return
        try:
            self._flock_within(fd, self._busy_timeout_s)
        except WriterBusy:
            raise StoreUnavailable(
                f"{self._path}: another process held the store's lock file for more than "
                f"{self._busy_timeout_s:g}s while this one opened it"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @property
    def path(self) -> Path:
        return self._path

    def synchronous(self) -> str:
        """The durability level in force on this thread's connection: "NORMAL" (survives process
        death) or "FULL" (also survives power loss; ``fsync=True``)."""
        try:
            row = self._connection().execute("PRAGMA synchronous").fetchone()
        except sqlite3.Error as err:
            raise self._unavailable(err) from err
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(int(row[0]), str(row[0]))

    # ------------------------------------------------------------------ connections, transactions

    def close(self) -> None:
        checkpointer = getattr(self, "_checkpointer", None)
        if checkpointer is not None:
            checkpointer.stop()  # before the connections go: it may be using its own
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
            lock_fd, self._lock_fd = self._lock_fd, None
        for conn in connections:
            conn.close()
        if lock_fd is not None:
            os.close(lock_fd)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"{self._path}: the store is closed")
            try:
                conn = connect(self._path, busy_timeout=self._busy_timeout_s, fsync=self._fsync)
            except sqlite3.Error as err:
                raise self._unavailable(err) from err
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def _checkpoint(self) -> None:
        """One PASSIVE checkpoint on this thread's connection; a failure only leaves the WAL longer."""
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (sqlite3.Error, StoreUnavailable):
            return

    def _unavailable(self, err: sqlite3.Error) -> StoreUnavailable:
        text = str(err)
        if isinstance(err, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return StoreUnavailable(
                f"{self._path}: the store database stayed locked by another writer for more than "
                f"{self._busy_timeout_s:g}s"
            )
        if isinstance(err, sqlite3.OperationalError):
            return StoreUnavailable(f"{self._path}: cannot use the store database: {text}")
        return StoreUnavailable(f"{self._path}: not a usable SQLite store database: {text}")

    def _fetchall(self, sql: str, params: Sequence[object]) -> builtins.list[Any]:
        """One SELECT outside an explicit transaction: a single statement already reads one consistent
        snapshot in WAL mode, so a BEGIN/COMMIT pair around it would only cost two more round trips."""
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise self._unavailable(err) from err

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads of this thread inside share one read transaction (``ipam.store.protocol``): SQLite then takes
        its file locks once, not around every statement.  ``_write_in`` ends it before a write."""
        conn = self._connection()
        if conn.in_transaction:
            yield  # joins the enclosing snapshot
            return
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as err:
            raise self._unavailable(err) from err
        try:
            yield
        finally:
            if conn.in_transaction:  # not ended by a write
                with suppress(sqlite3.Error):
                    conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs (inside ``snapshot()``: that one)."""
        conn = self._connection()
        if conn.in_transaction:
            yield conn
            return
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as err:
            raise self._unavailable(err) from err

    def group_commit(self) -> GroupCommit:
        return self

    @contextmanager
    def batch(self, *, wait: float | None = None) -> Iterator[None]:
        """Group commit (``ipam.store.protocol.GroupCommit``): the writes this thread makes inside the block
        share one write transaction, each in a savepoint of its own, and become durable together when
        the block ends.  The writer locks are taken at the start (past ``wait`` seconds, when given:
        ``WriterBusy``, the agent then hands its calls to a thread) and held to the end, so keep the
        block short: no other writer, of this process or another, commits in between."""
        if getattr(self._local, "batch", None) is not None:
            yield
            return
        pools: set[str] = set()
        try:
            with self._write(wait) as tx:
                tx.pools = pools
                self._local.batch = tx
                try:
                    yield
                finally:
                    self._local.batch = None
        except BaseException:
            with self._cache_lock:  # usage caches advanced by the writes that were rolled back
                for pool in pools:
                    self._cache.pop(pool, None)
            raise

    @contextmanager
    def _write(self, wait: float | None = None) -> Iterator[_Tx]:
        """BEGIN IMMEDIATE ... COMMIT; rolls back on any exception so a failed call changes nothing.
        Inside ``batch()``: a savepoint of the batch's transaction instead.  ``wait``: how long to wait
        for the writer locks before WriterBusy (None: as long as it takes)."""
        batch: _Tx | None = getattr(self._local, "batch", None)
        if batch is not None:
            yield from self._savepoint(batch)
            return
        conn = self._connection()
        if wait is not None:
            wait = max(0.0, wait)
        if not self._write_lock.acquire(timeout=-1 if wait is None else wait):
            raise WriterBusy(f"{self._path}: another thread of this process is writing")
        try:
            fd = self._lock_fd
            if fd is not None:
                if wait is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                else:
                    self._flock_within(fd, wait)
            try:
                yield from self._write_in(conn, wait)
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._write_lock.release()

    def _savepoint(self, tx: _Tx) -> Iterator[_Tx]:
        start = tx.revision
        try:
            tx.conn.execute("SAVEPOINT write")
        except sqlite3.Error as err:
            raise self._unavailable(err) from err
        try:
            yield tx
        except BaseException:
            with suppress(sqlite3.Error):
                tx.conn.execute("ROLLBACK TO write")
                tx.conn.execute("RELEASE write")
            tx.revision = start  # the revisions it took were not used
            raise
        tx.conn.execute("RELEASE write")

    def _flock_within(self, fd: int, wait: float) -> None:
        """The file lock, polled for at most ``wait`` seconds (flock itself has no timeout).

        Another process's commit holds it for 0.1-0.2 ms: the first ``_SPIN_SECONDS`` only yield the
        CPU between tries (a 100 us sleep oversleeps by about half its length, which a caller on an
        event loop pays on every contended commit); after that, sleeps."""
        start = time.monotonic()
        deadline = start + wait
        spin_until = start + min(wait, _SPIN_SECONDS)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    raise WriterBusy(f"{self._path}: another process is writing") from None
            if now < spin_until:
                os.sched_yield()
            else:
                time.sleep(0.0001)

    def _busy_timeout(self, conn: sqlite3.Connection, seconds: float) -> None:
        """Set SQLite's busy timeout of this thread's connection (a PRAGMA only when it changes)."""
        ms = int(seconds * 1000)
        if getattr(self._local, "busy_ms", None) != ms:
            conn.execute(f"PRAGMA busy_timeout = {ms}")
            self._local.busy_ms = ms

    def _write_in(self, conn: sqlite3.Connection, wait: float | None = None) -> Iterator[_Tx]:
        """The write transaction; ``wait`` (not None) bounds the wait for a writer that does not take
        our file lock (another tool's BEGIN IMMEDIATE): past it, WriterBusy."""
        try:
            if conn.in_transaction:
                conn.execute("COMMIT")  # a write ends this thread's read snapshot (``snapshot()``)
            self._busy_timeout(conn, self._busy_timeout_s if wait is None else wait)
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            if wait is not None and isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
                raise WriterBusy(f"{self._path}: another writer holds the database") from None
            raise self._unavailable(err) from err
        try:
            row = conn.execute(_REVISION_AND_COMPACTED).fetchone()
            start, compacted = int(row[0]), int(row[1])
            tx = _Tx(conn, start)
            yield tx
            if tx.revision != start:
                horizon = tx.revision - self._history
                if horizon - compacted >= self._compact_step:
                    conn.execute(
                        "DELETE FROM events WHERE revision <= ?1 AND revision NOT IN "
                        "(SELECT base FROM events WHERE base IS NOT NULL AND revision > ?1)",
                        (horizon,),
                    )
                    conn.execute("UPDATE meta SET revision = ?, compacted = ?", (tx.revision, horizon))
            conn.execute("COMMIT")
            if tx.revision != start:
                self._checkpointer.committed()
        except BaseException as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._unavailable(exc) from exc
            raise

    # ------------------------------------------------------------------ identity and rendering

    @staticmethod
    def _info(kind: object, name: str = "") -> KindInfo:
        if not isinstance(kind, str) or not kind:
            raise Invalid("object", name or "?", "kind", "is required")
        try:
            return kind_info(kind)
        except KeyError:
            raise Invalid(kind, name or "?", "kind", f"unknown kind {kind!r}") from None

    def _identify(self, obj: object) -> tuple[KindInfo, str, str]:
        """Kind, namespace and name of an object a caller passed in (Invalid if malformed)."""
        if not isinstance(obj, dict):
            raise Invalid("object", "?", "object", "must be a mapping")
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        shown = name if isinstance(name, str) and name else "?"
        info = self._info(obj.get("kind"), shown)
        if not isinstance(meta, dict):
            raise Invalid(info.kind, shown, "metadata", "is required")
        if not isinstance(name, str) or not name:
            raise Invalid(info.kind, shown, "metadata.name", "is required")
        if "/" in name:
            raise Invalid(info.kind, name, "metadata.name", "may not contain '/'")
        api_version = obj.get("apiVersion")
        if api_version is not None and api_version != info.api_version:
            raise Invalid(info.kind, name, "apiVersion", f"must be {info.api_version!r}, not {api_version!r}")
        namespace = meta.get("namespace")
        if info.namespaced:
            if not isinstance(namespace, str) or not namespace:
                raise Invalid(info.kind, name, "metadata.namespace", "is required for a namespaced kind")
        else:
            if namespace not in (None, ""):
                raise Invalid(info.kind, name, "metadata.namespace", f"{info.kind} is not namespaced")
            namespace = ""
        for key in ("labels", "annotations"):
            value = meta.get(key)
            if value is not None and not (
                isinstance(value, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            ):
                raise Invalid(info.kind, name, f"metadata.{key}", "must map strings to strings")
        finalizers = meta.get("finalizers")
        if finalizers is not None and not (
            isinstance(finalizers, builtins.list) and all(isinstance(f, str) and f for f in finalizers)
        ):
            raise Invalid(info.kind, name, "metadata.finalizers", "must be a list of non-empty strings")
        return info, namespace, name

    @staticmethod
    def _serialize(info: KindInfo, name: str, obj: Obj) -> str:
        try:
            body = _dumps(obj)
        except (TypeError, ValueError) as err:
            raise Invalid(info.kind, name, "object", f"is not JSON-serializable: {err}") from None
        check_size(info.kind, name, len(body))
        return body

    def _render_pool(self, conn: sqlite3.Connection, obj: Obj, *, committed: bool = True) -> Obj:
        """Add ``status.allocatedIPs`` (Spiderpool's JSON string, keys in IP order, absent when there
        are no records) and ``allocatedIPCount``, both from the rows, to a stored pool.

        SQLite builds the string (``json_group_object`` over the (pool, ip_key) index, in C); the
        result is kept per pool revision, so reading pools that did not change costs no rendering.
        Inside a write transaction (``committed=False``) nothing is cached: the revision could still
        be rolled back and then be reused."""
        name = obj["metadata"]["name"]
        revision = obj["metadata"]["resourceVersion"]
        with self._cache_lock:
            cached = self._rendered.get(name)
        if cached is None or cached[0] != revision:
            count, text = conn.execute(_RENDER_RECORDS, (name,)).fetchone()
            cached = (revision, int(count), text if count else None)
            if committed:
                with self._cache_lock:
                    self._rendered[name] = cached
        status = obj.setdefault("status", {})
        status["allocatedIPCount"] = cached[1]
        if cached[2] is None:
            status.pop("allocatedIPs", None)
        else:
            status["allocatedIPs"] = cached[2]
        return obj

    def _output(self, conn: sqlite3.Connection, info: KindInfo, body: str, *, committed: bool) -> Obj:
        obj: Obj = json.loads(body)
        if info.kind == POOL_KIND:
            return self._render_pool(conn, obj, committed=committed)
        return obj

    @staticmethod
    def _load(conn: sqlite3.Connection, info: KindInfo, namespace: str, name: str) -> tuple[int, Obj] | None:
        row = conn.execute(
            "SELECT revision, body FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
            (info.kind, namespace, name),
        ).fetchone()
        if row is None:
            return None
        return int(row[0]), json.loads(row[1])

    # ------------------------------------------------------------------ writes shared by create/update/commit

    def _insert(
        self, tx: _Tx, info: KindInfo, namespace: str, name: str, obj: Obj, *, if_absent: bool = False
    ) -> str | None:
        """Insert ``obj``; AlreadyExists if it exists, or with ``if_absent`` None (nothing written:
        one statement instead of a lookup before the insert)."""
        if not if_absent and self._load(tx.conn, info, namespace, name) is not None:
            raise AlreadyExists(info.kind, name, namespace)
        # copy only what is changed here (serializing the result below checks the rest is JSON)
        new = _typed(info, obj)
        meta = new["metadata"] = dict(new["metadata"])
        if info.kind == POOL_KIND and isinstance(new.get("status"), dict):
            new["status"] = dict(new["status"])
        rev = tx.next_revision()
        meta["name"] = name
        if info.namespaced:
            meta["namespace"] = namespace
        for key in _DELETION_METADATA:
            meta.pop(key, None)
        meta["uid"] = self._uid_factory()
        meta["resourceVersion"] = str(rev)
        meta["creationTimestamp"] = format_timestamp(self._clock())
        meta["generation"] = 1
        if info.kind == POOL_KIND:
            _without_derived_status(new)
            new.setdefault("status", {})["allocatedIPCount"] = 0
        body = self._serialize(info, name, new)
        cursor = tx.conn.execute(
            "INSERT INTO objects (kind, namespace, name, revision, body) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (info.kind, namespace, name, rev, body),
        )
        if cursor.rowcount == 0:
            tx.give_back(rev)
            if if_absent:
                return None
            raise AlreadyExists(info.kind, name, namespace)
        tx.event(info, namespace, name, "ADDED", body, rev)
        return body

    def _replace(
        self,
        tx: _Tx,
        info: KindInfo,
        namespace: str,
        name: str,
        obj: Obj,
        *,
        status_only: bool,
        found: tuple[int, Obj] | None = None,
    ) -> str:
        found = found or self._load(tx.conn, info, namespace, name)
        if found is None:
            raise NotFound(info.kind, name, namespace)
        stored_rev, stored = found
        _check_version(info, namespace, name, obj.get("metadata", {}).get("resourceVersion"), stored_rev)
        incoming: Obj = json.loads(self._serialize(info, name, obj))
        if status_only:
            new = {**stored, "metadata": dict(stored["metadata"])}
            if "status" in incoming:
                new["status"] = incoming["status"]
            else:
                new.pop("status", None)
        else:
            new = {k: v for k, v in incoming.items() if k != "status"}
            if info.has_status:
                if "status" in stored:
                    new["status"] = stored["status"]
            elif "status" in incoming:
                new["status"] = incoming["status"]
            meta = dict(incoming.get("metadata") or {})
            for key in (*_SYSTEM_METADATA, *_DELETION_METADATA):
                meta.pop(key, None)
                if key in stored["metadata"]:
                    meta[key] = stored["metadata"][key]
            if stored["metadata"].get("deletionTimestamp"):
                had = set(_finalizers(stored["metadata"]))
                added = [f for f in _finalizers(meta) if f not in had]
                if added:
                    raise Invalid(
                        info.kind,
                        _shown(namespace, name),
                        "metadata.finalizers",
                        f"no new finalizers can be added while the object is being deleted (found {', '.join(added)})",
                    )
            new["metadata"] = meta
        new = _typed(info, new)
        if info.kind == POOL_KIND:
            count = stored.get("status", {}).get("allocatedIPCount", 0)
            _without_derived_status(new)
            new.setdefault("status", {})["allocatedIPCount"] = count
        generation = int(stored["metadata"].get("generation", 1))
        if _spec_part(info, new) != _spec_part(info, stored):
            generation += 1
        new["metadata"]["generation"] = generation
        new["metadata"]["resourceVersion"] = str(stored_rev)
        if new == stored:
            return _dumps(stored)  # nothing changed: no new revision, no event (as the API server does)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not _finalizers(meta) and not _grace_pending(meta):
            return self._drop(tx, info, namespace, name, new)  # its last finalizer went: it is gone
        return self._rewrite(tx, info, namespace, name, new)

    @staticmethod
    def _rewrite(tx: _Tx, info: KindInfo, namespace: str, name: str, obj: Obj) -> str:
        """Store ``obj`` over the existing row under the next revision (a MODIFIED event)."""
        rev = tx.next_revision()
        obj["metadata"]["resourceVersion"] = str(rev)
        body = _dumps(obj)
        tx.conn.execute(
            "UPDATE objects SET revision = ?, body = ? WHERE kind = ? AND namespace = ? AND name = ?",
            (rev, body, info.kind, namespace, name),
        )
        tx.event(info, namespace, name, "MODIFIED", body, rev)
        return body

    @staticmethod
    def _drop(tx: _Tx, info: KindInfo, namespace: str, name: str, last: Obj) -> str:
        """Remove the object (a DELETED event carrying ``last``, its final state); returns that body."""
        rev = tx.next_revision()
        last["metadata"]["resourceVersion"] = str(rev)
        tx.conn.execute(
            "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", (info.kind, namespace, name)
        )
        if info.kind == POOL_KIND:
            # the records belong to the pool (as status.allocatedIPs does in Kubernetes); a usage
            # cache never replays across a pool's DELETED event
            tx.conn.execute("DELETE FROM allocations WHERE pool = ?", (name,))
            last.setdefault("status", {})["allocatedIPCount"] = 0
        body = _dumps(last)
        tx.event(info, namespace, name, "DELETED", body, rev)
        return body

    def _remove(
        self,
        tx: _Tx,
        info: KindInfo,
        namespace: str,
        name: str,
        resource_version: str | None,
        grace: int | None,
    ) -> None:
        """DELETE with the API server's rules (``ipam.store.protocol``): remove the object, or mark it
        terminating when finalizers hold it or a pod is given a grace period > 0."""
        found = self._load(tx.conn, info, namespace, name)
        if found is None:
            raise NotFound(info.kind, name, namespace)
        stored_rev, stored = found
        _check_version(info, namespace, name, resource_version, stored_rev)
        meta = stored["metadata"]
        held = bool(_finalizers(meta))
        now = self._clock()
        if meta.get("deletionTimestamp"):
            pending = int(meta.get("deletionGracePeriodSeconds") or 0)
            if grace is None or grace >= pending:
                return  # already terminating: a delete may only shorten a pod's grace period
            requested = _parse_timestamp(meta["deletionTimestamp"])
            start = now if requested is None else requested - pending
            meta["deletionTimestamp"] = format_timestamp(start + grace)
            meta["deletionGracePeriodSeconds"] = grace
            if grace == 0 and not held:
                self._drop(tx, info, namespace, name, stored)
            else:
                self._rewrite(tx, info, namespace, name, stored)
            return
        if grace is not None and grace > 0:
            meta["deletionTimestamp"] = format_timestamp(now + grace)
            meta["deletionGracePeriodSeconds"] = grace
            self._rewrite(tx, info, namespace, name, stored)
        elif held:
            meta["deletionTimestamp"] = format_timestamp(now)
            meta["deletionGracePeriodSeconds"] = 0
            self._rewrite(tx, info, namespace, name, stored)
        else:
            self._drop(tx, info, namespace, name, stored)

    # ------------------------------------------------------------------ ObjectStore

    def create(self, obj: Obj) -> Obj:
        info, namespace, name = self._identify(obj)
        validate_metadata(info.kind, info.namespaced, obj)
        with self._write() as tx:
            body = self._insert(tx, info, namespace, name, obj)
            assert body is not None  # without if_absent, _insert raises rather than skip
            return self._output(tx.conn, info, body, committed=False)

    def get(self, kind: str, name: str, namespace: str = "", *, allocated_ips: bool = True) -> Obj:
        info = self._info(kind, name)
        if not info.namespaced:
            namespace = ""
        query = "SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?"
        if not allocated_ips or info.kind != POOL_KIND:
            rows = self._fetchall(query, (info.kind, namespace, name))
            if not rows:
                raise NotFound(info.kind, name, namespace)
            obj: Obj = json.loads(rows[0][0])  # a stored pool body already carries allocatedIPCount
            return obj
        with self._read() as conn:  # the body and its rendered records from one snapshot
            row = conn.execute(query, (info.kind, namespace, name)).fetchone()
            if row is None:
                raise NotFound(info.kind, name, namespace)
            return self._output(conn, info, row[0], committed=True)

    def list(
        self,
        kind: str,
        *,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        allocated_ips: bool = True,
    ) -> builtins.list[Obj]:
        info = self._info(kind)
        wanted = dict(labels or {})
        if namespace is None or not info.namespaced:
            query: tuple[str, tuple[str, ...]] = (
                "SELECT body FROM objects WHERE kind = ? ORDER BY namespace, name",
                (info.kind,),
            )
        else:
            query = (
                "SELECT body FROM objects WHERE kind = ? AND namespace = ? ORDER BY name",
                (info.kind, namespace),
            )
        if not (allocated_ips and info.kind == POOL_KIND):
            return self._matching(self._fetchall(*query), wanted)
        with self._read() as conn:  # the bodies and their rendered records from one snapshot
            return [
                self._render_pool(conn, obj)
                for obj in self._matching(conn.execute(*query).fetchall(), wanted)
            ]

    @staticmethod
    def _matching(rows: Sequence[tuple[str]], wanted: Mapping[str, str]) -> builtins.list[Obj]:
        """The parsed bodies that carry every wanted label."""
        out: builtins.list[Obj] = []
        for (body,) in rows:
            obj: Obj = json.loads(body)
            if wanted:
                have = obj["metadata"].get("labels") or {}
                if not all(have.get(k) == v for k, v in wanted.items()):
                    continue
            out.append(obj)
        return out

    def update(self, obj: Obj) -> Obj:
        info, namespace, name = self._identify(obj)
        validate_metadata(info.kind, info.namespaced, obj)
        with self._write() as tx:
            body = self._replace(tx, info, namespace, name, obj, status_only=False)
            return self._output(tx.conn, info, body, committed=False)

    def update_status(self, obj: Obj) -> Obj:
        info, namespace, name = self._identify(obj)
        with self._write() as tx:
            body = self._replace(tx, info, namespace, name, obj, status_only=True)
            return self._output(tx.conn, info, body, committed=False)

    def delete(
        self,
        kind: str,
        name: str,
        namespace: str = "",
        *,
        resource_version: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> None:
        info = self._info(kind, name)
        if not info.namespaced:
            namespace = ""
        grace = _grace_period(info, namespace, name, grace_period_seconds)
        with self._write() as tx:
            self._remove(tx, info, namespace, name, resource_version, grace)

    def revision(self) -> str:
        try:
            row = self._connection().execute(_REVISION_AND_COMPACTED).fetchone()
        except sqlite3.Error as err:
            raise self._unavailable(err) from err
        return str(row[0])

    def watch(self, kinds: Sequence[str], since: str, *, timeout: float) -> Iterator[WatchEvent]:
        """Checks ``since`` now (Gone, Invalid) and returns an iterator that polls every
        ``poll_interval`` seconds until ``timeout`` seconds pass without a new event."""
        names = tuple(self._info(k).kind for k in kinds)
        try:
            start = int(since) if since else 0
        except ValueError:
            raise Invalid("watch", str(since), "since", "is not a revision of this store") from None
        self._check_horizon(start)
        return self._watch(names, start, timeout)

    def _check_horizon(self, since: int) -> None:
        try:
            row = self._connection().execute("SELECT compacted FROM meta").fetchone()
        except sqlite3.Error as err:
            raise self._unavailable(err) from err
        if since < int(row[0]):
            raise Gone(
                f"revision {since} is older than the oldest change the store keeps ({int(row[0]) + 1}); "
                "list again and watch from the list's revision"
            )

    def _watch(self, kinds: tuple[str, ...], since: int, timeout: float) -> Iterator[WatchEvent]:
        if not kinds:
            return
        marks = ", ".join("?" for _ in kinds)
        query = (
            f"SELECT e.revision, e.type, {_EVENT_BODY} FROM events AS e "
            "LEFT JOIN events AS b ON b.revision = e.base "
            f"WHERE e.revision > ? AND e.kind IN ({marks}) ORDER BY e.revision LIMIT 500"
        )
        last = since
        deadline = time.monotonic() + timeout
        while True:
            with self._read() as conn:
                compacted = int(conn.execute("SELECT compacted FROM meta").fetchone()[0])
                if last < compacted:
                    raise Gone(
                        f"revision {last} was compacted while watching (the store keeps "
                        f"{self._history} events); list again and watch from the list's revision"
                    )
                rows = conn.execute(query, (last, *kinds)).fetchall()
            for rev, kind, body in rows:
                last = int(rev)
                yield WatchEvent(type=kind, object=json.loads(body), revision=str(rev))
            if rows:
                deadline = time.monotonic() + timeout
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(self._poll_interval, remaining))

    # ------------------------------------------------------------------ AllocationStore

    def usage(self, pool: str) -> PoolUsage:
        rows = self._fetchall(
            "SELECT revision FROM objects WHERE kind = ? AND namespace = '' AND name = ?", (POOL_KIND, pool)
        )
        if rows:
            with self._cache_lock:
                cache = self._cache.get(pool)
                if cache is not None and cache.revision >= rows[0][0]:
                    # up to date (this instance's commits keep it so): no log to replay
                    return PoolUsage(pool, str(cache.revision), SortedPrefix(cache.items, len(cache.items)))
        with self._read() as conn:
            row = conn.execute(
                "SELECT o.revision, m.compacted FROM objects AS o, meta AS m "
                "WHERE o.kind = ? AND o.namespace = '' AND o.name = ?",
                (POOL_KIND, pool),
            ).fetchone()
            if row is None:
                with self._cache_lock:
                    self._cache.pop(pool, None)
                raise NotFound(POOL_KIND, pool)
            pool_rev, compacted = int(row[0]), int(row[1])
            with self._cache_lock:
                cache = self._cache.get(pool)
                if (
                    cache is not None
                    and cache.revision < pool_rev
                    and (cache.revision < compacted or not self._replay(conn, pool, cache, pool_rev))
                ):
                    cache = None
                if cache is None:
                    items = [
                        int.from_bytes(key, "big")
                        for (key,) in conn.execute(
                            "SELECT ip_key FROM allocations WHERE pool = ? ORDER BY ip_key", (pool,)
                        )
                    ]
                    cache = _PoolCache(pool_rev, items)
                    self._cache[pool] = cache
                # a cache newer than this snapshot (another thread refreshed it) is just as consistent
                return PoolUsage(pool, str(cache.revision), SortedPrefix(cache.items, len(cache.items)))

    def _replay(self, conn: sqlite3.Connection, pool: str, cache: _PoolCache, upto: int) -> bool:
        """Bring ``cache`` to revision ``upto`` from the pool's events (their ``changes``); False if a
        reload is cheaper (too many revisions to scan or changes to apply) or needed (the pool was
        deleted and created again)."""
        if upto - cache.revision > _REPLAY_SCAN_LIMIT:
            return False
        rows = conn.execute(
            "SELECT type, changes FROM events WHERE revision > ? AND revision <= ? "
            "AND kind = ? AND namespace = '' AND name = ? ORDER BY revision",
            (cache.revision, upto, POOL_KIND, pool),
        ).fetchall()
        changes: builtins.list[tuple[bool, int]] = []
        for change, text in rows:
            if change != "MODIFIED":
                return False
            if text:
                changes.extend((item[0] == "+", int(item[1:])) for item in text.split(","))
        if len(changes) > _REPLAY_LIMIT:
            return False
        _apply_changes(cache, changes, upto)
        return True

    def _advance_caches(self, changes: Mapping[str, tuple[int, int, Sequence[tuple[bool, int]]]]) -> None:
        """After a commit: bring a pool's usage cache that stood at the pool's revision before the
        commit to the revision it made, from what the commit changed, so the next ``usage`` of this
        instance needs no log replay.  A cache at any other revision is left to ``usage``."""
        with self._cache_lock:
            for pool, (before, after, applied) in changes.items():
                cache = self._cache.get(pool)
                if cache is not None and cache.revision == before:
                    _apply_changes(cache, applied, after)

    def records(self, pool: str) -> builtins.list[IPRecord]:
        rows = self._fetchall(
            "SELECT pool, ip, pod, pod_uid FROM allocations WHERE pool = ? ORDER BY ip_key", (pool,)
        )
        return [IPRecord(*row) for row in rows]

    def records_of_pod(self, namespace: str, name: str) -> builtins.list[IPRecord]:
        rows = self._fetchall(
            "SELECT pool, ip, pod, pod_uid FROM allocations WHERE pod = ? ORDER BY pool, ip_key",
            (f"{namespace}/{name}",),
        )
        return [IPRecord(*row) for row in rows]

    def commit(
        self,
        *,
        claims: Sequence[Claim] = (),
        releases: Sequence[IPRecord] = (),
        endpoint: Obj | None = None,
        delete_endpoint: tuple[str, str] | None = None,
    ) -> None:
        """Releases first, then claims (so one commit can hand an IP from an old pod UID to a new
        one), then the endpoint; all in one transaction, durable when this returns."""
        endpoint_id = None
        if endpoint is not None:
            endpoint_id = self._identify(endpoint)
            if endpoint_id[0].kind != ENDPOINT_KIND:
                raise Invalid(
                    endpoint_id[0].kind, endpoint_id[2], "kind", f"commit writes only {ENDPOINT_KIND}"
                )
        parsed_claims = [(c, *_canonical_ip(c.ip, c.pool, "claim ip")) for c in claims]
        parsed_releases = [(r, *_canonical_ip(r.ip, r.pool, "release ip")) for r in releases]
        for claim, *_ in parsed_claims:
            if claim.pod.count("/") != 1 or not all(claim.pod.split("/")):
                raise Invalid(POOL_KIND, claim.pool, "claim pod", f'{claim.pod!r} is not "namespace/name"')
        with self._write() as tx:
            # a pool is read and rewritten in SQL (json_extract / json_set): a claim does not pay for
            # parsing and re-serializing the pool's body in Python
            loaded: dict[str, tuple[int, bool] | None] = {}  # pool -> (revision before, terminating)
            touched: dict[str, int] = {}  # pool -> new revision
            counts: dict[str, int] = {}
            applied: dict[str, builtins.list[tuple[bool, int]]] = {}  # pool -> record changes, in order

            def stored_pool(pool: str) -> tuple[int, bool] | None:
                if pool not in loaded:
                    row = tx.conn.execute(_POOL_STATE, (POOL_KIND, pool)).fetchone()
                    loaded[pool] = None if row is None else (int(row[0]), bool(row[1]))
                return loaded[pool]

            def touch(pool: str) -> int | None:
                if pool in touched:
                    return touched[pool]
                if stored_pool(pool) is None:
                    return None
                touched[pool] = tx.next_revision()
                counts[pool] = 0
                applied[pool] = []
                return touched[pool]

            for claim, *_ in parsed_claims:
                found_pool = stored_pool(claim.pool)
                if found_pool is None:
                    raise NotFound(POOL_KIND, claim.pool)
                current = found_pool[0]
                if found_pool[1]:
                    raise Conflict(
                        f'{POOL_KIND} "{claim.pool}": metadata.deletionTimestamp: the pool is terminating; '
                        "no new IPs are allocated from it"
                    )
                if str(current) != claim.pool_version:
                    raise Conflict(
                        f'{POOL_KIND} "{claim.pool}": resourceVersion {claim.pool_version} is stale '
                        f"(now {current}); re-read and retry"
                    )
            for release, _, value, key in parsed_releases:
                row = tx.conn.execute(
                    "SELECT pool FROM allocations WHERE ip_key = ? AND pool = ? AND pod_uid = ?",
                    (key, release.pool, release.pod_uid),
                ).fetchone()
                if row is None:
                    continue  # absent or owned by another UID: a no-op
                rev = touch(release.pool)
                if rev is None:
                    continue
                tx.conn.execute("DELETE FROM allocations WHERE ip_key = ?", (key,))
                counts[release.pool] -= 1
                applied[release.pool].append((False, value))
            for claim, ip, value, key in parsed_claims:
                rev = touch(claim.pool)
                assert rev is not None  # checked above, inside this transaction
                try:
                    tx.conn.execute(
                        "INSERT INTO allocations (ip_key, ip, pool, pod, pod_uid, revision) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (key, ip, claim.pool, claim.pod, claim.pod_uid, rev),
                    )
                except sqlite3.IntegrityError:
                    owner = tx.conn.execute(
                        "SELECT pool, pod FROM allocations WHERE ip_key = ?", (key,)
                    ).fetchone()
                    raise Conflict(
                        f'{POOL_KIND} "{claim.pool}": {ip} is already allocated'
                        + (f" (pool {owner[0]}, pod {owner[1]})" if owner else "")
                    ) from None
                counts[claim.pool] += 1
                applied[claim.pool].append((True, value))
            for pool, rev in touched.items():
                tx.conn.execute(_POOL_BUMP, (rev, str(rev), counts[pool], POOL_KIND, pool))
                changes = ",".join(f"{'+' if added else '-'}{value}" for added, value in applied[pool])
                before = loaded[pool]
                assert before is not None  # touched pools exist
                tx.conn.execute(
                    _POOL_EVENT, (rev, changes or None, before[0], _DELTA_EVENT_MIN, POOL_KIND, pool)
                )
            if endpoint is not None and endpoint_id is not None:
                info, namespace, name = endpoint_id
                wanted = endpoint.get("metadata", {}).get("resourceVersion")
                # no resourceVersion: most likely a new endpoint, so try the insert first
                if wanted in (None, "") and self._insert(tx, info, namespace, name, endpoint, if_absent=True):
                    pass
                elif (existing := self._load(tx.conn, info, namespace, name)) is None:
                    raise Conflict(
                        f'{ENDPOINT_KIND} "{namespace}/{name}": resourceVersion {wanted} is stale '
                        "(the object is gone)"
                    )
                else:
                    self._replace(tx, info, namespace, name, endpoint, status_only=False, found=existing)
            if delete_endpoint is not None:
                self._release_endpoint(tx, *delete_endpoint)
            tx.pools.update(touched)
        self._advance_caches(
            {
                pool: (found[0], touched[pool], applied[pool])
                for pool, found in loaded.items()
                if found is not None and pool in touched
            }
        )

    def _release_endpoint(self, tx: _Tx, namespace: str, name: str) -> None:
        """What Spiderpool's agent does once a pod's IPs are released: drop its finalizer from the
        SpiderEndpoint and delete it (other finalizers, if any, keep it terminating)."""
        info = kind_info(ENDPOINT_KIND)
        found = self._load(tx.conn, info, namespace, name)
        if found is None:
            return
        _, stored = found
        meta = stored["metadata"]
        had = _finalizers(meta)
        rest = [f for f in had if f != FINALIZER]
        if rest:
            meta["finalizers"] = rest
        else:
            meta.pop("finalizers", None)
        if meta.get("deletionTimestamp"):
            if not rest:
                self._drop(tx, info, namespace, name, stored)
            elif rest != had:
                self._rewrite(tx, info, namespace, name, stored)
        elif rest:
            meta["deletionTimestamp"] = format_timestamp(self._clock())
            meta["deletionGracePeriodSeconds"] = 0
            self._rewrite(tx, info, namespace, name, stored)
        else:
            self._drop(tx, info, namespace, name, stored)
