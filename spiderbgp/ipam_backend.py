"""The CNI endpoint's backend: socket requests (cni.wire) turned into IpamService calls, and back.

The service is synchronous (it talks to SQLite or the API server).  Calls that may take long run in the
agent's thread pool.  When the service's store has group commit (``IpamService.can_group``) and the
agent gives an ``inline_wait``, ADD, DEL and CHECK are first tried on the event loop itself in the
service's ``grouped`` mode, where a call that would wait (a writer lock another thread or process
holds, a back-off before a retry) raises WouldBlock before writing anything and is then made again in
the pool: a thread hand-off per request cost more than the call (GIL ping-pong around every SQLite
statement).  Errors become CNI codes here, in one table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from cni import wire, wire_agent
from ipam.errors import AllocationError, AllocationReason, Invalid, IpamError, StoreUnavailable, WouldBlock
from ipam.service import AllocateRequest, Allocation, IpamService, ReleaseRequest
from spiderbgp.cni_endpoint import BackendError

__all__ = ["IpamBackend", "NodeIpEvents"]

LOG = logging.getLogger("spiderbgp.agent")
T = TypeVar("T")
# a group of inline calls that finds another writer is tried again on the loop this often, this long
_GROUP_RETRY_DELAY = 0.0005
_GROUP_RETRIES = 40

# what each allocation failure answers: (CNI code, HTTP status).  The status says whether a retry can
# help (503) or the request itself cannot be served (409 for CHECK's mismatch, 422 otherwise); a pod
# missing from the store is code 101 with a 503: the runtime sees "pod not found", and a retry can
# succeed once the store shows the pod
_REASON_ERRORS: Mapping[AllocationReason, tuple[int, int]] = {
    AllocationReason.EXHAUSTED: (wire.CODE_NO_IP_AVAILABLE, 422),
    AllocationReason.AWAITING_POOL: (wire.CODE_TRY_AGAIN, 503),
    AllocationReason.NO_POOL: (wire.CODE_NO_POOL, 422),
    AllocationReason.POD_NOT_FOUND: (wire.CODE_POD_NOT_FOUND, 503),
    AllocationReason.POD_DEAD: (wire.CODE_NO_POOL, 422),
    AllocationReason.UID_MISMATCH: (wire.CODE_TRY_AGAIN, 503),
    AllocationReason.CONFLICT: (wire.CODE_TRY_AGAIN, 503),
    AllocationReason.MISMATCH: (wire.CODE_RESERVATION_MISMATCH, 409),
    AllocationReason.OTHER: (wire.CODE_NO_IP_AVAILABLE, 422),
}
_CHECK_FAILED = (wire.CODE_RESERVATION_MISMATCH, 409)


@dataclass(frozen=True)
class NodeIpEvents:
    """What the announcer is told: addresses that appeared on or left this node (ip -> pool subnet)."""

    added: Callable[[Mapping[str, str]], None]
    removed: Callable[[Sequence[str]], None]


def _backend_error(exc: Exception, *, check: bool = False) -> BackendError:
    """The CNI code and HTTP status of a service failure (``_REASON_ERRORS`` for allocation failures).
    Every definite failure of CHECK (one a retry cannot mend) is a reservation mismatch (103),
    whatever its reason."""
    if isinstance(exc, AllocationError):
        code, status = _REASON_ERRORS[exc.reason]
        if check and status != 503:
            code, status = _CHECK_FAILED
        return BackendError(code, wire.ERROR_MESSAGES.get(code, "allocation failed"), str(exc), status)
    if isinstance(exc, StoreUnavailable):
        return BackendError(wire.CODE_TRY_AGAIN, "object store unavailable", str(exc), 503)
    if isinstance(exc, Invalid):
        return BackendError(
            wire.CODE_NO_POOL, "invalid IPAM configuration of the pod or its pools", str(exc), 422
        )
    if isinstance(exc, IpamError):
        return BackendError(wire.CODE_TRY_AGAIN, "store error", str(exc), 503)
    LOG.exception("unexpected failure in the IPAM service")
    return BackendError(wire.CODE_AGENT_INTERNAL, "agent internal error", f"{type(exc).__name__}: {exc}", 500)


class IpamBackend:
    """Implements spiderbgp.cni_endpoint.CniBackend over an IpamService."""

    def __init__(
        self,
        service: IpamService,
        *,
        executor: Executor,
        events: NodeIpEvents,
        ready: Callable[[], bool] = lambda: True,
        inline_wait: float | None = None,
    ) -> None:
        """``inline_wait`` (not None): try short calls on the event loop in group-commit mode, waiting
        at most this long for the store's writer lock, when the store can (see the module docstring)."""
        self.service = service
        self._executor = executor
        self._events = events
        self._ready = ready
        self._inline = (
            partial(service.grouped, inline_wait) if inline_wait is not None and service.can_group else None
        )
        self._queued: list[tuple[Callable[[], object], asyncio.Future[tuple[bool, object]]]] = []
        self._scheduled = False  # a _run_queued is due on the loop

    async def _run(self, fn: Callable[[], T], *, check: bool = False, inline: bool = False) -> T:
        """``fn`` in the thread pool; with ``inline`` (a call that commits at most once, at its end)
        first on the event loop, as long as it does not have to wait.

        Inline calls are queued and made together on the loop's next turn, inside one ``grouped``
        block of the service (one write transaction, each call in a savepoint of its own), and answered
        once that context has ended, that is once every write of the group is durable: concurrent ADDs
        and DELs share one commit instead of paying for one each."""
        if inline and self._inline is not None:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[tuple[bool, object]] = loop.create_future()
            self._queued.append((fn, future))
            if not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._run_queued, 0)
            done, outcome = await future
            if done:
                return outcome  # type: ignore[return-value]
            if isinstance(outcome, BackendError):
                raise outcome
            if isinstance(outcome, Exception):
                raise _backend_error(outcome, check=check) from None
            # no outcome: it would have had to wait, and wrote nothing: make it where waiting is fine
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except BackendError:
            raise
        except Exception as exc:
            raise _backend_error(exc, check=check) from None

    def _run_queued(self, attempt: int) -> None:
        """Make every queued inline call inside one ``grouped`` block, then settle their futures (a
        call that would wait gets no outcome and is made in the thread pool).  When the context cannot
        start (another process is writing), the group is tried again a little later on the loop, for a
        while, before its calls go to the thread pool."""
        queued, self._queued = self._queued, []
        self._scheduled = False
        outcomes: list[tuple[bool, object]] = []
        assert self._inline is not None
        try:
            with self._inline():
                for fn, _ in queued:
                    try:
                        outcomes.append((True, fn()))
                    except WouldBlock:
                        outcomes.append((False, None))
                    except Exception as exc:  # handed to its caller, which maps it to a CNI code
                        outcomes.append((False, exc))
        except WouldBlock:
            if attempt < _GROUP_RETRIES:
                self._queued[:0] = queued
                if not self._scheduled:
                    self._scheduled = True
                    asyncio.get_running_loop().call_later(_GROUP_RETRY_DELAY, self._run_queued, attempt + 1)
                return
            outcomes = [(False, None)] * len(queued)
        except Exception as exc:  # the group's commit failed: none of its writes stands
            outcomes = [(False, exc)] * len(queued)
        for (_, future), outcome in zip(queued, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    def _announce(self, allocation: Allocation) -> None:
        if allocation.node == self.service.node_name:
            self._events.added({ip.ip: ip.subnet for ip in allocation.ips})

    async def add(self, request: wire.AddRequest) -> wire.AddResponse:
        req = AllocateRequest(
            container_id=request.container_id,
            nic=request.if_name,
            pod_namespace=request.pod_namespace,
            pod_name=request.pod_name,
            pod_uid=request.pod_uid,
            netns=request.netns,
            default_v4_pools=request.default_ipv4_ippool,
            default_v6_pools=request.default_ipv6_ippool,
            clean_gateway=request.clean_gateway or None,
            network=request.network,
        )
        allocation = await self._run(lambda: self.service.allocate(req), inline=True)
        self._announce(allocation)
        return wire.AddResponse(
            ips=[
                wire.IPConfig(address=ip.address, nic=ip.nic, pool=ip.pool, gateway=ip.gateway)
                for ip in allocation.ips
            ],
            routes=[wire.Route(if_name=r.nic, dst=r.dst, gw=r.gw) for r in allocation.routes],
        )

    @staticmethod
    def _release_request(request: wire.DelRequest | wire.CheckRequest) -> ReleaseRequest:
        return ReleaseRequest(
            container_id=request.container_id,
            nic=request.if_name,
            pod_namespace=request.pod_namespace,
            pod_name=request.pod_name,
            pod_uid=request.pod_uid,
        )

    async def delete(self, request: wire.DelRequest) -> None:
        if not request.pod_namespace or not request.pod_name:
            return  # without K8S_POD_NAMESPACE/NAME nothing can be looked up: left to the IP GC
        released = await self._run(lambda: self.service.release(self._release_request(request)), inline=True)
        if released.records and released.node == self.service.node_name:
            self._events.removed([r.ip for r in released.records])
        elif not released.records:
            LOG.debug(
                "DEL %s/%s %s kept: %s",
                request.pod_namespace,
                request.pod_name,
                request.if_name,
                released.kept_reason,
            )

    async def check(self, request: wire.CheckRequest) -> None:
        expected = [cidr.partition("/")[0] for cidr in request.ips]
        await self._run(
            lambda: self.service.check(self._release_request(request), expected), check=True, inline=True
        )

    async def gc(self, request: wire.GcRequest) -> wire_agent.GcResult:
        valid = {(a.container_id, a.if_name) for a in request.valid_attachments}
        records = await self._run(lambda: self.service.gc_attachments(request.network, valid))
        if records:
            self._events.removed([r.ip for r in records])
        return wire_agent.GcResult(released=[r.ip for r in records])

    async def status(self, request: wire.StatusRequest) -> None:
        pools = [*request.default_ipv4_ippool, *request.default_ipv6_ippool]
        free = await self._run(lambda: self.service.has_free(pools))
        if not free:
            raise BackendError(
                wire.CODE_UNAVAILABLE,
                wire.ERROR_MESSAGES.get(wire.CODE_UNAVAILABLE, "unavailable"),
                f"no free IP in {', '.join(pools) if pools else 'any pool'}",
                503,
            )

    async def healthy(self) -> bool:
        return True

    async def ready(self) -> bool:
        if not self._ready():
            return False
        try:
            await self._run(self.service.store.revision)
        except BackendError:
            return False
        return True
