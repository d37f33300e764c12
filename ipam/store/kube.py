"""The Kubernetes backend of the object store: ``ipam.store.protocol.Store`` on the API server.

Objects are the API server's own: the Spiderpool CRDs (``spiderpool.spidernet.io/v2beta1``), Pods,
Namespaces, Nodes, workloads and Leases, reached through the official ``kubernetes`` client
(``ipam.store.kube_api``).  The API server's optimistic concurrency is what keeps two nodes from handing out
one IP: every write of a pool carries the resourceVersion it was computed from.

Allocation records live where Spiderpool keeps them, so ``kubectl get sp`` and Spiderpool's own tools
read them unchanged:

* ``status.allocatedIPs`` of the SpiderIPPool, Spiderpool's JSON string
  ``{"<ip>":{"pod":"<ns>/<name>","podUid":"<uid>"}}`` (absent when empty), and ``allocatedIPCount`` kept
  equal to the number of records, written with a status-subresource PUT (``Status().Update``) carrying
  the pool's resourceVersion;
* the pod's SpiderEndpoint, written after the pools.

``commit()`` works pool by pool, releases before claims (as the embedded store does).  A claim is
conditional on the resourceVersion the caller read (``Claim.pool_version``): if the pool changed since,
the claim fails with Conflict and the caller re-reads and recomputes; releases and unconditional writes
are read-modify-write loops that re-read and retry on 409 with bounded backoff (client-go's
DefaultRetry, as Spiderpool).  A failure part-way leaves records the IP GC reclaims.

**The per-pool record limit.**  All records of a pool live in one string of one object, and an object is
limited in size by etcd (1.5 MiB by default), so a pool holds at most ``max_pool_records`` records
(Spiderpool's ``SPIDERPOOL_IPPOOL_MAX_ALLOCATED_IPS``, default 5000: about 110 bytes a record, ~550 kB).
A claim that would take a pool past it fails with ``PoolFull`` (an ``AllocationError`` naming the pool
and the limit) and writes nothing; the allocator then moves on to the next candidate pool, and a pod
that needs more IPs than one pool can hold needs more pools (or a SpiderSubnet with auto-pools).

**Block pools** (``spiderbgp.io/block-size``, ``ipam.store.kube_blocks``) keep no records in the pool:
each record is in ``status.allocatedIPs`` of the SpiderIPBlock holding its address, written with the
block's resourceVersion, so the cap above does not apply to them (a block holds at most its size) and
nodes allocating in their own blocks write different objects.  The pool's ``allocatedIPCount`` is the
leader's to write (``ipam.store.protocol``, "Block pools").

Reads: ``get``/``list`` of the kinds given as ``cached_kinds`` are served from informers (list+watch in
background threads, ``ipam.store.kube_informer``) once they are synced; everything on the write path (``usage``,
``records``, ``commit``, preconditions) reads the server.

Over 600 lines on purpose: the protocol's two halves on one API client, where the allocation records
live inside the pool objects (``status.allocatedIPs``), so object writes, record writes and their
conflict retries cannot be separated without passing the pool body between modules; the HTTP client
(``kube_api``) and the informers (``kube_informer``) are already apart.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from ipam import errors
from ipam.apiserver import grace_period, identify
from ipam.blocks import BLOCK_KIND, block_name_of, is_block_pool, version_token
from ipam.errors import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from ipam.kinds import KindInfo, kind_info
from ipam.model import PoolIPAllocation, decode_allocated_ips
from ipam.ranges import address_value, canonical_ip
from ipam.records import Claim, IPRecord, Obj, PoolUsage, WatchEvent
from ipam.store.kube_api import DEFAULT_RETRY, Backoff, KubeApi, WatchStream
from ipam.store.kube_blocks import (
    BlockBook,
    BlockRecords,
    block_pool_of,
    render_records,
)
from ipam.store.kube_informer import Informer
from ipam.store.protocol import GroupCommit

__all__ = [
    "DEFAULT_MAX_POOL_RECORDS",
    "KubeStore",
    "PoolFull",
    "load_configuration",
]

POOL = "SpiderIPPool"
ENDPOINT = "SpiderEndpoint"
FINALIZER = "spiderpool.spidernet.io"
DEFAULT_MAX_POOL_RECORDS = 5000  # Spiderpool's SPIDERPOOL_IPPOOL_MAX_ALLOCATED_IPS
_DERIVED = ("allocatedIPs", "allocatedIPCount")  # pool status fields owned by the records


class PoolFull(errors.PoolFull):
    """The pool holds as many records as one Kubernetes object can (``max_pool_records``)."""

    def __init__(self, pool: str, limit: int) -> None:
        self.limit = limit
        super().__init__(
            pool,
            f'SpiderIPPool "{pool}": status.allocatedIPs: holds {limit} records, the most one pool can '
            "hold in Kubernetes (SPIDERPOOL_IPPOOL_MAX_ALLOCATED_IPS); use another pool",
        )


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> k8s.Configuration:
    """In-cluster configuration (service account token and CA) when ``kubeconfig`` is None, else the
    given kubeconfig file.  Raises StoreUnavailable with one line when neither works."""
    cfg = k8s.Configuration()
    try:
        if kubeconfig is None:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
    except (k8s_config.ConfigException, OSError) as err:
        where = kubeconfig or "in-cluster service account"
        raise StoreUnavailable(f"Kubernetes configuration ({where}): {err}") from None
    return cfg


@dataclass(frozen=True)
class _PoolState:
    """A pool as last read from the server, with its records parsed (reused while the RV is the same)."""

    obj: Obj
    records: dict[str, PoolIPAllocation]
    usage: PoolUsage


def _rv(obj: Obj) -> str:
    return str(obj["metadata"].get("resourceVersion") or "")


def _typed(info: KindInfo, obj: Obj) -> Obj:
    obj.setdefault("apiVersion", info.api_version)
    obj.setdefault("kind", info.kind)
    return obj


def _canonical(ip: str, pool: str, field: str) -> str:
    try:
        return canonical_ip(ip)
    except (ValueError, TypeError):
        raise Invalid(POOL, pool, field, f"{ip!r} is not an IP address") from None


class KubeStore:
    """``ipam.store.protocol.Store`` on a Kubernetes API server."""

    def __init__(
        self,
        api: KubeApi,
        *,
        cached_kinds: Sequence[str] = (),
        max_pool_records: int = DEFAULT_MAX_POOL_RECORDS,
        retry: Backoff = DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        sync_timeout: float = 30.0,
    ) -> None:
        self.api = api
        self.max_pool_records = max_pool_records
        self.retry = retry
        self._sleep = sleep
        self._rand = rand
        self.conflicts = 0  # 409s met by this store's writes (retried inside, or passed to the caller)
        self.retries = 0  # re-reads after a 409 done inside the store
        self._lock = threading.Lock()
        self._pools: dict[str, _PoolState] = {}
        self._book = BlockBook()
        self._informers: dict[str, Informer] = {}
        for name in cached_kinds:
            info = kind_info(name)
            self._informers[info.kind] = Informer(api, info).start()
        for inf in self._informers.values():
            if not inf.wait_synced(sync_timeout):
                self.close()
                raise StoreUnavailable(
                    f"Kubernetes API {api.host}: could not list {inf.info.plural} ({inf.last_error or 'timeout'})"
                )

    @classmethod
    def connect(
        cls,
        configuration: k8s.Configuration | k8s.ApiClient,
        **kwargs: Any,
    ) -> KubeStore:
        """A store on the API server a ``Configuration`` (or an ``ApiClient``) points at."""
        client = configuration if isinstance(configuration, k8s.ApiClient) else k8s.ApiClient(configuration)
        return cls(KubeApi(client), **kwargs)

    def group_commit(self) -> GroupCommit | None:
        """None: the API server has no transactions (writes go pool by pool, then the endpoint)."""
        return None

    def close(self) -> None:
        for inf in self._informers.values():
            inf.stop()
        self._informers.clear()
        self.api.close()

    def informer(self, kind: str) -> Informer | None:
        """The informer caching ``kind`` (to add event handlers or check sync), if any."""
        return self._informers.get(kind_info(kind).kind)

    # -- helpers ------------------------------------------------------------------------------------

    def _retrying(self, attempt: Callable[[], Obj]) -> Obj:
        """Run a read-modify-write ``attempt`` (which re-reads first), retrying on Conflict."""
        delays = self.retry.delays(self._rand)
        while True:
            try:
                return attempt()
            except _StaleClaim:
                raise
            except Conflict:
                self.conflicts += 1
                delay = next(delays, None)
                if delay is None:
                    raise
                self.retries += 1
                self._sleep(delay)

    def _seen(self, info: KindInfo, obj: Obj) -> Obj:
        """An object just read from or written to the server: into the caches, then out to the caller."""
        inf = self._informers.get(info.kind)
        if inf is not None:
            inf.observe(obj)
        return self._out(info, obj)

    def _out(self, info: KindInfo, obj: Obj) -> Obj:
        """What callers get: kind and apiVersion set; a pool's allocatedIPCount equal to its records."""
        _typed(info, obj)
        if info.kind == POOL and is_block_pool(obj):
            status = obj.get("status")
            if isinstance(status, dict):  # records are on the blocks; a previous version's are ignored
                status.pop("allocatedIPs", None)
            return obj
        if info.kind == POOL:
            try:
                count = len(self._remember_pool(obj).records)
            except Invalid:
                return obj  # a malformed allocatedIPs is shown as it is (usage() reports it)
            if not isinstance(obj.get("status"), dict):
                obj["status"] = {}
            obj["status"]["allocatedIPCount"] = count
        return obj

    def _put(self, info: KindInfo, obj: Obj, ns: str, name: str, sub: str = "") -> Obj:
        try:
            out = self.api.request("PUT", info, namespace=ns, name=name, subresource=sub, body=obj)
        except Conflict:
            self.conflicts += 1
            raise
        out = _typed(info, out)
        if _removed(out):  # this PUT took the last finalizer of a terminating object: it is gone
            inf = self._informers.get(info.kind)
            if inf is not None:
                inf.forget(out)
            return self._out(info, out)
        return self._seen(info, out)

    def _get_server(self, info: KindInfo, name: str, ns: str) -> Obj:
        return _typed(info, self.api.request("GET", info, namespace=ns, name=name))

    # -- ObjectStore ----------------------------------------------------------------------------------

    def create(self, obj: Obj) -> Obj:
        info, ns, name = identify(obj)
        body = copy.deepcopy(obj)
        body["apiVersion"], body["kind"] = info.api_version, info.kind
        meta = body["metadata"]
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
            meta.pop(key, None)
        status = body.get("status")
        if info.kind in (POOL, BLOCK_KIND):  # a new pool or block has no records, whatever its status says
            status = {k: v for k, v in (status or {}).items() if k not in _DERIVED}
            body["status"] = status
        posted = self.api.request("POST", info, namespace=ns, body=body, about=name)
        out = self._seen(info, _typed(info, posted))
        if info.has_status and status and out.get("status") != status:
            # the API server drops status on create for kinds with the subresource: write it after
            out["status"] = status
            out = self._put(info, out, ns, name, "status")
        return out

    def get(self, kind: str, name: str, namespace: str = "", *, allocated_ips: bool = True) -> Obj:
        # allocatedIPs lives in the object here, so there is nothing to skip
        info = kind_info(kind)
        ns = namespace if info.namespaced else ""
        inf = self._informers.get(info.kind)
        if inf is not None and inf.synced:
            obj = inf.get(name, ns)
            if obj is None:
                raise NotFound(info.kind, name, ns)
            out = self._out(info, obj)
        else:
            out = self._seen(info, self._get_server(info, name, ns))
        if allocated_ips and info.kind == POOL:
            self._count_blocks([out])
        return out

    def list(
        self,
        kind: str,
        *,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        allocated_ips: bool = True,
    ) -> builtins.list[Obj]:
        info = kind_info(kind)
        ns = namespace if info.namespaced else None
        inf = self._informers.get(info.kind)
        if inf is not None and inf.synced:
            out = [self._out(info, o) for o in inf.list(ns, labels)]
        else:
            out = [self._out(info, o) for o in self._list_server(info, ns, labels)]
        if allocated_ips and info.kind == POOL:
            self._count_blocks(out)
        return out

    def _count_blocks(self, pools: Sequence[Obj]) -> None:
        """Set ``status.allocatedIPCount`` of the block pools among ``pools`` to the records in their
        blocks (the stored count is the leader's, written within its reconcile delay).  A block whose
        status does not parse counts as empty here (``list_blocks`` warns about it)."""
        names = {str(o["metadata"]["name"]) for o in pools if is_block_pool(o)}
        if not names:
            return
        counts = dict.fromkeys(names, 0)
        for block in self._block_objs(next(iter(names)) if len(names) == 1 else None):
            pool = block_pool_of(block)
            if pool in counts:
                with contextlib.suppress(Invalid):
                    counts[pool] += len(self._book.records(block).records)
        for obj in pools:
            name = str(obj["metadata"]["name"])
            if name in counts:
                if not isinstance(obj.get("status"), dict):
                    obj["status"] = {}
                obj["status"]["allocatedIPCount"] = counts[name]

    def _list_server(
        self, info: KindInfo, namespace: str | None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))
        query = [("labelSelector", selector)] if selector else []
        found, _ = self.api.list_all(info, namespace=namespace or "", query=query)
        items = [_typed(info, o) for o in found]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    def update(self, obj: Obj) -> Obj:
        info, ns, name = identify(obj)
        body = copy.deepcopy(obj)
        body["apiVersion"], body["kind"] = info.api_version, info.kind
        if body["metadata"].get("resourceVersion"):
            return self._put(info, body, ns, name)

        def attempt() -> Obj:
            body["metadata"]["resourceVersion"] = _rv(self._get_server(info, name, ns))
            return self._put(info, body, ns, name)

        return self._retrying(attempt)

    def update_status(self, obj: Obj) -> Obj:
        info, ns, name = identify(obj)
        wanted = str(obj["metadata"].get("resourceVersion") or "")
        new_status = copy.deepcopy(obj.get("status"))

        def attempt() -> Obj:
            if info.has_status and info.kind not in (POOL, BLOCK_KIND):
                body = copy.deepcopy(obj)
                body["apiVersion"], body["kind"] = info.api_version, info.kind
                body["metadata"]["resourceVersion"] = wanted or _rv(self._get_server(info, name, ns))
                return self._put(info, body, ns, name, "status")
            # Replace only status: start from the stored object.  Pools keep the record-derived fields.
            current = self._get_server(info, name, ns)
            if wanted and wanted != _rv(current):
                self.conflicts += 1
                raise Conflict(
                    f'{info.kind} "{name}": resourceVersion {wanted} is stale (now {_rv(current)}); '
                    "re-read and retry"
                )
            status = new_status
            if info.kind == POOL and is_block_pool(current):
                # records live in the blocks: the count is the leader's to write, allocatedIPs stays out
                status = {k: v for k, v in (status or {}).items() if k != "allocatedIPs"}
            elif info.kind in (POOL, BLOCK_KIND):  # the records and their count belong to the store
                status = {k: v for k, v in (status or {}).items() if k not in _DERIVED}
                for key in _DERIVED:
                    if key in (current.get("status") or {}):
                        status[key] = current["status"][key]
            if status is None:
                current.pop("status", None)
            else:
                current["status"] = status
            return self._put(info, current, ns, name, "status" if info.has_status else "")

        if wanted:
            return attempt()
        return self._retrying(attempt)

    def delete(
        self,
        kind: str,
        name: str,
        namespace: str = "",
        *,
        resource_version: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> None:
        info = kind_info(kind)
        ns = namespace if info.namespaced else ""
        if info.kind == BLOCK_KIND:
            resource_version = self._empty_block_version(name, resource_version)
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        grace = grace_period(info, ns, name, grace_period_seconds)  # only Pods have one
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            out = self.api.request("DELETE", info, namespace=ns, name=name, body=body)
        except Conflict:
            self.conflicts += 1
            raise
        inf = self._informers.get(info.kind)
        held = out.get("kind") == info.kind and (out.get("metadata") or {}).get("deletionTimestamp")
        if held and not _removed(out):
            self._seen(info, out)  # held by finalizers or a pod's grace period: still there, terminating
        elif inf is not None:
            gone = {"metadata": {"namespace": ns, "name": name, "resourceVersion": _rv(out) or "0"}}
            inf.forget(gone)
        if info.kind == POOL:
            with self._lock:
                self._pools.pop(name, None)
        if info.kind == BLOCK_KIND:
            self._book.forget(name)

    def _empty_block_version(self, name: str, resource_version: str | None) -> str:
        """The resourceVersion a SpiderIPBlock's delete is conditional on: it must hold no record (its
        records are allocations: the delete would lose them), as read now; a record written after this
        read moves the resourceVersion, so the delete fails with Conflict."""
        current = self._get_server(kind_info(BLOCK_KIND), name, "")
        if resource_version and resource_version != _rv(current):
            self.conflicts += 1
            raise Conflict(
                f'{BLOCK_KIND} "{name}": resourceVersion {resource_version} is stale (now {_rv(current)})'
            )
        held = len(self._book.records(current).records)
        if held:
            raise Conflict(
                f'{BLOCK_KIND} "{name}": holds {held} allocation(s); a block is returned only when empty'
            )
        return _rv(current)

    def revision(self) -> str:
        doc = self.api.request("GET", kind_info("Namespace"), query=[("limit", "1")])
        return str((doc.get("metadata") or {}).get("resourceVersion") or "0")

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """A no-op: reads come from informer caches or one API request each."""
        return contextlib.nullcontext()

    def watch(
        self,
        kinds: Sequence[str],
        since: str,
        *,
        timeout: float,
        pods_on_node: str = "",
        progress: Callable[[str], None] | None = None,
    ) -> Iterator[WatchEvent]:
        """One watch per kind, merged in revision order.  ``pods_on_node``: the Pod watch asks for
        ``fieldSelector=spec.nodeName=NODE``.  ``progress`` hears the BOOKMARK revisions the streams
        carry (the client asks for them), once every stream is past the revision (module docstring)."""
        infos = [kind_info(k) for k in kinds]
        fields = [
            f"spec.nodeName={pods_on_node}" if pods_on_node and info.kind == "Pod" else "" for info in infos
        ]
        # Open every stream now, so a stale ``since`` raises Gone here, as the embedded store does.
        streams: builtins.list[WatchStream] = []
        try:
            for info, field in zip(infos, fields, strict=True):
                streams.append(self._open_watch(info, since, field))
        except BaseException:
            for s in streams:
                s.close()
            raise
        return self._merge(infos, fields, streams, since, timeout, progress)

    def _open_watch(self, info: KindInfo, since: str, field_selector: str = "") -> WatchStream:
        return self.api.watch(
            info, resource_version=since, field_selector=field_selector, timeout_seconds=300
        )

    def _merge(
        self,
        infos: builtins.list[KindInfo],
        fields: builtins.list[str],
        streams: builtins.list[WatchStream],
        since: str,
        timeout: float,
        progress: Callable[[str], None] | None,
    ) -> Iterator[WatchEvent]:
        """One ordered iterator over one watch stream per kind (a reader thread each).  Readers put
        ("event", i, WatchEvent), ("mark", i, rv) for a BOOKMARK and ("error", i, err) on one queue."""
        events: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        stop = threading.Event()
        current: builtins.list[WatchStream] = list(streams)

        def reader(i: int, info: KindInfo) -> None:
            rv = since
            broken = 0  # consecutive broken streams / failed re-opens
            try:
                while not stop.is_set():
                    try:
                        for ev in current[i]:
                            kind = ev.get("type")
                            obj = ev.get("object") or {}
                            if kind == "ERROR":
                                if obj.get("code") == 410:
                                    raise Gone(
                                        f"{info.kind}: {obj.get('message', 'too old resource version')}"
                                    )
                                raise StoreUnavailable(f"watch of {info.plural}: {obj.get('message', ev)}")
                            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                            broken = 0
                            if kind in ("ADDED", "MODIFIED", "DELETED"):
                                events.put(("event", i, WatchEvent(kind, self._out(info, obj), rv)))
                            elif kind == "BOOKMARK":
                                events.put(("mark", i, rv))
                    except StoreUnavailable:
                        broken += 1
                        if broken > self.retry.steps:
                            raise
                        stop.wait(self.retry.duration * broken)
                    if stop.is_set():
                        return
                    # the stream ended (server timeout, broken connection): resume where it stopped
                    current[i] = self._open_watch(info, rv, fields[i])
            except StoreError as err:
                if not stop.is_set():
                    events.put(("error", i, err))

        threads = [
            threading.Thread(target=reader, args=(i, info), name=f"watch-{info.plural}", daemon=True)
            for i, info in enumerate(infos)
        ]
        for t in threads:
            t.start()
        settle = min(0.02, timeout)
        # how far each stream is known to be, by what was taken off the queue (a stream's items come
        # in order, so everything of stream i up to at[i] has been taken)
        at = [since] * len(infos)
        told = since  # the last revision yielded or reported to ``progress``
        try:
            quiet_until = time.monotonic() + timeout
            while True:
                try:
                    item = events.get(timeout=max(quiet_until - time.monotonic(), 0.0))
                except queue.Empty:
                    return
                batch = [item]
                deadline = time.monotonic() + settle  # let the other streams deliver what came with it
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        batch.append(events.get(timeout=left))
                    except queue.Empty:
                        break
                found: builtins.list[WatchEvent] = []
                for tag, i, value in batch:
                    if tag == "error":
                        raise value
                    if tag == "event":
                        found.append(value)
                        at[i] = value.revision
                    elif _rv_key(value) > _rv_key(at[i]):
                        at[i] = value
                if found:
                    found.sort(key=lambda e: _rv_key(e.revision))
                    yield from found
                    told = max(told, found[-1].revision, key=_rv_key)
                    quiet_until = time.monotonic() + timeout
                reached = min(at, key=_rv_key)
                if progress is not None and _rv_key(reached) > _rv_key(told):
                    told = reached
                    progress(reached)
        finally:
            stop.set()
            for s in current:
                s.close()
            for t in threads:
                t.join(timeout=5)

    # -- AllocationStore ------------------------------------------------------------------------------

    def _remember_pool(self, obj: Obj) -> _PoolState:
        name, rv = obj["metadata"]["name"], _rv(obj)
        with self._lock:
            cached = self._pools.get(name)
            if cached is not None and _rv(cached.obj) == rv:
                return cached
        status = obj.get("status") or {}
        try:
            records = decode_allocated_ips(status.get("allocatedIPs"))
        except ValueError as err:
            raise Invalid(POOL, name, "status.allocatedIPs", str(err)) from None
        allocated = sorted(address_value(ip) for ip in records)
        state = _PoolState(copy.deepcopy(obj), records, PoolUsage(name, rv, tuple(allocated)))
        with self._lock:
            self._pools[name] = state
        return state

    def _pool_from_server(self, pool: str) -> _PoolState:
        info = kind_info(POOL)
        obj = self._get_server(info, pool, "")
        inf = self._informers.get(POOL)
        if inf is not None:
            inf.observe(obj)  # a read from the server is news for the cache too
        return self._remember_pool(obj)

    def _pool_obj(self, pool: str) -> Obj:
        """The pool from the pool informer when it is synced (a block pool's claims are conditional on
        its generation, which moves only with spec changes and deletion), else from the server."""
        inf = self._informers.get(POOL)
        if inf is not None and inf.synced:
            obj = inf.get(pool, "")
            if obj is None:
                raise NotFound(POOL, pool)
            return obj
        return self._pool_from_server(pool).obj

    def _block_objs(self, pool: str | None) -> builtins.list[Obj]:
        """The SpiderIPBlocks of ``pool`` (all of them for None): from the block informer when synced,
        else one list from the server."""
        info = kind_info(BLOCK_KIND)
        inf = self._informers.get(BLOCK_KIND)
        objs = inf.shared() if inf is not None and inf.synced else self._list_server(info, None)
        return [o for o in objs if pool is None or block_pool_of(o) == pool]

    def _block_books(self, pool: str) -> builtins.list[BlockRecords]:
        return [self._book.records(o) for o in self._block_objs(pool)]

    def usage(self, pool: str) -> PoolUsage:
        obj = self._pool_obj(pool)
        if self._book.layout(obj) is None:
            return self._pool_from_server(pool).usage
        return PoolUsage(pool, version_token(obj), self._book.allocated(self._block_books(pool)))

    def records(self, pool: str) -> builtins.list[IPRecord]:
        obj = self._pool_obj(pool)
        if self._book.layout(obj) is None:
            return _records_of(self._pool_from_server(pool))
        return _block_records(pool, self._block_books(pool))

    def records_of_pod(self, namespace: str, name: str) -> builtins.list[IPRecord]:
        pod = f"{namespace}/{name}"
        out: builtins.list[IPRecord] = []
        for obj in self._list_server(kind_info(POOL), None):
            if not is_block_pool(obj):
                out.extend(r for r in _records_of(self._remember_pool(obj)) if r.pod == pod)
        by_pool: dict[str, builtins.list[BlockRecords]] = {}
        for block in self._blocks_of_pod(pod):
            by_pool.setdefault(block_pool_of(block), []).append(self._book.records(block))
        for pool, books in by_pool.items():
            out.extend(r for r in _block_records(pool, books) if r.pod == pod)
        return out

    def _blocks_of_pod(self, pod: str) -> builtins.list[Obj]:
        """The SpiderIPBlocks that may hold records of ``pod``.  With a synced block informer: the
        cached blocks that name it (an index per block version, so no list of every record per ADD),
        each read again from the server (the cache may lag behind a release by another process, e.g.
        the leader's GC; a claim for a pod comes from its node's agent, which is this process, its
        earlier run, listed at sync, or an operator's tool).  Else every block, listed once."""
        info = kind_info(BLOCK_KIND)
        inf = self._informers.get(BLOCK_KIND)
        if inf is None or not inf.synced:
            return self._list_server(info, None)
        out: builtins.list[Obj] = []
        for block in inf.shared():
            try:
                named = pod in self._book.records(block).pods
            except Invalid:
                named = True  # malformed in the cache: let the server's copy say
            if named:
                with contextlib.suppress(NotFound):
                    out.append(self._seen(info, self._get_server(info, str(block["metadata"]["name"]), "")))
        return out

    def commit(
        self,
        *,
        claims: Sequence[Claim] = (),
        releases: Sequence[IPRecord] = (),
        endpoint: Obj | None = None,
        delete_endpoint: tuple[str, str] | None = None,
    ) -> None:
        if endpoint is not None:
            info, _, name = identify(endpoint)
            if info.kind != ENDPOINT:
                raise Invalid(info.kind, name, "kind", f"commit writes only {ENDPOINT}")
        for c in claims:
            if c.pod.count("/") != 1 or not all(c.pod.split("/")):
                raise Invalid(POOL, c.pool, "claim pod", f'{c.pod!r} is not "namespace/name"')
        canon_claims = [(c, _canonical(c.ip, c.pool, "claim ip")) for c in claims]
        canon_releases = [(r, _canonical(r.ip, r.pool, "release ip")) for r in releases]
        pools = list(dict.fromkeys([c.pool for c in claims] + [r.pool for r in releases]))
        for pool in pools:
            pool_claims = [(c, ip) for c, ip in canon_claims if c.pool == pool]
            pool_releases = [(r, ip) for r, ip in canon_releases if r.pool == pool]
            try:
                obj = self._pool_obj(pool)
            except NotFound:
                if pool_claims:
                    raise
                continue  # releases of a pool that is gone: its records went with it
            layout = self._book.layout(obj)
            if layout is None:
                self._commit_pool(pool, pool_claims, pool_releases)
            else:
                self._commit_blocks(obj, layout, pool_claims, pool_releases)
        if endpoint is not None:
            self._write_endpoint(endpoint)
        if delete_endpoint is not None:
            self._delete_endpoint(*delete_endpoint)

    def _commit_pool(
        self,
        pool: str,
        claims: builtins.list[tuple[Claim, str]],
        releases: builtins.list[tuple[IPRecord, str]],
    ) -> None:
        info = kind_info(POOL)
        versions = {c.pool_version for c, _ in claims}
        if len(versions) > 1:
            raise Conflict(f'{POOL} "{pool}": claims read different resourceVersions {sorted(versions)}')

        def attempt() -> Obj:
            state: _PoolState | None = None
            if claims:
                version = claims[0][0].pool_version
                with self._lock:
                    cached = self._pools.get(pool)
                # The pool as read at the caller's version saves a GET; the PUT's precondition is the same.
                if cached is not None and _rv(cached.obj) == version:
                    state = cached
                else:
                    state = self._pool_from_server(pool)
                    if state.usage.resource_version != version:
                        self.conflicts += 1
                        raise _StaleClaim(
                            f'{POOL} "{pool}": resourceVersion {version} is stale '
                            f"(now {state.usage.resource_version}); re-read and retry"
                        )
            else:
                state = self._pool_from_server(pool)
            if claims and (state.obj.get("metadata") or {}).get("deletionTimestamp"):
                raise _StaleClaim(
                    f'{POOL} "{pool}": metadata.deletionTimestamp: the pool is terminating; '
                    "no new IPs are allocated from it"
                )
            records = self._applied(pool, state.records, claims, releases)
            if records is None:
                return state.obj
            if claims and len(records) > self.max_pool_records:
                raise PoolFull(pool, self.max_pool_records)
            body = _with_records(state.obj, render_records(records), len(records))
            try:
                return self._put(info, body, "", pool, "status")
            except Conflict as err:
                if claims:
                    raise _StaleClaim(str(err)) from None
                raise

        try:
            self._retrying(attempt)
        except _StaleClaim as err:
            raise Conflict(str(err)) from None

    def _commit_blocks(
        self,
        pool_obj: Obj,
        layout: tuple[int, int],
        claims: builtins.list[tuple[Claim, str]],
        releases: builtins.list[tuple[IPRecord, str]],
    ) -> None:
        """Claims and releases of a block pool, written block by block into the SpiderIPBlocks that hold
        the addresses.  Claims are conditional on the pool's generation token (``usage``) and on each
        address being free in its block; a 409 on a block (another writer moved it) is retried inside
        against the block as it is now, so only a taken address, a missing block, a changed pool spec
        or a terminating pool reach the caller as Conflict."""
        pool = str(pool_obj["metadata"]["name"])
        if claims:
            versions = {c.pool_version for c, _ in claims}
            if len(versions) > 1:
                raise Conflict(f'{POOL} "{pool}": claims read different versions {sorted(versions)}')
            (version,) = versions
            if version != version_token(pool_obj):
                pool_obj = self._pool_from_server(pool).obj  # the cache may be behind the caller
                if version != version_token(pool_obj):
                    self.conflicts += 1
                    raise Conflict(
                        f'{POOL} "{pool}": metadata.generation moved ({version} is now '
                        f"{version_token(pool_obj)}); re-read and retry"
                    )
            if (pool_obj.get("metadata") or {}).get("deletionTimestamp"):
                raise Conflict(
                    f'{POOL} "{pool}": metadata.deletionTimestamp: the pool is terminating; '
                    "no new IPs are allocated from it"
                )
        family, size = layout
        by_block: dict[str, tuple[builtins.list[tuple[Claim, str]], builtins.list[tuple[IPRecord, str]]]] = {}
        for claim, ip in claims:
            name = block_name_of(pool, _ip_int(ip), family, size)
            by_block.setdefault(name, ([], []))[0].append((claim, ip))
        for rel, ip in releases:
            name = block_name_of(pool, _ip_int(ip), family, size)
            by_block.setdefault(name, ([], []))[1].append((rel, ip))
        for name, (block_claims, block_releases) in by_block.items():
            self._commit_block(pool, name, block_claims, block_releases)

    def _commit_block(
        self,
        pool: str,
        name: str,
        claims: builtins.list[tuple[Claim, str]],
        releases: builtins.list[tuple[IPRecord, str]],
    ) -> None:
        info = kind_info(BLOCK_KIND)
        cached = [True]  # the first attempt may use the informer's copy; a retry reads the server

        def attempt() -> Obj:
            obj: Obj | None = None
            inf = self._informers.get(BLOCK_KIND)
            if cached[0] and inf is not None and inf.synced:
                obj = inf.get(name, "")
            cached[0] = False
            if obj is None:
                try:
                    obj = self._get_server(info, name, "")
                except NotFound:
                    if claims:
                        ip = claims[0][1]
                        raise _StaleClaim(
                            f'{BLOCK_KIND} "{name}": not claimed; {ip} of pool {pool} needs its block first'
                        ) from None
                    return {}
            if block_pool_of(obj) != pool:
                raise _StaleClaim(
                    f'{BLOCK_KIND} "{name}": belongs to pool {block_pool_of(obj)!r}, not {pool}'
                )
            before = self._book.records(obj)
            records = self._applied(pool, before.records, claims, releases)
            if records is None:
                return obj
            after = before.changed(records, [(_ip_int(ip), ip) for _, ip in claims])
            body = _with_records(obj, after.render(), len(records))
            try:
                written = self._put(info, body, "", name, "status")
            except NotFound:
                if claims:
                    raise _StaleClaim(f'{BLOCK_KIND} "{name}": returned while being written') from None
                return {}
            self._book.keep(after, written)
            return written

        try:
            self._retrying(attempt)
        except _StaleClaim as err:
            raise Conflict(str(err)) from None

    def _applied(
        self,
        pool: str,
        held: Mapping[str, PoolIPAllocation],
        claims: Sequence[tuple[Claim, str]],
        releases: Sequence[tuple[IPRecord, str]],
    ) -> dict[str, PoolIPAllocation] | None:
        """``held`` after the releases (same pod UID only), then the claims; None when nothing changed.
        A claim of an address recorded here or in another pool raises _StaleClaim."""
        records = dict(held)
        changed = False
        for rel, ip in releases:
            record = records.get(ip)
            if record is not None and record.pod_uid == rel.pod_uid:
                del records[ip]
                changed = True
        for claim, ip in claims:
            record = records.get(ip)
            if record is not None:
                raise _StaleClaim(f'{POOL} "{pool}": {ip} is already allocated (pod {record.pod})')
            other = self._holder_elsewhere(ip, pool)
            if other is not None:
                raise _StaleClaim(f'{POOL} "{pool}": {ip} is already allocated (pool {other})')
            records[ip] = PoolIPAllocation(claim.pod, claim.pod_uid)
            changed = True
        return records if changed else None

    def _holder_elsewhere(self, ip: str, pool: str) -> str | None:
        """Another pool recording ``ip``: from the pool informer when there is one, else a list from the
        server.  Best effort (Kubernetes has no transaction across objects): what really rules it out is
        the admission check that pools of one subnet never share IPs."""
        inf = self._informers.get(POOL)
        pools = inf.list() if inf is not None and inf.synced else self._list_server(kind_info(POOL), None)
        for obj in pools:
            name = obj["metadata"]["name"]
            if name != pool and not is_block_pool(obj) and ip in self._remember_pool(obj).records:
                return str(name)
        for block in self._block_objs(None):  # the records of block pools (parsed once per version)
            owner = block_pool_of(block)
            if owner != pool:
                with contextlib.suppress(Invalid):
                    if ip in self._book.records(block).records:
                        return owner
        return None

    def _write_endpoint(self, endpoint: Obj) -> None:
        info, ns, name = identify(endpoint)
        body = copy.deepcopy(endpoint)
        body["apiVersion"], body["kind"] = info.api_version, info.kind
        if body["metadata"].get("resourceVersion"):
            try:
                self._put(info, body, ns, name)
            except NotFound:
                raise Conflict(
                    f'{ENDPOINT} "{ns}/{name}": resourceVersion {_rv(body)} is stale (the object is gone)'
                ) from None
            return
        try:
            self.create(body)
            return
        except AlreadyExists:
            pass

        def attempt() -> Obj:
            body["metadata"]["resourceVersion"] = _rv(self._get_server(info, name, ns))
            return self._put(info, body, ns, name)

        self._retrying(attempt)

    def _delete_endpoint(self, namespace: str, name: str) -> None:
        info = kind_info(ENDPOINT)

        def attempt() -> Obj:
            current = self._get_server(info, name, namespace)
            finalizers = current["metadata"].get("finalizers") or []
            if FINALIZER in finalizers:  # the IPs are released: let it go, as Spiderpool's agent does
                current["metadata"]["finalizers"] = [f for f in finalizers if f != FINALIZER]
                current = self._put(info, current, namespace, name)
            if not current["metadata"].get("deletionTimestamp"):
                self.delete(ENDPOINT, name, namespace, resource_version=_rv(current))
            return current

        with contextlib.suppress(NotFound):
            self._retrying(attempt)


class _StaleClaim(Conflict):
    """A claim's precondition failed: not retried inside the store (the caller must re-read)."""


def _removed(obj: Obj) -> bool:
    """An object as the API server returns it from the write that removed it: terminating, with no
    finalizer left and no pod grace period pending (a held or graceful one is still there)."""
    meta = obj.get("metadata") or {}
    return (
        bool(meta.get("deletionTimestamp"))
        and not meta.get("finalizers")
        and not meta.get("deletionGracePeriodSeconds")
    )


def _with_records(obj: Obj, text: str | None, count: int) -> Obj:
    """A copy of a pool or block whose status holds these records (``allocatedIPs`` absent when none)."""
    body = copy.deepcopy(obj)
    status = body.setdefault("status", {})
    if text is None:
        status.pop("allocatedIPs", None)
    else:
        status["allocatedIPs"] = text
    status["allocatedIPCount"] = count
    return body


def _ip_int(ip: str) -> int:
    return address_value(ip)


def _rv_key(rv: str) -> tuple[int, str]:
    try:
        return (int(rv), "")
    except ValueError:
        return (0, rv)


def _block_records(pool: str, books: Sequence[BlockRecords]) -> builtins.list[IPRecord]:
    out = [IPRecord(pool, ip, rec.pod, rec.pod_uid) for book in books for ip, rec in book.records.items()]
    out.sort(key=lambda r: _ip_int(r.ip))
    return out


def _records_of(state: _PoolState) -> builtins.list[IPRecord]:
    pool = state.obj["metadata"]["name"]
    ordered = sorted(state.records.items(), key=lambda kv: _ip_int(kv[0]))
    return [IPRecord(pool, ip, rec.pod, rec.pod_uid) for ip, rec in ordered]
