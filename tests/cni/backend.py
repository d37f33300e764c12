"""A small CniBackend over the real embedded store, for the CNI tests.

The lead's ``ipam.service.IpamService`` is not committed yet, so this backend does the minimum an IPAM
service does, on the real SQLite store and the real pure allocator: pools named in the request (or the
pools marked ``default``), the lowest free IP, a claim conditional on the pool's resourceVersion
(retried on Conflict), idempotent per pod UID, releases by UID.  The pod UID is the request's
``podUID`` or, without one, the container ID (so DEL without CNI_ARGS still finds the record).
"""

from __future__ import annotations

import asyncio
import threading

from cni import wire
from ipam.allocator import free_intervals, lowest_free
from ipam.errors import Conflict, NotFound
from ipam.model import IPPool
from ipam.ranges import IntervalSet, int_to_ip
from ipam.sqlite_store import SqliteStore
from ipam.store import Claim, IPRecord
from spiderbgp.cni_endpoint import BackendError

POOL_KIND = "SpiderIPPool"


def pool_object(
    name: str,
    subnet: str,
    ips: list[str],
    gateway: str | None = None,
    *,
    routes: list[dict[str, str]] | None = None,
    default: bool = False,
) -> dict[str, object]:
    spec: dict[str, object] = {"subnet": subnet, "ips": ips, "default": default}
    if gateway:
        spec["gateway"] = gateway
    if routes:
        spec["routes"] = routes
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": POOL_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


class StoreBackend:
    def __init__(self, store: SqliteStore, *, delay: float = 0.0) -> None:
        self.store = store
        self.delay = delay  # seconds each ADD waits first (to test timeouts and graceful shutdown)
        self.healthy_flag = True
        self._lock = threading.Lock()
        self.calls: list[str] = []

    async def add(self, request: wire.AddRequest) -> wire.AddResponse:
        self.calls.append("add")
        if self.delay:
            await asyncio.sleep(self.delay)
        return await asyncio.to_thread(self._add, request)

    def _pools(self, names: tuple[str, ...], family: int) -> list[IPPool]:
        if names:
            out = []
            for name in names:
                try:
                    out.append(IPPool.from_obj(self.store.get(POOL_KIND, name)))
                except NotFound:
                    raise BackendError(
                        wire.CODE_NO_POOL, details=f'SpiderIPPool "{name}" not found', http_status=409
                    ) from None
            return out
        return [
            p
            for p in (IPPool.from_obj(o) for o in self.store.list(POOL_KIND))
            if p.default and p.ip_version == family
        ]

    def _add(self, request: wire.AddRequest) -> wire.AddResponse:
        uid = request.pod_uid or request.container_id
        pod = f"{request.pod_namespace}/{request.pod_name}"
        pools = self._pools(request.default_ipv4_ippool, 4) + self._pools(request.default_ipv6_ippool, 6)
        if not pools:
            raise BackendError(wire.CODE_NO_POOL, details=f"pod {pod}: no default pool", http_status=409)
        ips: list[wire.IPConfig] = []
        routes: list[wire.Route] = []
        with self._lock:
            held = {
                r.pool: r
                for r in self.store.records_of_pod(request.pod_namespace, request.pod_name)
                if r.pod_uid == uid
            }
            for pool in pools:
                record = held.get(pool.name) or self._claim(pool, pod, uid)
                prefix = pool.subnet.split("/")[1]
                gateway = None if request.clean_gateway else pool.gateway
                ips.append(
                    wire.IPConfig(
                        address=f"{record.ip}/{prefix}", gateway=gateway, pool=pool.name, nic=request.if_name
                    )
                )
                routes += [wire.Route(if_name=request.if_name, dst=r.dst, gw=r.gw) for r in pool.routes]
                if gateway:
                    default = "::/0" if pool.ip_version == 6 else "0.0.0.0/0"
                    routes.append(wire.Route(if_name=request.if_name, dst=default, gw=gateway))
        return wire.AddResponse(ips=ips, routes=routes)

    def _claim(self, pool: IPPool, pod: str, uid: str) -> IPRecord:
        for _ in range(20):
            usage = self.store.usage(pool.name)
            value = lowest_free(free_intervals(pool, IntervalSet()), usage.allocated)
            if value is None:
                raise BackendError(
                    wire.CODE_NO_IP_AVAILABLE,
                    details=f'SpiderIPPool "{pool.name}": all IPs are allocated',
                    http_status=409,
                )
            ip = int_to_ip(value, pool.ip_version)
            try:
                self.store.commit(
                    claims=[
                        Claim(
                            pool=pool.name, pool_version=usage.resource_version, ip=ip, pod=pod, pod_uid=uid
                        )
                    ]
                )
            except Conflict:
                continue
            return IPRecord(pool=pool.name, ip=ip, pod=pod, pod_uid=uid)
        raise BackendError(wire.CODE_TRY_AGAIN, details="too many conflicts", http_status=503)

    def _records_of(self, container_id: str, namespace: str, name: str, uid: str) -> list[IPRecord]:
        uid = uid or container_id
        if namespace and name:
            return [r for r in self.store.records_of_pod(namespace, name) if r.pod_uid == uid]
        return [
            r
            for p in self.store.list(POOL_KIND)
            for r in self.store.records(p["metadata"]["name"])
            if r.pod_uid == uid
        ]

    async def delete(self, request: wire.DelRequest) -> None:
        self.calls.append("del")
        records = await asyncio.to_thread(
            self._records_of, request.container_id, request.pod_namespace, request.pod_name, request.pod_uid
        )
        if records:
            await asyncio.to_thread(self.store.commit, releases=records)

    async def check(self, request: wire.CheckRequest) -> None:
        self.calls.append("check")
        records = await asyncio.to_thread(
            self._records_of, request.container_id, request.pod_namespace, request.pod_name, request.pod_uid
        )
        held = sorted(r.ip for r in records)
        wanted = sorted(a.split("/")[0] for a in request.ips)
        if held != wanted:
            raise BackendError(
                wire.CODE_RESERVATION_MISMATCH,
                details=f"container {request.container_id}: agent holds {held}, prevResult has {wanted}",
                http_status=409,
            )

    async def gc(self, request: wire.GcRequest) -> wire.GcResult:
        self.calls.append("gc")
        valid = {a.container_id for a in request.valid_attachments}
        stale = [
            r
            for p in self.store.list(POOL_KIND)
            for r in self.store.records(p["metadata"]["name"])
            if r.pod_uid not in valid
        ]
        if stale:
            await asyncio.to_thread(self.store.commit, releases=stale)
        return wire.GcResult(released=[r.ip for r in stale])

    async def status(self, request: wire.StatusRequest) -> None:
        self.calls.append("status")
        for pool in self._pools(request.default_ipv4_ippool, 4):
            if (
                lowest_free(free_intervals(pool, IntervalSet()), self.store.usage(pool.name).allocated)
                is not None
            ):
                return
        raise BackendError(wire.CODE_UNAVAILABLE, details="every eligible pool is exhausted", http_status=503)

    async def healthy(self) -> bool:
        return self.healthy_flag

    async def ready(self) -> bool:
        return self.healthy_flag
