"""The embedded object store: Kubernetes-shaped objects and allocation records in one SQLite file.

``SqliteStore`` implements ``ipam.store.protocol.Store`` (see that module for the contract) for every
kind of ``ipam.kinds``, with group commit (``batch``).  It is the thin part: objects and their watch
events, over

- ``sqlite_tx.SqliteFile``: connections, the writer locks, transactions, snapshots and group commit
  (a write is safe against the death of the process, even SIGKILL, when the call returns;
  ``fsync=True`` also survives power loss, one fsync per commit);
- ``sqlite_records.PoolRecords``: the allocation records (a row per IP), the pools' usage caches and
  their ``status.allocatedIPs`` rendering;
- ``ipam.apiserver``: the API server's rules (identity, what create and update keep, deletion with
  finalizers and grace periods), as pure functions.

One global revision counter: every change takes the next revision, which becomes the object's
``metadata.resourceVersion`` and the revision of its watch event (same transaction).  A SpiderIPPool
read with ``get``/``list`` (and returned by ``create``/``update``/``update_status``) carries
``status.allocatedIPs`` and ``status.allocatedIPCount`` from the rows; its watch events carry
``allocatedIPCount`` but NOT ``allocatedIPs`` (rendering every record into every event would make a
fill quadratic): read the records with ``get``/``records`` when needed.  A SpiderIPBlock likewise:
``get``/``list`` render its ``allocatedIPs`` (with ``allocated_ips``) from the rows in its CIDR, its
``allocatedIPCount`` is kept in its body by every claim and release in it, and its watch events (one
per claim or release commit touching it) carry the count only.  A block pool's object carries no
``allocatedIPs`` and the count of all its records (``ipam.store.protocol``, block pools).
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from ipam.admission import check_size, validate_metadata
from ipam.apiserver import (
    Deletion,
    check_version,
    created,
    deleted,
    ends,
    finalizer_released,
    grace_period,
    identify,
    kind_of,
    random_uid,
    replaced,
)
from ipam.blocks import BLOCK_KIND, is_block_pool
from ipam.errors import AlreadyExists, Conflict, Gone, Invalid, NotFound
from ipam.kinds import KindInfo, kind_info
from ipam.model import FINALIZER
from ipam.records import Claim, IPRecord, Obj, PoolUsage, WatchEvent
from ipam.store.protocol import GroupCommit
from ipam.store.sqlite_records import POOL_KIND, PoolRecords, RecordChanges, block_records_query
from ipam.store.sqlite_tx import REVISION_AND_COMPACTED, SqliteFile, Tx

__all__ = ["SqliteStore"]

ENDPOINT_KIND = "SpiderEndpoint"
# status fields of a SpiderIPPool that are derived from the allocation records
_DERIVED_POOL_STATUS = ("allocatedIPs", "allocatedIPCount")
# an event as the watch serves it: a patch event applied to its base
_EVENT_BODY = "CASE WHEN e.base IS NULL THEN e.body ELSE json_patch(b.body, e.body) END"


def _node_of(pod: Obj) -> str:
    spec = pod.get("spec")
    return str(spec.get("nodeName") or "") if isinstance(spec, dict) else ""


def _dumps(obj: Obj) -> str:
    """Compact JSON; NaN and infinities are refused (ValueError), as JSON and the API server have none
    (and SQLite's JSON functions could not read the body back)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _render_block(conn: sqlite3.Connection, obj: Obj, *, with_ips: bool) -> Obj:
    """A stored SpiderIPBlock with ``status.allocatedIPCount`` (kept in its body with its records'
    changes; counted from the rows for a body from before schema 4) and with ``with_ips``
    Spiderpool's ``allocatedIPs`` string of the records inside its CIDR, from the allocations table."""
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    stored = status.get("allocatedIPCount")
    if isinstance(stored, int) and (not with_ips or stored == 0):
        return obj
    query = block_records_query(obj, with_ips=with_ips)
    if query is None:
        return obj
    row = conn.execute(*query).fetchone()
    status["allocatedIPCount"] = int(row[0])
    if with_ips and row[0]:
        status["allocatedIPs"] = row[1]
    return obj


def _without_derived_status(obj: Obj) -> None:
    status = obj.get("status")
    if isinstance(status, dict):
        for key in _DERIVED_POOL_STATUS:
            status.pop(key, None)


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
        raises Gone.  ``busy_timeout`` bounds a wait for a writer that does not take the store's lock
        file (another tool).  Raises StoreUnavailable naming the path if the file cannot be used."""
        if history < 1:
            raise ValueError("history must be at least 1")
        self._clock = clock
        self._uid_factory = uid_factory
        self._history = history
        self._poll_interval = poll_interval
        self._db = SqliteFile(Path(path), fsync=fsync, busy_timeout=busy_timeout, history=history)
        self._records = PoolRecords(self._db)

    @property
    def path(self) -> Path:
        return self._db.path

    def synchronous(self) -> str:
        """The durability level in force on this thread's connection: "NORMAL" (survives process
        death) or "FULL" (also survives power loss; ``fsync=True``)."""
        return self._db.synchronous()

    def close(self) -> None:
        self._db.close()

    def snapshot(self) -> AbstractContextManager[None]:
        """Reads of this thread inside share one read transaction (``ipam.store.protocol``): SQLite
        then takes its file locks once, not around every statement.  A write ends it."""
        return self._db.snapshot()

    def group_commit(self) -> GroupCommit:
        return self

    @contextmanager
    def batch(self, *, wait: float | None = None) -> Iterator[None]:
        """Group commit (``ipam.store.protocol.GroupCommit``; ``SqliteFile.batch``)."""
        pools: set[str] = set()
        try:
            with self._db.batch(pools, wait=wait):
                yield
        except BaseException:
            self._records.forget(pools)  # usage caches advanced by the writes that were rolled back
            raise

    # ------------------------------------------------------------------ rendering

    @staticmethod
    def _serialize(info: KindInfo, name: str, obj: Obj) -> str:
        try:
            body = _dumps(obj)
        except (TypeError, ValueError) as err:
            raise Invalid(info.kind, name, "object", f"is not JSON-serializable: {err}") from None
        check_size(info.kind, name, len(body))
        return body

    def _output(self, conn: sqlite3.Connection, info: KindInfo, body: str, *, committed: bool) -> Obj:
        obj: Obj = json.loads(body)
        if info.kind == POOL_KIND:
            return self._records.render(conn, obj, committed=committed)
        if info.kind == BLOCK_KIND:
            return _render_block(conn, obj, with_ips=True)
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
        self, tx: Tx, info: KindInfo, namespace: str, name: str, obj: Obj, *, if_absent: bool = False
    ) -> str | None:
        """Insert ``obj``; AlreadyExists if it exists, or with ``if_absent`` None (nothing written:
        one statement instead of a lookup before the insert)."""
        if not if_absent and self._load(tx.conn, info, namespace, name) is not None:
            raise AlreadyExists(info.kind, name, namespace)
        rev = tx.next_revision()
        new = created(
            info, namespace, name, obj, uid=self._uid_factory(), resource_version=str(rev), now=self._clock()
        )
        if info.kind == POOL_KIND:
            _without_derived_status(new)
            new.setdefault("status", {})["allocatedIPCount"] = 0
        elif info.kind == BLOCK_KIND:
            # a block's count is the store's (its records' changes keep it); allocatedIPs is rendered
            _without_derived_status(new)
            query = block_records_query(new, with_ips=False)
            if query is not None:
                new.setdefault("status", {})["allocatedIPCount"] = int(tx.conn.execute(*query).fetchone()[0])
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
        tx: Tx,
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
        check_version(info, namespace, name, obj.get("metadata", {}).get("resourceVersion"), stored_rev)
        incoming: Obj = json.loads(self._serialize(info, name, obj))
        new = replaced(info, namespace, name, stored, incoming, status_only=status_only)
        if info.kind == POOL_KIND:
            count = stored.get("status", {}).get("allocatedIPCount", 0)
            _without_derived_status(new)
            new.setdefault("status", {})["allocatedIPCount"] = count
        elif info.kind == BLOCK_KIND:
            count = stored.get("status", {}).get("allocatedIPCount")
            _without_derived_status(new)
            if count is not None:
                new.setdefault("status", {})["allocatedIPCount"] = count
        new["metadata"]["resourceVersion"] = str(stored_rev)
        if new == stored:
            return _dumps(stored)  # nothing changed: no new revision, no event (as the API server does)
        if ends(new):
            return self._drop(tx, info, namespace, name, new)  # its last finalizer went: it is gone
        return self._rewrite(tx, info, namespace, name, new)

    @staticmethod
    def _rewrite(tx: Tx, info: KindInfo, namespace: str, name: str, obj: Obj) -> str:
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
    def _drop(tx: Tx, info: KindInfo, namespace: str, name: str, last: Obj) -> str:
        """Remove the object (a DELETED event carrying ``last``, its final state); returns that body."""
        rev = tx.next_revision()
        last["metadata"]["resourceVersion"] = str(rev)
        tx.conn.execute(
            "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", (info.kind, namespace, name)
        )
        if info.kind == POOL_KIND:
            PoolRecords.drop_pool(tx, name)
            last.setdefault("status", {})["allocatedIPCount"] = 0
        body = _dumps(last)
        tx.event(info, namespace, name, "DELETED", body, rev)
        return body

    def _settle(self, tx: Tx, info: KindInfo, namespace: str, name: str, deletion: Deletion) -> None:
        if deletion.action == "write":
            self._rewrite(tx, info, namespace, name, deletion.obj)
        elif deletion.action == "remove":
            self._drop(tx, info, namespace, name, deletion.obj)

    def _remove(
        self,
        tx: Tx,
        info: KindInfo,
        namespace: str,
        name: str,
        resource_version: str | None,
        grace: int | None,
    ) -> None:
        """DELETE with the API server's rules (``ipam.apiserver.deleted``)."""
        found = self._load(tx.conn, info, namespace, name)
        if found is None:
            raise NotFound(info.kind, name, namespace)
        stored_rev, stored = found
        check_version(info, namespace, name, resource_version, stored_rev)
        if info.kind == BLOCK_KIND:
            held = _render_block(tx.conn, stored, with_ips=False).get("status", {}).get("allocatedIPCount", 0)
            if held:
                raise Conflict(
                    f'{BLOCK_KIND} "{name}": holds {held} allocation(s); a block is returned only when empty'
                )
        self._settle(tx, info, namespace, name, deleted(stored, grace, now=self._clock()))

    # ------------------------------------------------------------------ ObjectStore

    def create(self, obj: Obj) -> Obj:
        info, namespace, name = identify(obj)
        validate_metadata(info.kind, info.namespaced, obj)
        with self._db.write() as tx:
            body = self._insert(tx, info, namespace, name, obj)
            assert body is not None  # without if_absent, _insert raises rather than skip
            return self._output(tx.conn, info, body, committed=False)

    def get(self, kind: str, name: str, namespace: str = "", *, allocated_ips: bool = True) -> Obj:
        info = kind_of(kind, name)
        if not info.namespaced:
            namespace = ""
        query = "SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?"
        if info.kind == BLOCK_KIND:
            with self._db.read() as conn:  # the body and its records from one snapshot
                row = conn.execute(query, (info.kind, namespace, name)).fetchone()
                if row is None:
                    raise NotFound(info.kind, name, namespace)
                return _render_block(conn, json.loads(row[0]), with_ips=allocated_ips)
        if not allocated_ips or info.kind != POOL_KIND:
            rows = self._db.fetchall(query, (info.kind, namespace, name))
            if not rows:
                raise NotFound(info.kind, name, namespace)
            obj: Obj = json.loads(rows[0][0])  # a stored plain pool body carries allocatedIPCount
            if info.kind == POOL_KIND and is_block_pool(obj):
                with self._db.read() as conn:
                    return self._records.block_pool_count(conn, obj)
            return obj
        with self._db.read() as conn:  # the body and its rendered records from one snapshot
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
        info = kind_of(kind)
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
        if info.kind == BLOCK_KIND:
            with self._db.read() as conn:
                return [
                    _render_block(conn, obj, with_ips=allocated_ips)
                    for obj in self._matching(conn.execute(*query).fetchall(), wanted)
                ]
        if info.kind == POOL_KIND and not allocated_ips:
            with self._db.read() as conn:  # a block pool's count is derived (record_heads)
                return [
                    self._records.block_pool_count(conn, obj) if is_block_pool(obj) else obj
                    for obj in self._matching(conn.execute(*query).fetchall(), wanted)
                ]
        if info.kind != POOL_KIND:
            return self._matching(self._db.fetchall(*query), wanted)
        with self._db.read() as conn:  # the bodies and their rendered records from one snapshot
            return [
                self._records.render(conn, obj)
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
        info, namespace, name = identify(obj)
        validate_metadata(info.kind, info.namespaced, obj)
        with self._db.write() as tx:
            body = self._replace(tx, info, namespace, name, obj, status_only=False)
            return self._output(tx.conn, info, body, committed=False)

    def update_status(self, obj: Obj) -> Obj:
        info, namespace, name = identify(obj)
        with self._db.write() as tx:
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
        info = kind_of(kind, name)
        if not info.namespaced:
            namespace = ""
        grace = grace_period(info, namespace, name, grace_period_seconds)
        with self._db.write() as tx:
            self._remove(tx, info, namespace, name, resource_version, grace)

    def revision(self) -> str:
        try:
            row = self._db.connection().execute(REVISION_AND_COMPACTED).fetchone()
        except sqlite3.Error as err:
            raise self._db.unavailable(err) from err
        return str(row[0])

    def watch(
        self,
        kinds: Sequence[str],
        since: str,
        *,
        timeout: float,
        pods_on_node: str = "",
        progress: Callable[[str], None] | None = None,
    ) -> Iterator[WatchEvent]:
        """Checks ``since`` now (Gone, Invalid) and returns an iterator that polls every
        ``poll_interval`` seconds until ``timeout`` seconds pass without a new event.  An empty poll
        reports the store's revision read with it to ``progress``."""
        names = tuple(kind_of(k).kind for k in kinds)
        try:
            start = int(since) if since else 0
        except ValueError:
            raise Invalid("watch", str(since), "since", "is not a revision of this store") from None
        self._check_horizon(start)
        return self._watch(names, start, timeout, pods_on_node, progress)

    def _check_horizon(self, since: int) -> None:
        try:
            row = self._db.connection().execute("SELECT compacted FROM meta").fetchone()
        except sqlite3.Error as err:
            raise self._db.unavailable(err) from err
        if since < int(row[0]):
            raise Gone(
                f"revision {since} is older than the oldest change the store keeps ({int(row[0]) + 1}); "
                "list again and watch from the list's revision"
            )

    def _watch(
        self,
        kinds: tuple[str, ...],
        since: int,
        timeout: float,
        pods_on_node: str = "",
        progress: Callable[[str], None] | None = None,
    ) -> Iterator[WatchEvent]:
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
            with self._db.read() as conn:
                compacted = int(conn.execute("SELECT compacted FROM meta").fetchone()[0])
                if last < compacted:
                    raise Gone(
                        f"revision {last} was compacted while watching (the store keeps "
                        f"{self._history} events); list again and watch from the list's revision"
                    )
                rows = conn.execute(query, (last, *kinds)).fetchall()
                current = int(conn.execute(REVISION_AND_COMPACTED).fetchone()[0]) if not rows else last
            sent = False
            for rev, kind, body in rows:
                last = int(rev)
                obj = json.loads(body)
                if pods_on_node and obj.get("kind") == "Pod" and _node_of(obj) != pods_on_node:
                    continue
                sent = True
                yield WatchEvent(type=kind, object=obj, revision=str(rev))
            if sent:
                deadline = time.monotonic() + timeout
            if rows:
                continue
            if current > last:  # nothing of these kinds up to the store's revision
                last = current
                if progress is not None:
                    progress(str(current))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(self._poll_interval, remaining))

    # ------------------------------------------------------------------ AllocationStore

    def usage(self, pool: str) -> PoolUsage:
        return self._records.usage(pool)

    def records(self, pool: str) -> builtins.list[IPRecord]:
        return self._records.records(pool)

    def records_of_pod(self, namespace: str, name: str) -> builtins.list[IPRecord]:
        return self._records.records_of_pod(namespace, name)

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
            endpoint_id = identify(endpoint)
            if endpoint_id[0].kind != ENDPOINT_KIND:
                raise Invalid(
                    endpoint_id[0].kind, endpoint_id[2], "kind", f"commit writes only {ENDPOINT_KIND}"
                )
        changes = RecordChanges.of(claims, releases)
        with self._db.write() as tx:
            advanced = self._records.apply(tx, changes)
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
        self._records.advance(advanced)

    def _release_endpoint(self, tx: Tx, namespace: str, name: str) -> None:
        """What Spiderpool's agent does once a pod's IPs are released: drop its finalizer from the
        SpiderEndpoint and delete it (other finalizers, if any, keep it terminating)."""
        info = kind_info(ENDPOINT_KIND)
        found = self._load(tx.conn, info, namespace, name)
        if found is not None:
            self._settle(
                tx, info, namespace, name, finalizer_released(found[1], FINALIZER, now=self._clock())
            )
