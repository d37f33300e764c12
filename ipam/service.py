"""The allocation path: CNI ADD / DEL / CHECK / GC turned into store reads, pure decisions and one commit.

Everything that decides is pure (``selection``, ``allocator``, ``workload``); this module only reads the
store, calls those functions and commits the result, retrying a bounded number of times on Conflict
and re-reading before every attempt (Spiderpool's ``RetryOnConflict`` over an uncached read).  Inside
one process a lock per pool serialises allocations from the same pool (Spiderpool's ticket limiter),
so conflicts only come from other processes or nodes.

The store and this service are synchronous.  With a store that has group commit the agent makes ADD,
DEL and CHECK on its event loop first, several at a time in ``grouped`` mode (one transaction, no pool
locks, WouldBlock instead of any wait), and from its thread pool the calls that would wait.

Over 600 lines on purpose: one class whose ADD, DEL, CHECK and CNI GC share one retry discipline
(``_retrying``), one locking discipline (pool locks, or none in ``grouped`` mode) and the caches of parsed
pools and candidate selections; every decision is already a pure function elsewhere (``selection``,
``allocator``, ``workload``), and splitting the remaining store choreography would scatter one ADD.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import netaddr

from ipam import annotations as an
from ipam import blocks, selection
from ipam.allocator import free_intervals, lowest_free
from ipam.autopool import is_auto_pool
from ipam.block_claims import claim_block, list_blocks
from ipam.block_default import BlockSizeDefaults, stamp_default_block_size
from ipam.errors import AllocationError, AllocationReason, Conflict, NotFound, PoolFull, WouldBlock
from ipam.model import FINALIZER, Endpoint, IPPool, NicAllocation, ReservedIP, Route, reserved_set
from ipam.ranges import IntervalSet, int_to_ip
from ipam.records import Claim, IPRecord, Obj
from ipam.store.protocol import Store
from ipam.workload import (
    PodInfo,
    TopController,
    is_pod_alive,
    is_valid_statefulset_pod,
    resolve_top_controller,
)

__all__ = [
    "AllocateRequest",
    "AllocatedIP",
    "Allocation",
    "IpamService",
    "IpamSettings",
    "ReleaseRequest",
    "Released",
    "RouteSpec",
]

NETWORK_ANNOTATION = "spiderbgp.io/network"
LOG = logging.getLogger("spiderbgp.ipam")
_SELECTIONS_KEPT = 512  # candidate selections remembered (all forgotten at once when full)
_BLOCKS_KEPT_SECONDS = 5.0  # how long a pool's claimed blocks are used before they are listed again
_BLOCK_CLAIM_TRIES = 3  # block claims one pick may lose to other nodes before the allocation retries


@dataclass(frozen=True)
class IpamSettings:
    enable_ipv4: bool = True
    enable_ipv6: bool = True
    enable_statefulset: bool = True
    conflict_retries: int = 5
    backoff_seconds: float = 0.01  # first retry delay; grows 1.5x, with jitter (Spiderpool's DefaultRetry)
    block_size: BlockSizeDefaults = field(default_factory=BlockSizeDefaults)  # ipam.blockSize


@dataclass(frozen=True)
class AllocateRequest:
    container_id: str
    nic: str
    pod_namespace: str
    pod_name: str
    pod_uid: str = ""  # K8S_POD_UID when the runtime sends it
    netns: str = ""
    default_v4_pools: tuple[str, ...] = ()
    default_v6_pools: tuple[str, ...] = ()
    clean_gateway: bool | None = None
    network: str = ""  # the CNI network name, kept on the endpoint so CNI GC stays within its network


@dataclass(frozen=True)
class AllocatedIP:
    nic: str
    version: int
    ip: str
    prefix_len: int
    subnet: str
    pool: str
    gateway: str | None = None

    @property
    def address(self) -> str:
        return f"{self.ip}/{self.prefix_len}"


@dataclass(frozen=True)
class RouteSpec:
    nic: str
    dst: str
    gw: str


@dataclass(frozen=True)
class Allocation:
    pod: str  # "namespace/name"
    pod_uid: str
    node: str
    ips: tuple[AllocatedIP, ...]
    routes: tuple[RouteSpec, ...]
    new: bool  # False when an existing allocation was returned (repeated ADD, StatefulSet restart)


@dataclass(frozen=True)
class ReleaseRequest:
    container_id: str
    nic: str
    pod_namespace: str
    pod_name: str
    pod_uid: str = ""


@dataclass(frozen=True)
class Released:
    records: tuple[IPRecord, ...] = ()
    kept_reason: str = ""  # why nothing was released, when nothing was
    node: str = ""


@dataclass
class _Locks:
    """One lock per pool name; a request takes the locks of all pools it may touch, in sorted order."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    by_pool: dict[str, threading.Lock] = field(default_factory=dict)

    def _acquire(self, name: str) -> threading.Lock:
        with self.guard:
            lock = self.by_pool.setdefault(name, threading.Lock())
        lock.acquire()
        return lock

    @contextmanager
    def hold(self, pools: Sequence[str]) -> Iterator[None]:
        if len(pools) == 1:  # the usual case, without an ExitStack
            lock = self._acquire(pools[0])
            try:
                yield
            finally:
                lock.release()
            return
        with ExitStack() as stack:
            for name in sorted(set(pools)):
                stack.callback(self._acquire(name).release)
            yield


def _subnet_of(cidr: str) -> str:
    """The network of ``address/prefix`` (``10.6.0.5/16`` -> ``10.6.0.0/16``).  IPv4, on every ADD,
    by integer masking (about 1 us against netaddr's 5 us); IPv6 through netaddr."""
    ip, _, prefix = cidr.partition("/")
    bits = int(prefix)
    if ":" in ip or not 0 <= bits <= 32:
        return str(netaddr.IPNetwork(cidr).cidr)
    value = int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    value &= (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    return f"{socket.inet_ntop(socket.AF_INET, value.to_bytes(4, 'big'))}/{bits}"


def _pools_of(endpoint: Endpoint) -> list[str]:
    return [p for n in endpoint.ips for p in (n.ipv4_pool, n.ipv6_pool) if p]


def _ip_of(cidr: str | None) -> str | None:
    return cidr.partition("/")[0] if cidr else None


class IpamService:
    def __init__(
        self,
        store: Store,
        *,
        node_name: str,
        settings: IpamSettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        on_conflict: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._clock = clock
        self._blocks: dict[str, tuple[float, dict[int, str]]] = {}  # see _claimed
        self._parsed_blocks: dict[str, blocks.Block] = {}  # name -> block as last parsed (list_blocks)
        # pool -> (claimed-blocks map, block size, this node's blocks joined): see _pick_block
        self._own_blocks: dict[str, tuple[dict[int, str], int, IntervalSet]] = {}
        self.node_name = node_name
        self.settings = settings or IpamSettings()
        self._sleep = sleep
        self._rand = rand
        self._on_conflict = on_conflict
        self._locks = _Locks()
        self._group = store.group_commit()
        self._thread = threading.local()  # .grouped: inside grouped() on this thread
        self._parsed: dict[str, tuple[tuple[dict[str, Any], Any], IPPool]] = {}
        self._free_cache: dict[str, tuple[IPPool, IntervalSet, IntervalSet]] = {}
        self._selections: dict[tuple[Any, ...], tuple[tuple[IPPool, ...], selection.Selection]] = {}

    @property
    def can_group(self) -> bool:
        """Whether the store has group commit (``ipam.store.protocol.GroupCommit``), so ``grouped`` can be used."""
        return self._group is not None

    @contextmanager
    def grouped(self, wait: float = 0.0) -> Iterator[None]:
        """Group-commit mode: the calls this thread makes inside the block share one store transaction
        (``GroupCommit.batch``) and never wait.  Taking the store's writer lock may wait ``wait``
        seconds; a call that would wait otherwise (for the back-off before a retry) raises WouldBlock
        having written nothing, and can be made again outside the block.  The calls take no pool locks:
        the writer lock, held throughout, keeps every other writer out, and a thread of this process
        that read a pool before is refused by the pool's version when it commits (and retries).
        Waiting for a pool lock here could deadlock: its holder may be waiting for the writer lock."""
        if self._group is None:
            raise TypeError(f"{type(self.store).__name__} has no group commit")
        with self._group.batch(wait=wait):
            before = getattr(self._thread, "grouped", False)
            self._thread.grouped = True
            try:
                yield
            finally:
                self._thread.grouped = before

    def _hold(self, pools: Sequence[str]) -> AbstractContextManager[None]:
        if getattr(self._thread, "grouped", False):
            return nullcontext()
        return self._locks.hold(pools)

    # -- reads ------------------------------------------------------------------------------------

    def _get(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        try:
            return self.store.get(kind, name, namespace)
        except NotFound:
            return None

    def _get_owner(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._get(kind, name, namespace)

    def _endpoint(self, namespace: str, name: str) -> Endpoint | None:
        obj = self._get("SpiderEndpoint", name, namespace)
        return Endpoint.from_obj(obj) if obj is not None else None

    def _retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        delay = self.settings.backoff_seconds
        for tries in range(self.settings.conflict_retries):
            try:
                return attempt()
            except Conflict:
                self._on_conflict()
                if tries + 1 == self.settings.conflict_retries:
                    break
                if getattr(self._thread, "grouped", False):
                    raise WouldBlock(f"{what}: the store changed; retrying after a back-off") from None
                self._sleep(delay * (1.0 + 0.1 * self._rand()))
                delay *= 1.5
        raise AllocationError(
            f"{what}: the store kept changing under {self.settings.conflict_retries} attempts; try again",
            reason=AllocationReason.CONFLICT,
        )

    # -- ADD --------------------------------------------------------------------------------------

    def allocate(self, req: AllocateRequest) -> Allocation:
        """Give the pod's interface its addresses, idempotently; durable when this returns."""
        key = f"{req.pod_namespace}/{req.pod_name}"
        pod_obj = self._get("Pod", req.pod_name, req.pod_namespace)
        if pod_obj is None:
            raise AllocationError(f"pod {key} not found in the store", reason=AllocationReason.POD_NOT_FOUND)
        pod = PodInfo.from_obj(pod_obj)
        if req.pod_uid and pod.uid != req.pod_uid:
            raise AllocationError(
                f"pod {key} has UID {pod.uid}, the runtime asked for UID {req.pod_uid}: "
                "the pod was deleted and re-created",
                reason=AllocationReason.UID_MISMATCH,
            )
        if not is_pod_alive(pod):
            raise AllocationError(
                f"pod {key} is terminating or finished: no IP is allocated to a dead pod",
                reason=AllocationReason.POD_DEAD,
            )
        top = resolve_top_controller(pod, self._get_owner)
        result: Allocation = self._retrying(
            f"allocate {key} {req.nic}", lambda: self._allocate_once(req, pod, top)
        )
        return result

    def _allocate_once(self, req: AllocateRequest, pod: PodInfo, top: TopController) -> Allocation:
        """One attempt.  Reads before the pool lock share one store snapshot, reads after it another
        (fresh once the lock is held, so a commit of another thread of this process is seen)."""
        with self.store.snapshot():
            endpoint = self._endpoint(pod.namespace, pod.name)
            static = (
                self.settings.enable_statefulset
                and top.kind == "StatefulSet"
                and top.api_version == "apps/v1"
            )
            releases: list[IPRecord] = []
            if endpoint is not None:
                held = endpoint.nic(req.nic)
                unnamed = endpoint.nic("") if held is None and endpoint.uid == pod.uid else None
                if unnamed is not None:
                    # a later NIC of a no-name ippools annotation: its entry was allocated by the first ADD
                    with self._hold(_pools_of(endpoint)):
                        return self._name_nic(req, pod, endpoint, unnamed)
                if held is not None and (endpoint.uid == pod.uid or static):
                    pools = _pools_of(endpoint)
                    if static and not self._still_candidates(req, pod, top, held):
                        # the StatefulSet's pool choice changed (Spiderpool #3543): give the old IPs back
                        releases = self._endpoint_records(endpoint)
                        endpoint = None
                    else:
                        with self._hold(pools):
                            return self._retrieve(req, pod, top, endpoint, held)
                elif endpoint.uid != pod.uid:
                    # a pod of the same name that is gone (Spiderpool #4916): its IPs go back in this commit
                    releases = self._endpoint_records(endpoint)
                    endpoint = None
            sel, pools_read = self._select(req, pod, top)
        nic = sel.nic(req.nic)
        if nic is None:
            raise AllocationError(
                f"pod {pod.key}: no pool selection for interface {req.nic}", reason=AllocationReason.NO_POOL
            )
        nics = [nic]
        if sel.source == "ippools":
            # Spiderpool §3.10: the first ADD allocates every NIC the annotation lists; later ADDs of
            # the pod's other NICs find their entry in the SpiderEndpoint
            nics += [
                n for n in sel.nics if n is not nic and (endpoint is None or endpoint.nic(n.nic) is None)
            ]
        full: set[str] = set()
        pools = [p for n in nics for fam in n.families for p in fam.pools]
        with self._hold(pools), self.store.snapshot():
            while True:
                try:
                    return self._allocate_new(req, pod, top, sel, nics, endpoint, releases, pools_read, full)
                except PoolFull as exc:
                    # the store cannot record more in that pool (Kubernetes' per-object limit): next one
                    if exc.pool in full:
                        raise
                    full.add(exc.pool)

    def _endpoint_records(self, endpoint: Endpoint) -> list[IPRecord]:
        key = f"{endpoint.namespace}/{endpoint.name}"
        out: list[IPRecord] = []
        for nic in endpoint.ips:
            for pool, cidr in ((nic.ipv4_pool, nic.ipv4), (nic.ipv6_pool, nic.ipv6)):
                ip = _ip_of(cidr)
                if pool and ip:
                    out.append(IPRecord(pool=pool, ip=ip, pod=key, pod_uid=endpoint.uid))
        return out

    def _pool(self, obj: Obj) -> tuple[IPPool, str]:
        """A pool and its current resourceVersion.  The parse is reused while nothing but the version
        and status changed (every claim bumps the version; parsing ranges on every ADD would cost more
        than the claim), so the pool's own ``resource_version`` may be older: use the one returned."""
        meta = obj["metadata"]
        # what claims in this pool are conditional on (ipam.store.protocol): the resourceVersion, or a
        # block pool's generation token (its records, and their writes, are in its blocks)
        version = (
            blocks.version_token(obj) if blocks.is_block_pool(obj) else str(meta.get("resourceVersion") or "")
        )
        # compared as plain data (dict equality runs in C); the store hands out fresh objects, so the
        # key kept here is never changed under us
        key = ({k: v for k, v in meta.items() if k != "resourceVersion"}, obj.get("spec"))
        cached = self._parsed.get(meta["name"])
        if cached is not None and cached[0] == key:
            return cached[1], version
        pool = IPPool.from_obj(obj)
        self._parsed[meta["name"]] = (key, pool)
        return pool, version

    def _free(self, pool: IPPool, reserved: IntervalSet) -> IntervalSet:
        """``free_intervals`` of a pool, reused while the parsed pool (see ``_pool``) and the reserved
        set are the same."""
        cached = self._free_cache.get(pool.name)
        if cached is not None and cached[0] is pool and cached[1] == reserved:
            return cached[2]
        free = free_intervals(pool, reserved)
        self._free_cache[pool.name] = (pool, reserved, free)
        return free

    def _select(
        self, req: AllocateRequest, pod: PodInfo, top: TopController
    ) -> tuple[selection.Selection, dict[str, tuple[IPPool, str]]]:
        """The candidates, and every pool as read for them (the pick re-reads only a pool that changed).

        A selection is a pure function of the request, the pod's namespace, node, labels and
        annotations, its controller, the namespace's and (when a pool has a nodeAffinity) the node's
        labels, and the parsed pools; it is kept for the next pod with the same inputs (the replicas of
        a Deployment share all of them).  Pools are part of the key by identity: ``_pool`` hands out the
        same object while a pool's spec and metadata stay the same, and the entry keeps them alive."""
        read = [self._pool(o) for o in self.store.list("SpiderIPPool", allocated_ips=False)]
        pools = tuple(p for p, _ in read)
        namespace = (self._get("Namespace", pod.namespace, "") or {}).get("metadata") or {}
        ns_annotations = namespace.get("annotations") or {}
        ns_labels = namespace.get("labels") or {}
        node_labels: Mapping[str, str] = {}
        if pod.node_name and any(p.node_affinity is not None for p in pools):
            node = self._get("Node", pod.node_name, "") or {}
            node_labels = (node.get("metadata") or {}).get("labels") or {}
        key = (
            req.nic,
            req.default_v4_pools,
            req.default_v6_pools,
            bool(req.clean_gateway),
            pod.namespace,
            pod.node_name,
            frozenset(pod.labels.items()),
            frozenset(pod.annotations.items()),
            # the controller matters only to auto pools and subnet annotations (an orphan pod is its own
            # controller: keyed by it, no two orphan pods would share a selection)
            top
            if an.ANNO_SUBNETS in pod.annotations
            or an.ANNO_SUBNET in pod.annotations
            or any(map(is_auto_pool, pools))
            else top.orphan,
            tuple(map(id, pools)),
            frozenset(ns_annotations.items()),
            frozenset(ns_labels.items()),
            frozenset(node_labels.items()),
        )
        cached = self._selections.get(key)
        if cached is not None:
            sel = cached[1]
        else:
            sel = selection.candidates(
                pod,
                req.nic,
                namespace_annotations=ns_annotations,
                namespace_labels=ns_labels,
                node_labels=node_labels,
                cni_default_v4=req.default_v4_pools,
                cni_default_v6=req.default_v6_pools,
                pools=pools,
                top_controller=top,
                enable_v4=self.settings.enable_ipv4,
                enable_v6=self.settings.enable_ipv6,
                clean_gateway=bool(req.clean_gateway),
            )
            if len(self._selections) >= _SELECTIONS_KEPT:
                self._selections.clear()
            self._selections[key] = (pools, sel)
        return sel, {p.name: (p, version) for p, version in read}

    def _still_candidates(
        self, req: AllocateRequest, pod: PodInfo, top: TopController, held: NicAllocation
    ) -> bool:
        try:
            sel, _ = self._select(req, pod, top)
        except AllocationError:
            return True  # keep the fixed IP when selection itself cannot be evaluated right now
        nic = sel.nic(req.nic)
        for family, pool in ((4, held.ipv4_pool), (6, held.ipv6_pool)):
            fam = nic.family(family) if nic is not None else None
            if pool and (fam is None or pool not in fam.pools):
                return False
        return True

    def _reserved(self, family: int) -> IntervalSet:
        reserved = [ReservedIP.from_obj(o) for o in self.store.list("SpiderReservedIP")]
        return reserved_set(reserved, family)

    def _pick(
        self,
        pool_name: str,
        family: int,
        pod: PodInfo,
        *,
        known: tuple[IPPool, str] | None,
        held: Sequence[IPRecord],
        reserved: IntervalSet,
    ) -> tuple[IPPool, str, str, bool]:
        """(pool, ip, pool_version, existing): the pod's existing record in this pool, else the lowest
        free IP.  Raises AllocationError (not retryable by itself) when the pool has nothing free.

        The pool as read for selection is used when its resourceVersion is still the one ``usage``
        reports; otherwise it is read again (without its records: only spec and version are needed)."""
        usage = self.store.usage(pool_name)
        if not usage.allocated and self.settings.block_size.of(family) is not None:
            # ipam.blockSize: an unannotated pool that holds nothing yet gets the default written onto
            # it, so every reader (kubectl included) sees what it is before its first record
            obj = self.store.get("SpiderIPPool", pool_name, allocated_ips=False)
            obj = stamp_default_block_size(self.store, obj, self.settings.block_size)
            known, usage = self._pool(obj), self.store.usage(pool_name)
        for _ in range(3):
            if known is not None and known[1] == usage.resource_version:
                break
            known = self._pool(self.store.get("SpiderIPPool", pool_name, allocated_ips=False))
            usage = self.store.usage(pool_name)
        else:
            raise Conflict(f'SpiderIPPool "{pool_name}" is changing')
        assert known is not None
        pool = known[0]
        if pool.terminating:
            raise AllocationError("terminating", reason=AllocationReason.NO_POOL)
        if pool.disable:
            raise AllocationError("disabled", reason=AllocationReason.NO_POOL)
        # Spiderpool #4295: a pod UID never holds two IPs of one pool
        for record in held:
            if record.pool == pool_name and record.pod_uid == pod.uid:
                return pool, record.ip, usage.resource_version, True
        size = blocks.block_size_of(pool)  # None for a plain pool: no block code runs for it
        if size is None:
            value = lowest_free(self._free(pool, reserved), usage.allocated)
        else:
            value = self._pick_in_blocks(pool, size, self._free(pool, reserved), usage.allocated)
        if value is None:
            raise AllocationError("all IP addresses used out", reason=AllocationReason.EXHAUSTED)
        return pool, int_to_ip(value, family), usage.resource_version, False

    def _claimed(self, pool: str, *, refresh: bool) -> tuple[dict[int, str], bool]:
        """Block start -> node of the pool's claimed blocks, and whether that was read just now.  The
        map is kept for ``_BLOCKS_KEPT_SECONDS`` (listing every block on every ADD would cost O(all
        records), the blocks' statuses included); a stale map is safe: a claim it misses is refused
        by create-if-absent, and an address taken in a block returned meanwhile is a borrowed one."""
        now = self._clock()
        cached = self._blocks.get(pool)
        if not refresh and cached is not None and now - cached[0] < _BLOCKS_KEPT_SECONDS:
            return cached[1], False
        by_pool: dict[str, dict[int, str]] = {pool: {}}
        for block in list_blocks(self.store, self._parsed_blocks):
            by_pool.setdefault(block.pool, {})[block.start] = block.node
        for name, claimed in by_pool.items():
            self._blocks[name] = (now, claimed)
        return by_pool[pool], True

    def _pick_block(
        self, pool: IPPool, size: int, free: IntervalSet, allocated: Sequence[int], claimed: dict[int, str]
    ) -> blocks.BlockPick | None:
        """``blocks.pick`` with this node's blocks joined once per claimed-blocks map (maps are
        replaced, never changed, so the map's identity says the union is still right)."""
        cached = self._own_blocks.get(pool.name)
        if cached is not None and cached[0] is claimed and cached[1] == size:
            own = cached[2]
        else:
            own = blocks.own_blocks(claimed, self.node_name, family=pool.ip_version, size=size)
            self._own_blocks[pool.name] = (claimed, size, own)
        return blocks.pick(
            free, allocated, claimed, self.node_name, family=pool.ip_version, size=size, own=own
        )

    def _pick_in_blocks(
        self, pool: IPPool, size: int, free: IntervalSet, allocated: Sequence[int]
    ) -> int | None:
        """The address this node takes from a block pool (``blocks.pick``), claiming a block first
        when the pick needs one.  A pick that would claim or borrow is made again on the blocks as
        stored now.  A block claim lost to another node (nodes starting together all pick the lowest
        empty block) lists the blocks again and picks again, up to ``_BLOCK_CLAIM_TRIES`` times, before
        the Conflict reaches the allocation's retry: only the block map changed, so nothing else needs
        reading again."""
        claimed, fresh = self._claimed(pool.name, refresh=False)
        choice = self._pick_block(pool, size, free, allocated, claimed)
        for tries in range(1, _BLOCK_CLAIM_TRIES + 1):
            if choice is not None and not fresh and (choice.claim is not None or choice.borrowed):
                claimed, fresh = self._claimed(pool.name, refresh=True)
                choice = self._pick_block(pool, size, free, allocated, claimed)
            if choice is None:
                return None
            if choice.claim is None:
                return choice.value
            # listed again at the next pick if the claim fails (the maps are shared by threads: never
            # changed, replaced); a claim made extends the map just listed, whose age it keeps
            listed = self._blocks.pop(pool.name, None)
            try:
                claim_block(self.store, pool, choice.claim, size, self.node_name)
                if listed is not None and listed[1] is claimed:
                    self._blocks[pool.name] = (listed[0], {**claimed, choice.claim: self.node_name})
                return choice.value
            except Conflict:
                if tries == _BLOCK_CLAIM_TRIES:
                    raise
                fresh = False  # make the pick again on the blocks as stored now
        raise AssertionError("unreachable")  # the loop returns or raises

    def _commit_records(
        self,
        *,
        claims: Sequence[Claim] = (),
        releases: Sequence[IPRecord] = (),
        endpoint: Obj | None = None,
        delete_endpoint: tuple[str, str] | None = None,
    ) -> None:
        """``store.commit``.  A Conflict forgets the claimed-blocks maps of the pools claimed in: the
        claim may have met a block returned under a stale map (ipam.store.protocol: a block pool's
        address needs its block), and the retry's pick must see the blocks as stored now."""
        try:
            self.store.commit(
                claims=claims, releases=releases, endpoint=endpoint, delete_endpoint=delete_endpoint
            )
        except Conflict:
            for pool in {c.pool for c in claims}:
                self._blocks.pop(pool, None)
            raise

    def _allocate_new(
        self,
        req: AllocateRequest,
        pod: PodInfo,
        top: TopController,
        sel: selection.Selection,
        nics: Sequence[selection.NicCandidates],
        endpoint: Endpoint | None,
        releases: list[IPRecord],
        pools_read: dict[str, tuple[IPPool, str]],
        full: set[str],
    ) -> Allocation:
        """Allocate ``nics`` (the first is the CNI call's own) in one commit; the answer is the first's."""
        claims: list[Claim] = []
        # the pod's records, and the claims of this commit as they are made: a pod UID never holds two
        # IPs of one pool (Spiderpool #4295), so two NICs naming one pool share its address, as there
        held: list[IPRecord] = list(self.store.records_of_pod(pod.namespace, pod.name))
        parsed = an.parse_pod_annotations(pod.key, pod.annotations, nic=req.nic)
        unnamed = parsed.ippools is not None and not parsed.ippools.items[0].interface
        entries: list[NicAllocation] = []
        for nic in nics:
            chosen: list[tuple[int, IPPool, str]] = []
            for fam in nic.families:
                pool, ip, version, existing = self._pick_of_family(
                    req, pod, sel, nic, fam, pools_read, held, full
                )
                if not existing:
                    claims.append(
                        Claim(pool=pool.name, pool_version=version, ip=ip, pod=pod.key, pod_uid=pod.uid)
                    )
                    held.append(IPRecord(pool=pool.name, ip=ip, pod=pod.key, pod_uid=pod.uid))
                chosen.append((fam.family, pool, ip))
            # in the no-name form only the calling NIC has a name yet; each later ADD names one entry
            name = "" if unnamed and nic is not nics[0] else nic.nic
            entries.append(self._nic_allocation(name, chosen, nic.clean_gateway, parsed.routes))
        names = {e.interface for e in entries if e.interface}
        others = tuple(n for n in (endpoint.ips if endpoint else ()) if n.interface not in names)
        new_endpoint = Endpoint(
            namespace=pod.namespace,
            name=pod.name,
            uid=pod.uid,
            node=pod.node_name,
            ips=(*others, *entries),
            owner_controller_type=top.kind,
            owner_controller_name=top.name,
            container_id=req.container_id,
            resource_version=endpoint.resource_version if endpoint else "",
            owner_references=() if top.kind == "StatefulSet" else (self._pod_owner_ref(pod),),
            # as Spiderpool's: the garbage collector deletes the endpoint with its pod, and the
            # finalizer keeps it (terminating) until the CNI DEL or the IP GC releases its IPs
            finalizers=(FINALIZER,),
            annotations={NETWORK_ANNOTATION: req.network} if req.network else {},
        )
        self._commit_records(claims=claims, releases=releases, endpoint=new_endpoint.to_obj())
        return self._result(pod, entries[0], new=True)

    def _pick_of_family(
        self,
        req: AllocateRequest,
        pod: PodInfo,
        sel: selection.Selection,
        nic: selection.NicCandidates,
        fam: selection.FamilyCandidates,
        pools_read: dict[str, tuple[IPPool, str]],
        held: Sequence[IPRecord],
        full: set[str],
    ) -> tuple[IPPool, str, str, bool]:
        """The first of the family's candidate pools that yields an address (see ``_pick``); an
        AllocationError naming the NIC and every pool's reason when none does."""
        errors: dict[str, str] = {}
        exhausted = False
        reserved = self._reserved(fam.family)
        for pool_name in fam.pools:
            if pool_name in full:
                errors[pool_name] = "holds the most records one pool can hold in this store"
                continue
            try:
                return self._pick(
                    pool_name, fam.family, pod, known=pools_read.get(pool_name), held=held, reserved=reserved
                )
            except AllocationError as exc:
                errors[pool_name] = str(exc)
                exhausted = exhausted or exc.reason is AllocationReason.EXHAUSTED
            except NotFound:
                errors[pool_name] = "not found"
        message = selection.describe_failure(fam.family, nic.nic, sel, errors)
        if exhausted and sel.source == "subnet":
            # an auto pool is sized by the leader's SpiderSubnet controller after the workload
            # scales; like Spiderpool's agent, wait for it (the runtime retries code 11)
            raise AllocationError(
                f"{message} (waiting for the SpiderSubnet controller to grow it)",
                reason=AllocationReason.AWAITING_POOL,
            )
        raise AllocationError(
            message, reason=AllocationReason.EXHAUSTED if exhausted else AllocationReason.NO_POOL
        )

    def _name_nic(
        self, req: AllocateRequest, pod: PodInfo, endpoint: Endpoint, entry: NicAllocation
    ) -> Allocation:
        """Give the first unnamed entry of a no-name ``ippools`` endpoint this call's NIC name."""
        named = replace(entry, interface=req.nic)
        ips = list(endpoint.ips)
        ips[ips.index(entry)] = named
        updated = replace(endpoint, ips=tuple(ips), node=pod.node_name, container_id=req.container_id)
        self.store.commit(endpoint=updated.to_obj())
        return self._result(pod, named, new=False)

    @staticmethod
    def _pod_owner_ref(pod: PodInfo) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid}

    @staticmethod
    def _nic_allocation(
        nic: str,
        chosen: Sequence[tuple[int, IPPool, str]],
        clean_gateway: bool,
        annotation_routes: Sequence[an.AnnotationRoute],
    ) -> NicAllocation:
        """The endpoint entry: addresses, pools, gateways, and every route but the default ones (those
        follow from the gateway and cleanGateway, so a retrieved allocation rebuilds the same result)."""
        fields: dict[str, Any] = {"interface": nic, "clean_gateway": clean_gateway}
        routes: list[Route] = []
        for family, pool, ip in chosen:
            prefix = "ipv4" if family == 4 else "ipv6"
            fields[prefix] = f"{ip}/{pool.prefix_len}"
            fields[f"{prefix}_pool"] = pool.name
            fields[f"{prefix}_gateway"] = pool.gateway
            for route in selection.response_routes(pool, nic, True, annotation_routes):
                routes.append(Route(dst=route.dst, gw=route.gw))
        return NicAllocation(**fields, routes=tuple(routes))

    def _retrieve(
        self, req: AllocateRequest, pod: PodInfo, top: TopController, endpoint: Endpoint, held: NicAllocation
    ) -> Allocation:
        """A repeated ADD (same UID) or a StatefulSet pod re-created under its old name: the same IPs."""
        claims: list[Claim] = []
        releases: list[IPRecord] = []
        if endpoint.uid != pod.uid:
            # hand the records of EVERY interface from the old pod UID to the new one in one commit:
            # a record left under the old UID would be reclaimed by the IP GC while the endpoint keeps it
            for record in dict.fromkeys(self._endpoint_records(endpoint)):
                version = self.store.usage(record.pool).resource_version
                releases.append(record)
                claims.append(
                    Claim(
                        pool=record.pool,
                        pool_version=version,
                        ip=record.ip,
                        pod=pod.key,
                        pod_uid=pod.uid,
                    )
                )
        if claims or endpoint.container_id != req.container_id or endpoint.node != pod.node_name:
            updated = replace(endpoint, uid=pod.uid, node=pod.node_name, container_id=req.container_id)
            self._commit_records(claims=claims, releases=releases, endpoint=updated.to_obj())
        return self._result(pod, held, new=bool(claims))

    @staticmethod
    def _result(pod: PodInfo, nic: NicAllocation, *, new: bool) -> Allocation:
        ips: list[AllocatedIP] = []
        routes = [RouteSpec(nic.interface, r.dst, r.gw) for r in nic.routes]
        for family, pool_name, cidr, gateway in (
            (4, nic.ipv4_pool, nic.ipv4, nic.ipv4_gateway),
            (6, nic.ipv6_pool, nic.ipv6, nic.ipv6_gateway),
        ):
            if not pool_name or not cidr:
                continue
            ip, _, prefix = cidr.partition("/")
            subnet = _subnet_of(cidr)
            ips.append(AllocatedIP(nic.interface, family, ip, int(prefix), subnet, pool_name, gateway))
            if gateway and not nic.clean_gateway:
                routes.append(RouteSpec(nic.interface, "0.0.0.0/0" if family == 4 else "::/0", gateway))
        return Allocation(
            pod=pod.key, pod_uid=pod.uid, node=pod.node_name, ips=tuple(ips), routes=tuple(routes), new=new
        )

    # -- DEL --------------------------------------------------------------------------------------

    def release(self, req: ReleaseRequest) -> Released:
        """Release what this container holds.  Unknown containers, pods and endpoints succeed."""
        key = f"{req.pod_namespace}/{req.pod_name}"
        result: Released = self._retrying(f"release {key} {req.nic}", lambda: self._release_once(req))
        return result

    def _release_once(self, req: ReleaseRequest) -> Released:
        with self.store.snapshot():  # the commit checks each record's pod UID again, under the lock
            endpoint = self._endpoint(req.pod_namespace, req.pod_name)
            if endpoint is None:
                return Released(kept_reason="no SpiderEndpoint: nothing allocated")
            pod_obj = self._get("Pod", req.pod_name, req.pod_namespace)
        pod = PodInfo.from_obj(pod_obj) if pod_obj is not None else None
        uid = pod.uid if pod is not None else req.pod_uid
        if not uid:
            return Released(
                kept_reason="pod gone and no K8S_POD_UID given: left to the IP GC", node=endpoint.node
            )
        if endpoint.uid != uid:
            return Released(
                kept_reason=f"SpiderEndpoint belongs to pod UID {endpoint.uid}", node=endpoint.node
            )
        if endpoint.container_id and req.container_id and endpoint.container_id != req.container_id:
            return Released(
                kept_reason=f"held by container {endpoint.container_id}, not {req.container_id}",
                node=endpoint.node,
            )
        if pod is not None and is_pod_alive(pod):
            # Spiderpool keeps the IP of a live pod (sandbox re-creation); GC frees it once the pod dies
            return Released(kept_reason="pod still alive: IP kept for its next sandbox", node=endpoint.node)
        if self.settings.enable_statefulset and endpoint.owner_controller_type == "StatefulSet":
            sts = self._get("StatefulSet", endpoint.owner_controller_name, req.pod_namespace)
            if is_valid_statefulset_pod(req.pod_name, sts):
                return Released(kept_reason="StatefulSet member: fixed IP kept", node=endpoint.node)
        records = self._endpoint_records(endpoint)
        with self._hold([r.pool for r in records]):
            self._commit_records(releases=records, delete_endpoint=(endpoint.namespace, endpoint.name))
        return Released(records=tuple(records), node=endpoint.node)

    # -- CHECK ------------------------------------------------------------------------------------

    def check(self, req: ReleaseRequest, expected_ips: Sequence[str]) -> None:
        """CHECK: the container's reservation exists and holds exactly ``expected_ips`` (bare addresses)."""
        key = f"{req.pod_namespace}/{req.pod_name}"
        endpoint = self._endpoint(req.pod_namespace, req.pod_name)
        held = endpoint.nic(req.nic) if endpoint is not None else None
        if endpoint is None or held is None:
            raise AllocationError(
                f"pod {key} {req.nic}: no allocation recorded", reason=AllocationReason.MISMATCH
            )
        if endpoint.container_id and req.container_id and endpoint.container_id != req.container_id:
            raise AllocationError(
                f"pod {key} {req.nic}: allocation belongs to container {endpoint.container_id}"
            )
        have = sorted(ip for ip in (_ip_of(held.ipv4), _ip_of(held.ipv6)) if ip)
        if sorted(expected_ips) != have:
            raise AllocationError(
                f"pod {key} {req.nic}: holds {have}, the runtime expects {sorted(expected_ips)}"
            )
        records = {(r.ip, r.pod_uid) for r in self.store.records_of_pod(req.pod_namespace, req.pod_name)}
        missing = [ip for ip in have if (ip, endpoint.uid) not in records]
        if missing:
            raise AllocationError(
                f"pod {key} {req.nic}: no pool record for {', '.join(missing)}",
                reason=AllocationReason.MISMATCH,
            )

    # -- GC (CNI 1.1.0) ---------------------------------------------------------------------------

    def gc_attachments(self, network: str, valid: set[tuple[str, str]]) -> list[IPRecord]:
        """Release what this node's endpoints of ``network`` hold for containers not in ``valid``
        ((containerID, ifname)).  Endpoints of live pods are kept (as CNI DEL does); an error on one
        endpoint does not stop the others."""
        released: list[IPRecord] = []
        for obj in self.store.list("SpiderEndpoint"):
            endpoint = Endpoint.from_obj(obj)
            if endpoint.node != self.node_name or not endpoint.container_id:
                continue
            if endpoint.annotations.get(NETWORK_ANNOTATION, network) != network:
                continue
            if any((endpoint.container_id, nic.interface) in valid for nic in endpoint.ips):
                continue
            for nic in endpoint.ips:
                req = ReleaseRequest(
                    container_id=endpoint.container_id,
                    nic=nic.interface,
                    pod_namespace=endpoint.namespace,
                    pod_name=endpoint.name,
                    pod_uid=endpoint.uid,
                )
                try:
                    released.extend(self.release(req).records)
                except AllocationError as exc:
                    LOG.warning("GC of %s/%s: %s", endpoint.namespace, endpoint.name, exc)
                break
        return released

    def has_free(self, pool_names: Sequence[str]) -> bool:
        """Whether any of these pools (all pools when empty) can still give an address (CNI STATUS)."""
        names = list(pool_names) or [o["metadata"]["name"] for o in self.store.list("SpiderIPPool")]
        for name in names:
            try:
                pool = IPPool.from_obj(self.store.get("SpiderIPPool", name))
            except NotFound:
                continue
            if pool.disable or pool.terminating:
                continue
            free = free_intervals(pool, self._reserved(pool.ip_version))
            if lowest_free(free, self.store.usage(name).allocated) is not None:
                return True
        return False

    # -- views used by the agent ------------------------------------------------------------------

    def node_ips(self, node: str | None = None) -> dict[str, str]:
        """ip -> pool subnet for every address held by pods on ``node`` (default: this node)."""
        node = node or self.node_name
        subnets = {
            p["metadata"]["name"]: p.get("spec", {}).get("subnet", "")
            for p in self.store.list("SpiderIPPool")
        }
        out: dict[str, str] = {}
        for obj in self.store.list("SpiderEndpoint"):
            endpoint = Endpoint.from_obj(obj)
            if endpoint.node != node:
                continue
            for record in self._endpoint_records(endpoint):
                if record.pool in subnets:
                    out[record.ip] = subnets[record.pool]
        return out
