"""The IP garbage collector (leader only): Spiderpool's scan-all and pod tracing over the store.

Every decision is ``ipam.gc_policy.decide``; this module only reads what it needs (the record's pod, the
SpiderEndpoint of that name, the pod's StatefulSet, the node's readiness) and performs the release.  A
release always carries the record's own pod UID, and the store ignores a release whose UID no longer
matches, so a decision taken on data that changed meanwhile never frees an IP a new pod holds.  An
endpoint is deleted in the same commit only after re-reading it and finding it unchanged.

Work per call is bounded: ``scan_all`` examines at most ``max_records`` records and resumes where it
stopped on the next call (``scan_pending`` says a pass is unfinished); ``trace_pods`` checks at most
``max_checks`` traced pods per call and keeps at most ``max_traced`` entries.  An error on one record is
logged and skipped; a Conflict is retried after re-reading.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import netaddr

from ipam.errors import Conflict, IpamError, NotFound
from ipam.gc_policy import Decision, EndpointInfo, GCSettings, StatefulSetState, decide
from ipam.records import IPRecord, Obj, WatchEvent
from ipam.store.protocol import Store
from ipam.workload import PodInfo, statefulset_ordinal

__all__ = ["GarbageCollector", "Released", "node_ready_from_obj"]

LOG = logging.getLogger("spiderbgp.ipam.gc")

Released = tuple[IPRecord, str]
"""A released record and the reason (one line)."""

_CONFLICT_RETRIES: Final = 3


def node_ready_from_obj(node: Mapping[str, Any] | None) -> bool | None:
    """A Node's Ready condition: True, False (``False``/``Unknown``), or None when the node or the
    condition is missing."""
    if node is None:
        return None
    for cond in (node.get("status") or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return None


@dataclass(frozen=True)
class _Seen:
    """What one decision was taken on."""

    record: IPRecord
    pod: PodInfo | None
    endpoint: EndpointInfo | None
    endpoint_version: str
    decision: Decision


@dataclass
class _Lookups:
    """Objects read during one call, shared between the records of that call."""

    statefulsets: dict[tuple[str, str], Obj | None]
    nodes: dict[str, bool | None]


class GarbageCollector:
    """Releases allocation records whose pods are gone, finished, terminating past their grace period,
    replaced by a pod of another UID, or no longer wanted by their StatefulSet."""

    def __init__(
        self,
        store: Store,
        *,
        settings: GCSettings,
        clock: Callable[[], float],
        node_ready: Callable[[str], bool | None] | None = None,
        max_records: int = 20_000,
        max_checks: int = 1_000,
        max_traced: int = 100_000,
    ) -> None:
        """``node_ready(node)``: the node's readiness (None: unknown); by default read from the Node
        object in the store.  ``max_records``: records examined per ``scan_all`` call; ``max_checks``:
        traced pods checked per ``trace_pods`` call; ``max_traced``: traced pods kept (Spiderpool's
        ``SPIDERPOOL_GC_MAX_PODENTRY_DB_CAP``; pods beyond it are left to scan-all)."""
        if max_records < 1 or max_checks < 1 or max_traced < 1:
            raise ValueError("max_records, max_checks and max_traced must be at least 1")
        self.store = store
        self.settings = settings
        self._clock = clock
        self._node_ready = node_ready
        self._max_records = max_records
        self._max_checks = max_checks
        self._max_traced = max_traced
        self._cursor: tuple[str, int] | None = None  # (pool, ip value) of the last record examined
        # pod tracing: (namespace, name) -> due time, plus a heap of (due, namespace, name)
        self._due: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, str, str]] = []

    # ------------------------------------------------------------------ reads

    def _get(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        try:
            return self.store.get(kind, name, namespace)
        except NotFound:
            return None

    def _lookups(self) -> _Lookups:
        return _Lookups(statefulsets={}, nodes={})

    def _readiness(self, node: str, lookups: _Lookups) -> bool | None:
        if not node:
            return None
        if node not in lookups.nodes:
            if self._node_ready is not None:
                lookups.nodes[node] = self._node_ready(node)
            else:
                lookups.nodes[node] = node_ready_from_obj(self._get("Node", node))
        return lookups.nodes[node]

    def _statefulset(
        self,
        record: IPRecord,
        pod: PodInfo | None,
        endpoint: EndpointInfo | None,
        endpoint_obj: Obj | None,
        lookups: _Lookups,
    ) -> StatefulSetState | None:
        namespace, _, pod_name = record.pod.partition("/")
        name: str | None = None
        if pod is not None:
            name = pod.statefulset_name
        elif endpoint is not None and endpoint.owner_kind == "StatefulSet":
            status = (endpoint_obj or {}).get("status") or {}
            owner = status.get("ownerControllerName")
            if isinstance(owner, str) and owner:
                name = owner
            else:
                parsed = statefulset_ordinal(pod_name)
                name = parsed[0] if parsed is not None else None
        if name is None:
            return None
        key = (namespace, name)
        if key not in lookups.statefulsets:
            lookups.statefulsets[key] = self._get("StatefulSet", name, namespace)
        return StatefulSetState.from_obj(name, lookups.statefulsets[key])

    def _examine(self, record: IPRecord, lookups: _Lookups) -> _Seen:
        namespace, _, name = record.pod.partition("/")
        pod_obj = self._get("Pod", name, namespace)
        pod = PodInfo.from_obj(pod_obj) if pod_obj is not None else None
        endpoint_obj = self._get("SpiderEndpoint", name, namespace)
        endpoint = EndpointInfo.from_obj(endpoint_obj) if endpoint_obj is not None else None
        version = str(((endpoint_obj or {}).get("metadata") or {}).get("resourceVersion") or "")
        statefulset = self._statefulset(record, pod, endpoint, endpoint_obj, lookups)
        ready = self._readiness(pod.node_name, lookups) if pod is not None else None
        decision = decide(record, pod, endpoint, statefulset, ready, self._clock(), self.settings)
        return _Seen(record, pod, endpoint, version, decision)

    # ------------------------------------------------------------------ the release

    def _endpoint_to_delete(self, seen: _Seen) -> tuple[str, str] | None:
        """The endpoint to delete with this release, after checking it is still the one decided on."""
        if not seen.decision.release_endpoint or seen.endpoint is None:
            return None
        namespace, _, name = seen.record.pod.partition("/")
        current = self._get("SpiderEndpoint", name, namespace)
        if current is None:
            return None
        if str((current.get("metadata") or {}).get("resourceVersion") or "") != seen.endpoint_version:
            raise Conflict(f'SpiderEndpoint "{namespace}/{name}" changed while its pod was examined')
        return namespace, name

    def _collect(self, record: IPRecord, lookups: _Lookups) -> _Seen | None:
        """Examine one record and release it when decided; returns what was decided (None on error)."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                seen = self._examine(record, lookups)
                if seen.decision.release:
                    self.store.commit(releases=[record], delete_endpoint=self._endpoint_to_delete(seen))
                    LOG.info(
                        "released %s of pool %s (%s): %s",
                        record.ip,
                        record.pool,
                        record.pod,
                        seen.decision.reason,
                    )
                return seen
            except Conflict as err:
                if attempt + 1 == _CONFLICT_RETRIES:
                    LOG.warning(
                        "GC of %s (pool %s, pod %s) skipped: %s", record.ip, record.pool, record.pod, err
                    )
                lookups.statefulsets.clear()
            except IpamError as err:
                LOG.warning("GC of %s (pool %s, pod %s) skipped: %s", record.ip, record.pool, record.pod, err)
                return None
        return None

    # ------------------------------------------------------------------ scan-all

    @property
    def scan_pending(self) -> bool:
        """A scan-all pass stopped at its per-call bound; the next ``scan_all`` continues it."""
        return self._cursor is not None

    def scan_all(self) -> list[Released]:
        """Examine every record of every pool (at most ``max_records`` per call, resuming where the last
        call stopped); release what the policy says to release.  At the end of a complete pass, also
        delete SpiderEndpoints that no record names any more and whose pod is gone."""
        lookups = self._lookups()
        released: list[Released] = []
        budget = self._max_records
        try:
            pools = sorted(p["metadata"]["name"] for p in self.store.list("SpiderIPPool"))
        except IpamError as err:
            LOG.warning("GC scan-all: cannot list pools: %s", err)
            return released
        start_pool, start_ip = self._cursor if self._cursor is not None else ("", -1)
        for pool in pools:
            if pool < start_pool:
                continue
            try:
                records = self.store.records(pool)
            except IpamError as err:
                LOG.warning("GC scan-all: cannot read the records of pool %s: %s", pool, err)
                continue
            for record in records:
                value = int(netaddr.IPAddress(record.ip))
                if pool == start_pool and value <= start_ip:
                    continue
                if budget == 0:
                    return released  # the cursor stays at the last record examined
                budget -= 1
                self._cursor = (pool, value)
                seen = self._collect(record, lookups)
                if seen is not None and seen.decision.release:
                    released.append((record, seen.decision.reason))
        self._cursor = None
        released.extend(self.sweep_endpoints())
        return released

    def sweep_endpoints(self) -> list[Released]:
        """Delete SpiderEndpoints no pool record names (for their pod UID) whose pod is gone, unless the
        StatefulSet still wants that pod.  Returns nothing released (no records are involved); logs each
        deletion."""
        try:
            endpoints = self.store.list("SpiderEndpoint")
        except IpamError as err:
            LOG.warning("GC endpoint sweep: cannot list endpoints: %s", err)
            return []
        lookups = self._lookups()
        for obj in endpoints:
            meta = obj.get("metadata") or {}
            namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
            try:
                self._sweep_endpoint(namespace, name, obj, lookups)
            except IpamError as err:
                LOG.warning("GC endpoint sweep of %s/%s skipped: %s", namespace, name, err)
        return []

    def _sweep_endpoint(self, namespace: str, name: str, obj: Obj, lookups: _Lookups) -> bool:
        endpoint = EndpointInfo.from_obj(obj)
        if self._get("Pod", name, namespace) is not None:
            return False
        if any(r.pod_uid == endpoint.uid for r in self.store.records_of_pod(namespace, name)):
            return False
        if self.settings.enable_statefulset and endpoint.owner_kind == "StatefulSet":
            probe = IPRecord(pool="", ip="", pod=f"{namespace}/{name}", pod_uid=endpoint.uid)
            sts = self._statefulset(probe, None, endpoint, obj, lookups)
            if sts is not None and sts.wants(name):
                return False
        current = self._get("SpiderEndpoint", name, namespace)
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if current is None or str((current.get("metadata") or {}).get("resourceVersion") or "") != version:
            return False  # changed meanwhile: the next sweep looks again
        self.store.commit(delete_endpoint=(namespace, name))
        LOG.info("deleted SpiderEndpoint %s/%s: its pod is gone and no pool record names it", namespace, name)
        return True

    # ------------------------------------------------------------------ pod tracing

    @property
    def traced(self) -> int:
        """How many pods are being traced."""
        return len(self._due)

    def next_due(self) -> float | None:
        """When the earliest traced pod falls due (None when nothing is traced)."""
        self._drop_stale_heap_top()
        return self._heap[0][0] if self._heap else None

    def _drop_stale_heap_top(self) -> None:
        while self._heap and self._due.get((self._heap[0][1], self._heap[0][2])) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _trace(self, namespace: str, name: str, due: float) -> None:
        key = (namespace, name)
        if key not in self._due and len(self._due) >= self._max_traced:
            LOG.warning(
                "GC pod tracing is full (%d pods): %s/%s is left to scan-all",
                self._max_traced,
                namespace,
                name,
            )
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, namespace, name))
        if len(self._heap) > 2 * self._max_traced:  # compact superseded entries
            self._heap = [(d, ns, n) for (ns, n), d in self._due.items()]
            heapq.heapify(self._heap)

    def _untrace(self, namespace: str, name: str) -> None:
        self._due.pop((namespace, name), None)

    def _stop_time(self, event: WatchEvent, now: float) -> float | None:
        """When a pod event's pod should be checked (None: not traced)."""
        delay = self.settings.additional_grace_delay
        if event.type == "DELETED":
            return now + delay
        pod = PodInfo.from_obj(event.object)
        if pod.host_network:
            return None
        if pod.deletion_timestamp is not None:
            if not pod.pod_ips:
                return now
            return pod.deletion_timestamp + (pod.deletion_grace_seconds or 0) + delay
        if pod.phase in ("Succeeded", "Failed"):
            if pod.finished_at is None:
                return now
            return pod.finished_at + (pod.termination_grace_seconds or 0) + delay
        return None

    def trace_pods(self, events: Iterable[WatchEvent]) -> list[Released]:
        """Take Pod watch events (deleted, terminating, finished pods are traced with the time they fall
        due; running and pending ones stop being traced), then check the pods that are due (at most
        ``max_checks``).  Call it with no events to just process what is due."""
        now = self._clock()
        for event in events:
            if event.object.get("kind", "Pod") != "Pod":
                continue
            meta = event.object.get("metadata") or {}
            namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
            try:
                due = self._stop_time(event, now)
            except IpamError as err:
                LOG.warning("GC pod tracing of %s/%s: %s", namespace, name, err)
                continue
            if due is None:
                self._untrace(namespace, name)
            else:
                self._trace(namespace, name, due)
        released: list[Released] = []
        for _ in range(self._max_checks):
            self._drop_stale_heap_top()
            if not self._heap or self._heap[0][0] > now:
                break
            _, namespace, name = heapq.heappop(self._heap)
            del self._due[(namespace, name)]
            released.extend(self.check_pod(namespace, name))
        return released

    def check_pod(self, namespace: str, name: str) -> list[Released]:
        """Decide on every record naming pod ``namespace/name`` (any UID) now, release what is due, and
        trace the pod again when a record is kept until a known time."""
        try:
            records = self.store.records_of_pod(namespace, name)
        except IpamError as err:
            LOG.warning("GC of pod %s/%s skipped: %s", namespace, name, err)
            return []
        lookups = self._lookups()
        released: list[Released] = []
        recheck: float | None = None
        for record in records:
            seen = self._collect(record, lookups)
            if seen is None:
                continue
            if seen.decision.release:
                released.append((record, seen.decision.reason))
            elif seen.decision.recheck_at is not None:
                recheck = min(recheck or seen.decision.recheck_at, seen.decision.recheck_at)
        if recheck is not None:
            self._trace(namespace, name, recheck)
        if not records:
            endpoint = self._get("SpiderEndpoint", name, namespace)
            if endpoint is not None:
                try:
                    self._sweep_endpoint(namespace, name, endpoint, lookups)
                except IpamError as err:
                    LOG.warning("GC of the SpiderEndpoint of %s/%s skipped: %s", namespace, name, err)
        return released
