"""The object-store protocol: Kubernetes-shaped objects, and allocation records beside them.

Two backends implement it: ``ipam.store.sqlite`` (embedded, one machine) and ``ipam.store.kube``
(the Kubernetes API).  The values it passes (``Obj``, ``IPRecord``, ``Claim``, ``PoolUsage``,
``WatchEvent``) live in ``ipam.records``; the API server's rules both backends follow, as pure
functions, in ``ipam.apiserver``.  One contract suite (``tests/contract``) runs against both.

Objects are plain JSON-shaped dicts exactly as ``kubectl get -o json`` shows them: ``apiVersion``,
``kind``, ``metadata`` (``name``, ``namespace`` for namespaced kinds, ``labels``, ``annotations``,
``uid``, ``resourceVersion``, ``creationTimestamp``, ``generation``, ``ownerReferences``,
``finalizers``, ``deletionTimestamp``), ``spec`` and ``status``.  Stores return fresh copies; callers
may mutate what they get and write it back.

resourceVersion is an opaque string.  The embedded store uses one global, strictly increasing revision
(like etcd), so ``revision()`` followed by ``watch(since=...)`` misses nothing.

Deletion follows the API server's rules in every backend (the Kubernetes backend gets them from the
server itself):

* ``delete`` of an object without finalizers removes it (a DELETED watch event).  An object with
  ``metadata.finalizers`` is kept and becomes *terminating*: ``metadata.deletionTimestamp`` is set to
  now (RFC 3339) and ``metadata.deletionGracePeriodSeconds`` to 0, once (a MODIFIED event; deleting a
  terminating object again changes nothing).
* Graceful deletion, for Pods only and only when ``grace_period_seconds`` is given (``kubectl delete
  --grace-period``): with a grace G > 0 the pod is kept, terminating, with ``deletionTimestamp`` = now +
  G and ``deletionGracePeriodSeconds`` = G, finalizers or not, until it is deleted again with grace 0
  (the kubelet's final delete, after CNI DEL).  A later delete may only shorten the grace.  Grace 0
  removes the pod at once unless finalizers hold it (then it is terminating with grace 0).  Other kinds
  ignore the grace period.
* ``update`` of a terminating object may remove finalizers; when the last one goes and no pod grace
  period is pending (``deletionGracePeriodSeconds`` is 0 or absent), the object is removed (a DELETED
  event; ``update`` returns its last state).  Adding a finalizer to a terminating object is refused
  (Invalid on ``metadata.finalizers``, as the API server answers 422).  ``deletionTimestamp`` and
  ``deletionGracePeriodSeconds`` belong to the store: ``create`` and ``update`` ignore the caller's
  values (create never makes a terminating object; update keeps the stored ones).  Finalizers given
  at ``create`` are kept.
* A terminating SpiderIPPool still gives IPs back: ``commit`` applies its releases but refuses claims
  (Conflict naming the pool), so nothing new is allocated from a pool being deleted.  Removing a
  SpiderIPPool removes its allocation records with it (they live in its status in Kubernetes).

Allocation records (which IP of which pool belongs to which pod) have their own narrow interface so
each backend can store them well: a row per IP under a uniqueness constraint in SQLite, and
Spiderpool's ``status.allocatedIPs`` JSON string on the pool in Kubernetes.  Either way a claim in a plain pool is
conditional on the pool's resourceVersion, and the pool's resourceVersion changes with every claim and
release: that is what makes an admission check ("no excluded IP is in use") and an allocation unable to
interleave wrongly.  ``status.allocatedIPs`` / ``status.allocatedIPCount`` of a SpiderIPPool returned
by ``get``/``list`` always reflect the records.

**Block pools** (a SpiderIPPool annotated ``spiderbgp.io/block-size``, issue 15; ``ipam.blocks``) follow
the same interface with these rules, in both backends:

1. Every record of a block pool lies in the SpiderIPBlock whose CIDR holds its address.  A claim of an
   address whose block does not exist fails with Conflict (``SpiderIPBlock "<name>": not claimed; <ip>
   of pool <pool> needs its block first``): the caller claims the block first
   (``ipam.block_claims.claim_block``, create-if-absent).  A release of an address with no record is a
   no-op, as in a plain pool.
2. A SpiderIPBlock read with ``get``/``list``/``watch`` carries ``status.allocatedIPCount`` and
   Spiderpool's ``status.allocatedIPs`` string of the records inside it (Kubernetes: that is where they
   are stored; SQLite: rendered from the allocations table).  ``create``/``update``/``update_status``
   keep both fields: the store owns them and ignores the caller's values.  ``allocated_ips=False`` on
   ``get``/``list`` may leave ``allocatedIPs`` out (a cheap listing).
3. Every claim and release in a block moves that block's resourceVersion (a MODIFIED watch event of the
   block), not the pool's: the pool object of a block pool changes only with its own spec, metadata and
   status writes.
4. A claim in a block pool is conditional on the pool's ``metadata.generation`` (spec changes and the
   start of deletion move it), not on its resourceVersion: ``usage(pool).resource_version`` of a block
   pool is the token ``g<generation>`` (e.g. ``g3``) and ``Claim.pool_version`` must equal it, else
   Conflict.  A claim also fails with Conflict when its address is recorded (in any pool), its block is
   missing or the pool is terminating.  Claims and releases by different nodes in different blocks of
   one pool therefore never conflict.  (Kubernetes writes a block's records with the block's
   resourceVersion as precondition and retries a 409 inside while the address is still free in it.)
5. Deleting a SpiderIPBlock that holds records fails with Conflict naming the block and its count
   (``SpiderIPBlock "<name>": holds N allocation(s)``): a block is returned only when empty.  SQLite
   checks in the transaction; Kubernetes reads the block, refuses if it holds records, then deletes
   with that resourceVersion (or the caller's, when given) as precondition, so a record written after
   the read makes the delete fail.  Deleting the pool still removes its records (SQLite) or its blocks
   by owner garbage collection (Kubernetes: the blocks are owned by their pool).
6. The pool object of a block pool holds no records: no ``status.allocatedIPs`` (the one departure from
   Spiderpool's format; the records are on its blocks).  ``get``/``list`` return its
   ``status.allocatedIPCount`` as the number of all its records (SQLite derives it; Kubernetes sums
   its blocks' records, from the block informer or one list).  On Kubernetes the *stored* count, which
   ``kubectl get sp`` prints, is written by the leader from the blocks
   (``ipam.controllers.blocks.BlockReturn.counts``, within about a second of a block's change); a
   ``get``/``list`` with ``allocated_ips=False`` returns the pool as stored (that count), which is
   what the leader compares.  Records a previous version left in a block pool's own
   ``status.allocatedIPs`` are ignored by both stores and dropped by the next status write.
7. Block pools have no per-pool record cap on Kubernetes (``max_pool_records`` is a plain pool's): each
   block object is bounded by its size, at most /20 (4,096 addresses) for IPv4 and /116 for IPv6,
   Calico's limits, enforced in admission.
8. ``records(pool)``, ``records_of_pod`` and ``usage(pool).allocated`` include the records in blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from ipam.records import Claim, IPRecord, Obj, PoolUsage, WatchEvent

__all__ = ["AllocationStore", "GroupCommit", "ObjectStore", "Store"]


class ObjectStore(Protocol):
    def create(self, obj: Obj) -> Obj:
        """Store a new object; fills uid, resourceVersion, creationTimestamp, generation.
        Raises AlreadyExists."""

    def get(self, kind: str, name: str, namespace: str = "", *, allocated_ips: bool = True) -> Obj:
        """Raises NotFound.  ``allocated_ips=False``: a SpiderIPPool may come without
        ``status.allocatedIPs`` (``allocatedIPCount`` is always there) so the allocation path does not
        pay for rendering every record of a large pool."""

    def list(
        self,
        kind: str,
        *,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        allocated_ips: bool = True,
    ) -> list[Obj]:
        """Objects of a kind, optionally in one namespace and carrying all the given labels (equality),
        sorted by (namespace, name).  ``allocated_ips`` as for ``get``."""

    def update(self, obj: Obj) -> Obj:
        """Replace metadata (labels, annotations, ownerReferences, finalizers) and spec.  If
        ``metadata.resourceVersion`` is set it must equal the stored one (else Conflict).  For kinds with
        a status subresource the stored status is kept; for the others status is replaced too.
        Removing the last finalizer of a terminating object removes the object (module docstring).
        Raises NotFound, Conflict, Invalid (a new finalizer on a terminating object)."""

    def update_status(self, obj: Obj) -> Obj:
        """Replace only status, with the same resourceVersion precondition.  Raises NotFound."""

    def delete(
        self,
        kind: str,
        name: str,
        namespace: str = "",
        *,
        resource_version: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> None:
        """Delete an object: remove it, or mark it terminating when finalizers hold it or (Pods only)
        ``grace_period_seconds`` > 0 is given; see the module docstring.  ``resource_version``, when
        given, must be the stored one.  Raises NotFound, Conflict, Invalid (a negative grace period)."""

    def revision(self) -> str:
        """The store's current revision: a list taken now, then ``watch(since=revision)``, misses nothing."""

    def snapshot(self) -> AbstractContextManager[None]:
        """Reads of the calling thread inside this block may share one consistent snapshot (the
        embedded store takes its read locks once instead of per statement).  A write inside the block
        ends the snapshot: the write, and reads after it, see the current state.  Nested blocks join
        the outer one.  A backend that reads from a cache may return a no-op."""

    def watch(
        self,
        kinds: Sequence[str],
        since: str,
        *,
        timeout: float,
        pods_on_node: str = "",
        progress: Callable[[str], None] | None = None,
    ) -> Iterator[WatchEvent]:
        """Changes to objects of these kinds after revision ``since``, in order, until ``timeout``
        seconds pass with nothing new (then the iterator ends; call again from the last revision).
        Raises Gone when ``since`` is older than what the store keeps.

        ``pods_on_node``: Pods only of that node (``spec.nodeName``; the Kubernetes store asks the API
        server with a ``fieldSelector``, as the kubelet does, so other nodes' pods never reach this
        process); other kinds are not filtered.

        ``progress``: called (from the iterating thread, between events) with a revision R when every
        change of these kinds up to R has been yielded, and R is newer than the last event: a watch
        resumed from R misses nothing.  It follows the store's revision while these kinds are quiet
        (Kubernetes: the watch's BOOKMARK events; the embedded store: its revision at an empty
        poll), so a quiet watcher's resume point does not fall behind the history the store keeps."""


class AllocationStore(Protocol):
    def usage(self, pool: str) -> PoolUsage:
        """The pool's resourceVersion and sorted allocated IPs.  Raises NotFound for an unknown pool.
        Must cost O(changes since the last call) in the embedded store, not O(pool records)."""

    def records(self, pool: str) -> list[IPRecord]:
        """All records of a pool, sorted by IP."""

    def records_of_pod(self, namespace: str, name: str) -> list[IPRecord]:
        """All records naming pod ``namespace/name`` (any UID), across pools."""

    def commit(
        self,
        *,
        claims: Sequence[Claim] = (),
        releases: Sequence[IPRecord] = (),
        endpoint: Obj | None = None,
        delete_endpoint: tuple[str, str] | None = None,
    ) -> None:
        """Apply releases, then claims (so one commit can hand an IP from an old pod UID to a new one;
        block pools: see "Block pools" in the module docstring),
        then create-or-replace ``endpoint`` (a SpiderEndpoint object; its
        resourceVersion, when set, is a precondition) or delete ``delete_endpoint`` ((namespace, name)).

        A claim fails with Conflict when the pool's resourceVersion (as it was before this commit) is no
        longer ``pool_version``, the IP is already recorded (in any pool), or the pool is terminating.  A release removes the record only when its pod_uid
        matches (a release of something absent or owned by another UID is a no-op).  Every claim and
        release bumps the pool's resourceVersion and status.allocatedIPCount.

        The embedded store does all of this in one transaction and it is durable when this returns.
        The Kubernetes store writes pool by pool, then the endpoint (as Spiderpool does); a failure
        part-way leaves records that the IP GC reclaims."""


class GroupCommit(Protocol):
    """An optional capability of a store (``Store.group_commit``): several writes, one commit."""

    def batch(self, *, wait: float | None = None) -> AbstractContextManager[None]:
        """The writes the calling thread makes inside the block share one transaction, each in a
        savepoint of its own (a write that fails leaves nothing, the others stand), and become durable
        together when the block ends; an exception out of the block rolls every write back.  The
        store's writer lock is held from start to end, so nothing else commits in between.  ``wait``
        (not None) bounds the wait for that lock: past it, ``ipam.errors.WouldBlock`` and nothing
        written.  Nested blocks join the outer one."""


class Store(ObjectStore, AllocationStore, Protocol):
    """What the IPAM service and the CLI are given: both halves, from one backend."""

    def group_commit(self) -> GroupCommit | None:
        """This store's group commit, or None when it has none (the Kubernetes API has no
        transactions)."""

    def close(self) -> None: ...
