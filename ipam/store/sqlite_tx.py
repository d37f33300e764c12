"""Transactions and locking of the embedded store's SQLite file (``SqliteFile``), below ``SqliteStore``.

- stdlib ``sqlite3`` in WAL mode, a connection per thread (the agent calls the store from a thread
  pool and from its event loop).
- One writer at a time: threads of this process queue on a lock, and processes sharing the file on an
  ``flock`` of ``<db>.lock``, before ``BEGIN IMMEDIATE``, instead of in SQLite's busy handler, which
  sleeps 1..100 ms between retries.  ``busy_timeout`` only bounds a wait for a writer that does not take
  the flock (another tool, a checkpoint).  A bounded ``wait`` (group commit on the agent's event loop)
  raises ``WriterBusy`` past it, having written nothing.
- Group commit (``batch``): the writes of one thread share one transaction, each in a savepoint.
- Reads: one SELECT runs without BEGIN/COMMIT (WAL gives it a snapshot); ``snapshot``/``read`` share
  one read transaction between several.
- Every write transaction keeps the revision counter (one event per revision) and compacts the
  event log past ``history``; WAL checkpoints run on a thread of their own (``_Checkpointer``).
- SQLite failures a caller can meet become ``StoreUnavailable`` with one line naming the file
  ("database is locked" past the busy timeout, a corrupt or non-SQLite file, a read-only directory).
"""

from __future__ import annotations

import builtins
import fcntl
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ipam.errors import StoreUnavailable, WouldBlock
from ipam.kinds import KindInfo
from ipam.store.sqlite_schema import connect, ensure_schema

__all__ = ["SqliteFile", "Tx", "WriterBusy"]

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
_SPIN_SECONDS = 0.0005  # how long a bounded wait for the file lock yields before it sleeps
# The store's revision is the newest event's (every revision writes exactly one event, in the same
# transaction); ``meta.revision`` is only brought up to date when events are compacted, so a commit
# does not rewrite the meta page (one page less in the WAL per write).
REVISION_AND_COMPACTED = (
    "SELECT max(m.revision, coalesce((SELECT max(revision) FROM events), 0)), m.compacted FROM meta AS m"
)
# a background checkpoint after this many write transactions of one instance (see _Checkpointer)
_CHECKPOINT_EVERY = 64


class WriterBusy(WouldBlock):
    """A write with a bounded ``wait`` (``SqliteStore.batch(wait=...)``) found another writer (a
    thread of this process, or another process) holding the write lock.  Nothing was written."""


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
class Tx:
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


class SqliteFile:
    """One SQLite store file as this process uses it: per-thread connections, the writer locks, read
    snapshots, write transactions and group commit."""

    def __init__(self, path: Path, *, fsync: bool, busy_timeout: float, history: int) -> None:
        """Open (and on first use create) the file; its directory is created with mode 0700 if
        missing.  Raises StoreUnavailable naming the path if the file cannot be used."""
        self._path = path
        self._fsync = fsync
        self._busy_timeout_s = busy_timeout
        self._history = history
        self._compact_step = max(1, min(1000, history // 10))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: builtins.list[sqlite3.Connection] = []
        self._closed = False
        self._write_lock = threading.Lock()
        self._checkpointer = _Checkpointer(self._checkpoint, _CHECKPOINT_EVERY)
        self._lock_fd: int | None = None
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
            conn = self.connection()
            with self._setup_lock():
                ensure_schema(conn, self._path, busy_timeout=busy_timeout)
            _restrict_modes(self._path)
        except sqlite3.Error as err:
            self.close()
            raise self.unavailable(err) from err
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
            row = self.connection().execute("PRAGMA synchronous").fetchone()
        except sqlite3.Error as err:
            raise self.unavailable(err) from err
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

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"{self._path}: the store is closed")
            try:
                conn = connect(self._path, busy_timeout=self._busy_timeout_s, fsync=self._fsync)
            except sqlite3.Error as err:
                raise self.unavailable(err) from err
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def _checkpoint(self) -> None:
        """One PASSIVE checkpoint on this thread's connection; a failure only leaves the WAL longer."""
        try:
            self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (sqlite3.Error, StoreUnavailable):
            return

    def unavailable(self, err: sqlite3.Error) -> StoreUnavailable:
        text = str(err)
        if isinstance(err, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return StoreUnavailable(
                f"{self._path}: the store database stayed locked by another writer for more than "
                f"{self._busy_timeout_s:g}s"
            )
        if isinstance(err, sqlite3.OperationalError):
            return StoreUnavailable(f"{self._path}: cannot use the store database: {text}")
        return StoreUnavailable(f"{self._path}: not a usable SQLite store database: {text}")

    def fetchall(self, sql: str, params: Sequence[object]) -> builtins.list[Any]:
        """One SELECT outside an explicit transaction: a single statement already reads one consistent
        snapshot in WAL mode, so a BEGIN/COMMIT pair around it would only cost two more round trips."""
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise self.unavailable(err) from err

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads of this thread inside share one read transaction (``ipam.store.protocol``): SQLite then takes
        its file locks once, not around every statement.  ``_write_in`` ends it before a write."""
        conn = self.connection()
        if conn.in_transaction:
            yield  # joins the enclosing snapshot
            return
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as err:
            raise self.unavailable(err) from err
        try:
            yield
        finally:
            if conn.in_transaction:  # not ended by a write
                with suppress(sqlite3.Error):
                    conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs (inside ``snapshot()``: that one)."""
        conn = self.connection()
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
            raise self.unavailable(err) from err

    @contextmanager
    def batch(self, pools: set[str], *, wait: float | None = None) -> Iterator[None]:
        """Group commit: the writes this thread makes inside the block share one write transaction,
        each in a savepoint of its own (a write that fails leaves nothing, the others stand), and become
        durable together when the block ends; an exception out of the block rolls every write back.
        The writer locks are taken at the start (past ``wait`` seconds, when given: ``WriterBusy``) and
        held to the end, so keep the block short: no other writer, of this process or another,
        commits in between.  ``pools`` collects the pools whose usage the writes changed (``Tx.pools``).
        Nested blocks join the outer one."""
        if getattr(self._local, "batch", None) is not None:
            yield
            return
        with self.write(wait) as tx:
            tx.pools = pools
            self._local.batch = tx
            try:
                yield
            finally:
                self._local.batch = None

    @contextmanager
    def write(self, wait: float | None = None) -> Iterator[Tx]:
        """BEGIN IMMEDIATE ... COMMIT; rolls back on any exception so a failed call changes nothing.
        Inside ``batch()``: a savepoint of the batch's transaction instead.  ``wait``: how long to wait
        for the writer locks before WriterBusy (None: as long as it takes)."""
        batch: Tx | None = getattr(self._local, "batch", None)
        if batch is not None:
            yield from self._savepoint(batch)
            return
        conn = self.connection()
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

    def _savepoint(self, tx: Tx) -> Iterator[Tx]:
        start = tx.revision
        try:
            tx.conn.execute("SAVEPOINT write")
        except sqlite3.Error as err:
            raise self.unavailable(err) from err
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

    def _write_in(self, conn: sqlite3.Connection, wait: float | None = None) -> Iterator[Tx]:
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
            raise self.unavailable(err) from err
        try:
            row = conn.execute(REVISION_AND_COMPACTED).fetchone()
            start, compacted = int(row[0]), int(row[1])
            tx = Tx(conn, start)
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
                raise self.unavailable(exc) from exc
            raise
