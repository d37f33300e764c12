"""The allocation records of the embedded store (``PoolRecords``): rows of the ``allocations`` table,
one per IP keyed by the address, never a rewritten list, so a claim costs O(log n).

- ``usage`` keeps a per-pool sorted list in this instance and brings it up to date from the record
  changes listed on the pool's watch events, so it costs O(changes since the last call); this
  instance's own commits advance it directly (``advance``).
- ``apply`` makes a commit's releases and claims in a write transaction: a claim is conditional on
  the pool's resourceVersion, and bumps it and the count with ``json_set`` in SQL.  In a block pool
  (``spiderbgp.io/block-size``, issue 15) a claim is conditional on the pool's generation token and
  needs its SpiderIPBlock; the block, not the pool, takes the new revision and count (a MODIFIED
  event of the block listing the changes), and ``record_heads`` the pool's last record revision and
  count, which ``usage`` replays from and ``block_pool_count`` shows (``sqlite_schema``).  A pool body
  longer than ``_DELTA_EVENT_MIN`` is not copied into its event: the event holds the merge patch of
  what changed against the whole-body event it derives from (``sqlite_schema``).
- ``render``: ``status.allocatedIPs`` in Spiderpool's JSON-string format and ``allocatedIPCount`` of
  a SpiderIPPool as ``get``/``list`` return it, built by SQLite from the rows and kept per revision.
"""

from __future__ import annotations

import bisect
import builtins
import ipaddress
import socket
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ipam.blocks import block_name_of, is_block_pool
from ipam.errors import Conflict, Invalid, NotFound
from ipam.records import Claim, IPRecord, Obj, PoolUsage, SortedPrefix
from ipam.store.sqlite_tx import SqliteFile, Tx

__all__ = ["POOL_KIND", "PoolRecords", "RecordChanges", "block_records_query"]

POOL_KIND = "SpiderIPPool"
# above this many changes since the cached revision, re-read the pool instead of replaying the log
_REPLAY_LIMIT = 256
_REPLAY_SCAN_LIMIT = 4096  # revisions of events a replay may scan
# revision, terminating, and the version a claim is conditional on: the pool's resourceVersion, or for
# a block pool (spiderbgp.io/block-size) its generation token "g<generation>" (ipam.store.protocol)
_POOL_VERSION = (
    "CASE WHEN coalesce(json_extract(body, '$.metadata.annotations.\"spiderbgp.io/block-size\"'), 'none') "
    "= 'none' "
    "THEN CAST(revision AS TEXT) "
    "ELSE 'g' || coalesce(json_extract(body, '$.metadata.generation'), 1) END"
)
_POOL_STATE = (
    f"SELECT revision, json_extract(body, '$.metadata.deletionTimestamp') IS NOT NULL, {_POOL_VERSION}, "
    "json_extract(body, '$.metadata.annotations.\"spiderbgp.io/block-size\"'), "
    "coalesce((SELECT h.revision FROM record_heads AS h WHERE h.pool = objects.name), 0) "
    "FROM objects WHERE kind = ? AND namespace = '' AND name = ?"
)
_BLOCK_EXISTS = "SELECT 1 FROM objects WHERE kind = 'SpiderIPBlock' AND namespace = '' AND name = ?"
# a claim's or release's change to its block: the next revision, as resourceVersion too, and the count
# (a body without one, from before schema 4, is counted from the rows, after this change)
_BLOCK_BUMP = (
    "UPDATE objects SET revision = ?1, body = json_set(body, '$.metadata.resourceVersion', ?2, "
    "'$.status.allocatedIPCount', coalesce(json_extract(body, '$.status.allocatedIPCount') + ?3, "
    "(SELECT count(*) FROM allocations WHERE pool = ?4 AND ip_key BETWEEN ?5 AND ?6 AND length(ip_key) = ?7))) "
    "WHERE kind = 'SpiderIPBlock' AND namespace = '' AND name = ?8"
)
_BLOCK_EVENT = (
    "INSERT INTO events (revision, kind, namespace, name, type, body, changes) "
    "SELECT revision, kind, namespace, name, 'MODIFIED', body, ?1 FROM objects "
    "WHERE kind = 'SpiderIPBlock' AND namespace = '' AND name = ?2"
)
_HELD_BLOCKS = (
    "SELECT name FROM objects WHERE kind = 'SpiderIPBlock' AND namespace = '' "
    "AND json_extract(body, '$.spec.pool') = ? AND coalesce(json_extract(body, '$.status.allocatedIPCount'), 1) != 0"
)
_BLOCK_EMPTIED = (
    "UPDATE objects SET revision = ?1, body = json_set(body, '$.metadata.resourceVersion', ?2, "
    "'$.status.allocatedIPCount', 0) WHERE kind = 'SpiderIPBlock' AND namespace = '' AND name = ?3"
)
_HEAD_BUMP = "UPDATE record_heads SET revision = max(revision, ?1), count = count + ?2 WHERE pool = ?3"
_HEAD_OF = "SELECT count FROM record_heads WHERE pool = ?"
_HEAD_COUNT = "UPDATE record_heads SET count = count + ?1 WHERE pool = ?2"
_HEAD_INSERT = (
    "INSERT INTO record_heads (pool, revision, count) "
    "VALUES (?1, ?2, (SELECT count(*) FROM allocations WHERE pool = ?1))"
)
# the events a usage cache replays: the pool's own, and its blocks' record changes
_REPLAY = (
    "SELECT type, kind, changes FROM events WHERE revision > ?1 AND revision <= ?2 "
    "AND ((kind = 'SpiderIPPool' AND namespace = '' AND name = ?3) "
    "OR (kind = 'SpiderIPBlock' AND changes IS NOT NULL AND json_extract(body, '$.spec.pool') = ?3)) "
    "ORDER BY revision"
)
_MAX_BITS = {4: 32, 16: 128}  # by key length
# a pool's revision, claim version and records head (0 without block records)
_USAGE_STATE = (
    f"SELECT revision, {_POOL_VERSION}, "
    "coalesce((SELECT h.revision FROM record_heads AS h WHERE h.pool = objects.name), 0) "
    "FROM objects WHERE kind = ? AND namespace = '' AND name = ?"
)
# the records of one block: its pool, and keys of the block's family between its first and last address
_BLOCK_RANGE = "pool = ? AND ip_key BETWEEN ? AND ? AND length(ip_key) = ?"
_COUNT_BLOCK = f"SELECT count(*) FROM allocations WHERE {_BLOCK_RANGE}"
_RENDER_BLOCK = (
    "SELECT count(*), json_group_object(ip, json_object('pod', pod, 'podUid', pod_uid)) "
    f"FROM (SELECT ip, pod, pod_uid FROM allocations WHERE {_BLOCK_RANGE} ORDER BY ip_key)"
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

# Spiderpool's allocatedIPs string, {"10.0.0.1":{"pod":"ns/name","podUid":"..."},...}, built by SQLite;
# the subquery walks the (pool, ip_key) index, so keys come in IP order.
_RENDER_RECORDS = (
    "SELECT count(*), json_group_object(ip, json_object('pod', pod, 'podUid', pod_uid)) "
    "FROM (SELECT ip, pod, pod_uid FROM allocations WHERE pool = ? ORDER BY ip_key)"
)


def _version(token: str, revision: int) -> str:
    """A pool's claim version: a block pool's generation token as stored, else the revision the
    records are known at (which may be newer than the row read)."""
    return token if token.startswith("g") else str(revision)


def block_records_query(obj: Obj, *, with_ips: bool) -> tuple[str, tuple[object, ...]] | None:
    """The SQL that counts (and with ``with_ips`` renders) the records inside a stored SpiderIPBlock,
    and its parameters; None when the block's spec is malformed (shown as stored)."""
    spec = obj.get("spec") or {}
    try:
        net = ipaddress.ip_network(str(spec.get("cidr")), strict=False)
    except ValueError:
        return None
    pool = spec.get("pool")
    if not isinstance(pool, str):
        return None
    first, last = net.network_address.packed, net.broadcast_address.packed
    return (_RENDER_BLOCK if with_ips else _COUNT_BLOCK), (pool, first, last, len(first))


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


@dataclass(frozen=True)
class RecordChanges:
    """A commit's releases and claims, checked and with each address's (text, integer, key)."""

    claims: tuple[tuple[Claim, str, int, bytes], ...]
    releases: tuple[tuple[IPRecord, str, int, bytes], ...]

    @classmethod
    def of(cls, claims: Sequence[Claim], releases: Sequence[IPRecord]) -> RecordChanges:
        """Invalid (one line naming the pool) for an address or a pod that is not one."""
        parsed = tuple((c, *_canonical_ip(c.ip, c.pool, "claim ip")) for c in claims)
        for claim, *_ in parsed:
            if claim.pod.count("/") != 1 or not all(claim.pod.split("/")):
                raise Invalid(POOL_KIND, claim.pool, "claim pod", f'{claim.pod!r} is not "namespace/name"')
        return cls(parsed, tuple((r, *_canonical_ip(r.ip, r.pool, "release ip")) for r in releases))


class PoolRecords:
    """The allocation records of one store file, and this instance's caches of them."""

    def __init__(self, db: SqliteFile) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._cache: dict[str, _PoolCache] = {}
        self._rendered: dict[str, tuple[str, int, str | None]] = {}  # pool -> (revision, count, text)

    def render(self, conn: sqlite3.Connection, obj: Obj, *, committed: bool = True) -> Obj:
        """Add ``status.allocatedIPs`` (Spiderpool's JSON string, keys in IP order, absent when there
        are no records) and ``allocatedIPCount``, both from the rows, to a stored pool.  A block
        pool gets only the count (its records are shown on its blocks: ``block_pool_count``).

        SQLite builds the string (``json_group_object`` over the (pool, ip_key) index, in C); the
        result is kept per pool revision, so reading pools that did not change costs no rendering.
        Inside a write transaction (``committed=False``) nothing is cached: the revision could still
        be rolled back and then be reused."""
        if is_block_pool(obj):
            return self.block_pool_count(conn, obj)
        name = obj["metadata"]["name"]
        revision = obj["metadata"]["resourceVersion"]
        with self._lock:
            cached = self._rendered.get(name)
        if cached is None or cached[0] != revision:
            count, text = conn.execute(_RENDER_RECORDS, (name,)).fetchone()
            cached = (revision, int(count), text if count else None)
            if committed:
                with self._lock:
                    self._rendered[name] = cached
        status = obj.setdefault("status", {})
        status["allocatedIPCount"] = cached[1]
        if cached[2] is None:
            status.pop("allocatedIPs", None)
        else:
            status["allocatedIPs"] = cached[2]
        return obj

    @staticmethod
    def block_pool_count(conn: sqlite3.Connection, obj: Obj) -> Obj:
        """A stored block pool with ``status.allocatedIPCount`` = all its records (``record_heads``;
        a pool without a row there has had no record change in its blocks, and its stored count,
        kept by the claims of a previous version, holds) and no ``allocatedIPs`` (rule 6 of
        ``ipam.store.protocol``'s block pools)."""
        row = conn.execute(_HEAD_OF, (obj["metadata"]["name"],)).fetchone()
        status = obj.get("status")
        if not isinstance(status, dict):
            status = obj["status"] = {}
        status.pop("allocatedIPs", None)
        if row is not None:
            status["allocatedIPCount"] = int(row[0])
        else:
            status.setdefault("allocatedIPCount", 0)
        return obj

    def usage(self, pool: str) -> PoolUsage:
        """The pool's records as a sorted prefix, known at its *head*: the later of the pool's revision
        and the last revision that changed records in its blocks (``record_heads``)."""
        rows = self._db.fetchall(_USAGE_STATE, (POOL_KIND, pool))
        if rows:
            head = max(int(rows[0][0]), int(rows[0][2]))
            with self._lock:
                cache = self._cache.get(pool)
                if cache is not None and cache.revision >= head:
                    # up to date (this instance's commits keep it so): no log to replay
                    version = _version(rows[0][1], cache.revision)
                    return PoolUsage(pool, version, SortedPrefix(cache.items, len(cache.items)))
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT u.*, m.compacted FROM ({_USAGE_STATE}) AS u, meta AS m", (POOL_KIND, pool)
            ).fetchone()
            if row is None:
                with self._lock:
                    self._cache.pop(pool, None)
                raise NotFound(POOL_KIND, pool)
            head, compacted = max(int(row[0]), int(row[2])), int(row[3])
            with self._lock:
                cache = self._cache.get(pool)
                if (
                    cache is not None
                    and cache.revision < head
                    and (cache.revision < compacted or not self._replay(conn, pool, cache, head))
                ):
                    cache = None
                if cache is None:
                    items = [
                        int.from_bytes(key, "big")
                        for (key,) in conn.execute(
                            "SELECT ip_key FROM allocations WHERE pool = ? ORDER BY ip_key", (pool,)
                        )
                    ]
                    cache = _PoolCache(head, items)
                    self._cache[pool] = cache
                # a cache newer than this snapshot (another thread refreshed it) is just as consistent
                version = _version(row[1], cache.revision)
                return PoolUsage(pool, version, SortedPrefix(cache.items, len(cache.items)))

    def _replay(self, conn: sqlite3.Connection, pool: str, cache: _PoolCache, upto: int) -> bool:
        """Bring ``cache`` to revision ``upto`` from the events of the pool and of its blocks (their
        ``changes``); False if a reload is cheaper (too many revisions to scan or changes to apply) or
        needed (the pool was deleted and created again)."""
        if upto - cache.revision > _REPLAY_SCAN_LIMIT:
            return False
        rows = conn.execute(_REPLAY, (cache.revision, upto, pool)).fetchall()
        changes: builtins.list[tuple[bool, int]] = []
        for change, _, text in rows:
            if change != "MODIFIED":
                return False
            if text:
                changes.extend((item[0] == "+", int(item[1:])) for item in text.split(","))
        if len(changes) > _REPLAY_LIMIT:
            return False
        _apply_changes(cache, changes, upto)
        return True

    def advance(self, changes: Mapping[str, tuple[int, int, Sequence[tuple[bool, int]]]]) -> None:
        """After a commit: bring a pool's usage cache that stood at the pool's revision before the
        commit to the revision it made, from what the commit changed, so the next ``usage`` of this
        instance needs no log replay.  A cache at any other revision is left to ``usage``."""
        with self._lock:
            for pool, (before, after, applied) in changes.items():
                cache = self._cache.get(pool)
                if cache is not None and cache.revision == before:
                    _apply_changes(cache, applied, after)

    def records(self, pool: str) -> builtins.list[IPRecord]:
        rows = self._db.fetchall(
            "SELECT pool, ip, pod, pod_uid FROM allocations WHERE pool = ? ORDER BY ip_key", (pool,)
        )
        return [IPRecord(*row) for row in rows]

    def records_of_pod(self, namespace: str, name: str) -> builtins.list[IPRecord]:
        rows = self._db.fetchall(
            "SELECT pool, ip, pod, pod_uid FROM allocations WHERE pod = ? ORDER BY pool, ip_key",
            (f"{namespace}/{name}",),
        )
        return [IPRecord(*row) for row in rows]

    def forget(self, pools: set[str]) -> None:
        """Drop the usage caches of these pools (writes that advanced them were rolled back)."""
        with self._lock:
            for pool in pools:
                self._cache.pop(pool, None)

    @staticmethod
    def drop_pool(tx: Tx, pool: str) -> None:
        """The records of a pool being removed go with it (as status.allocatedIPs does in Kubernetes);
        a usage cache never replays across a pool's DELETED event.  Its blocks that held records
        (Kubernetes deletes them by owner garbage collection; here they stay until returned) show a
        count of 0 from a MODIFIED event each."""
        tx.conn.execute("DELETE FROM allocations WHERE pool = ?", (pool,))
        tx.conn.execute("DELETE FROM record_heads WHERE pool = ?", (pool,))
        held = tx.conn.execute(_HELD_BLOCKS, (pool,)).fetchall()
        for (name,) in held:
            rev = tx.next_revision()
            tx.conn.execute(_BLOCK_EMPTIED, (rev, str(rev), name))
            tx.conn.execute(_BLOCK_EVENT, (None, name))

    def apply(self, tx: Tx, changes: RecordChanges) -> dict[str, tuple[int, int, Sequence[tuple[bool, int]]]]:
        """Releases first, then claims, in ``tx``.  A plain pool touched gets one new revision (its
        resourceVersion and allocatedIPCount bumped in SQL, one MODIFIED event listing the record
        changes).  In a block pool each block touched gets one instead (its resourceVersion and
        count; its event lists the changes) and the pool's ``record_heads`` row takes the last of
        them and the count; the pool object stays as it is (``ipam.store.protocol``, block pools).
        Returns what ``advance`` takes once the transaction has committed: pool -> (head before,
        head after, record changes in order)."""
        # rows are read and rewritten in SQL (json_extract / json_set): a claim does not pay for
        # parsing and re-serializing a body in Python
        loaded: dict[str, _StoredPool | None] = {}
        # pool -> new revision of the pool object, and the changes its event lists
        touched: dict[str, tuple[int, builtins.list[tuple[bool, int]]]] = {}
        blocks: dict[str, _BlockChange] = {}  # block name -> its change
        heads: dict[str, int] = {}  # pool -> its last new revision
        counts: dict[str, int] = {}
        applied: dict[str, builtins.list[tuple[bool, int]]] = {}  # pool -> record changes, in order

        def stored_pool(pool: str) -> _StoredPool | None:
            if pool not in loaded:
                row = tx.conn.execute(_POOL_STATE, (POOL_KIND, pool)).fetchone()
                loaded[pool] = None if row is None else _StoredPool.of(row)
            return loaded[pool]

        def note(pool: str, rev: int, added: bool, value: int) -> None:
            heads[pool] = max(heads.get(pool, 0), rev)
            counts[pool] = counts.get(pool, 0) + (1 if added else -1)
            applied.setdefault(pool, []).append((added, value))

        def touch(
            pool: str, value: int, key: bytes, *, claim: bool
        ) -> tuple[int, list[tuple[bool, int]]] | None:
            """The revision this commit gives the record's change and the list of changes its event
            carries: its block's in a block pool (for a release whose block is gone: the pool's),
            else the pool's; None if the pool is gone."""
            found = stored_pool(pool)
            if found is None:
                return None
            if found.size is not None:
                name, first, last = _block_of(pool, value, key, found.size)
                if name not in blocks and (
                    claim or tx.conn.execute(_BLOCK_EXISTS, (name,)).fetchone() is not None
                ):
                    blocks[name] = _BlockChange(pool, tx.next_revision(), first, last)
                if name in blocks:
                    return blocks[name].revision, blocks[name].applied
            if pool not in touched:
                touched[pool] = (tx.next_revision(), [])
            return touched[pool]

        for claim, *_ in changes.claims:
            found_pool = stored_pool(claim.pool)
            if found_pool is None:
                raise NotFound(POOL_KIND, claim.pool)
            current = found_pool.version
            if found_pool.terminating:
                raise Conflict(
                    f'{POOL_KIND} "{claim.pool}": metadata.deletionTimestamp: the pool is terminating; '
                    "no new IPs are allocated from it"
                )
            if current != claim.pool_version:
                what = "generation" if current.startswith("g") else "resourceVersion"
                raise Conflict(
                    f'{POOL_KIND} "{claim.pool}": {what} {claim.pool_version} is stale '
                    f"(now {current}); re-read and retry"
                )
        checked: set[str] = set()
        for claim, ip, value, key in changes.claims:
            found_pool = loaded[claim.pool]
            size = found_pool.size if found_pool is not None else None
            if size is not None:  # a block pool: the address needs its block (ipam.store.protocol)
                name = _block_of(claim.pool, value, key, size)[0]
                if name not in checked and tx.conn.execute(_BLOCK_EXISTS, (name,)).fetchone() is None:
                    raise Conflict(
                        f'SpiderIPBlock "{name}": not claimed; {ip} of pool {claim.pool} needs its block first'
                    )
                checked.add(name)
        for release, _, value, key in changes.releases:
            row = tx.conn.execute(
                "SELECT pool FROM allocations WHERE ip_key = ? AND pool = ? AND pod_uid = ?",
                (key, release.pool, release.pod_uid),
            ).fetchone()
            if row is None:
                continue  # absent or owned by another UID: a no-op
            target = touch(release.pool, value, key, claim=False)
            if target is None:
                continue
            tx.conn.execute("DELETE FROM allocations WHERE ip_key = ?", (key,))
            note(release.pool, target[0], False, value)
            target[1].append((False, value))
        for claim, ip, value, key in changes.claims:
            target = touch(claim.pool, value, key, claim=True)
            assert target is not None  # checked above, inside this transaction
            rev = target[0]
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
            note(claim.pool, rev, True, value)
            target[1].append((True, value))
        for name, block in blocks.items():
            delta = sum(1 if added else -1 for added, _ in block.applied)
            tx.conn.execute(
                _BLOCK_BUMP,
                (
                    block.revision,
                    str(block.revision),
                    delta,
                    block.pool,
                    block.first,
                    block.last,
                    len(block.first),
                    name,
                ),
            )
            tx.conn.execute(_BLOCK_EVENT, (_listed(block.applied), name))
        for pool, (rev, pool_changes) in touched.items():
            tx.conn.execute(
                _POOL_BUMP, (rev, str(rev), sum(1 if a else -1 for a, _ in pool_changes), POOL_KIND, pool)
            )
            before = loaded[pool]
            assert before is not None  # touched pools exist
            tx.conn.execute(
                _POOL_EVENT,
                (rev, _listed(pool_changes) or None, before.revision, _DELTA_EVENT_MIN, POOL_KIND, pool),
            )
        for pool, head in heads.items():
            found = loaded[pool]
            assert found is not None
            if found.size is None:
                tx.conn.execute(_HEAD_COUNT, (counts[pool], pool))  # a pool once a block pool
            elif tx.conn.execute(_HEAD_BUMP, (head, counts[pool], pool)).rowcount == 0:
                tx.conn.execute(_HEAD_INSERT, (pool, head))  # counts the rows, this commit's included
        tx.pools.update(heads)
        return {
            pool: (found.head, heads[pool], applied[pool])
            for pool, found in loaded.items()
            if found is not None and pool in heads
        }


@dataclass(frozen=True)
class _StoredPool:
    """A pool as a commit needs it: revision, whether terminating, the version claims are conditional
    on, the block size (None: a plain pool) and its records head (``record_heads``)."""

    revision: int
    terminating: bool
    version: str
    size: int | None
    head: int

    @classmethod
    def of(cls, row: Sequence[object]) -> _StoredPool:
        text = str(row[3] or "")
        size = int(text) if text.isdigit() else None
        revision = int(str(row[0]))
        return cls(revision, bool(row[1]), str(row[2]), size, max(revision, int(str(row[4]))))


@dataclass
class _BlockChange:
    """A commit's change to one block: its pool, new revision, key range and record changes."""

    pool: str
    revision: int
    first: bytes
    last: bytes
    applied: builtins.list[tuple[bool, int]] = field(default_factory=builtins.list)


def _block_of(pool: str, value: int, key: bytes, size: int) -> tuple[str, bytes, bytes]:
    """The name of the block of ``pool`` holding an address, and the first and last keys of its range."""
    bits = _MAX_BITS[len(key)]
    family = 4 if len(key) == 4 else 6
    span = 1 << (bits - size)
    start = value - value % span
    width = len(key)
    return (
        block_name_of(pool, value, family, size),
        start.to_bytes(width, "big"),
        (start + span - 1).to_bytes(width, "big"),
    )


def _listed(applied: Sequence[tuple[bool, int]]) -> str:
    return ",".join(f"{'+' if added else '-'}{value}" for added, value in applied)
