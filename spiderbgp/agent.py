"""The node agent: one asyncio process that wires the store, the IPAM service, the CNI socket, the route
announcer, the health/metrics endpoint and the leader-only controllers.  The only composition root.

Start-up order: store -> IPAM service -> health endpoint (/readyz says 503 until serving; binding it
first means a bad healthAddress fails before anything else starts) -> announcer (seeded with this
node's addresses, so a restart re-announces before it serves) -> CNI socket -> watchers and leader
election.  A part that fails to start stops the parts already started.
Shut-down (SIGTERM/SIGINT) runs it backwards: stop accepting CNI requests and let in-flight ones finish,
stop the controllers, stop the announcer (withdrawing first when asked to), close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ipam.errors import Conflict, Gone, IpamError, NotFound
from ipam.service import IpamService, IpamSettings
from ipam.store.protocol import Store
from spiderbgp.block_follow import BLOCK_KIND, AffineBlocks
from spiderbgp.cni_endpoint import CniSocket, SocketInUse, make_app, serve, shutdown
from spiderbgp.config import AgentConfig
from spiderbgp.fields import ConfigError
from spiderbgp.ipam_backend import IpamBackend, NodeIpEvents
from spiderbgp.leadership import Leadership
from spiderbgp.metrics import IpamMetrics
from spiderbgp.node_addresses import Delta, NodeAddresses
from spiderbgp.node_condition import with_network_condition
from spiderbgp.pod_readiness import ReadyAddresses
from spiderbgp.stores import KUBERNETES

__all__ = ["Agent", "Announcer", "run_agent"]

LOG = logging.getLogger("spiderbgp.agent")
# read on every ADD; with the Kubernetes store they come from informers (writes always go to the server)
# after the CNI socket stops accepting: time for requests already connected to arrive and start
SHUTDOWN_GRACE = 0.2
FULL_RESYNC_SECONDS = 300.0
NODE_CONDITION_INTERVAL = 0.5  # how often BGP readiness is looked at for the Node's condition
CACHED_KINDS = (
    "Pod",
    "Namespace",
    "Node",
    "SpiderIPPool",
    "SpiderReservedIP",
    "SpiderIPBlock",
    "ReplicaSet",
    "Deployment",
)


class Announcer(Protocol):
    """What the agent needs from the BGP side (bgp_speaker), seen from here."""

    async def start(self) -> None: ...

    def set_pod_ips(self, ips: Mapping[str, str]) -> None:
        """The full set of this node's pod addresses (ip -> pool subnet)."""

    def add_pod_ips(self, ips: Mapping[str, str]) -> None: ...

    def remove_pod_ips(self, ips: Sequence[str]) -> None: ...

    def set_pool_subnets(self, subnets: Sequence[str]) -> None:
        """The pools' subnets: the export policy never announces anything outside them."""

    @property
    def announce_when_ready(self) -> bool:
        """True when addresses are announced only while their pod is Ready (bgp.announceWhen)."""

    @property
    def follows_blocks(self) -> bool:
        """True when the agent follows this node's SpiderIPBlocks (bgp.advertise: block)."""

    def set_blocks(self, blocks: Collection[str]) -> None:
        """The full set of allocation blocks affine to this node (CIDRs)."""

    @property
    def writes_node_condition(self) -> bool:
        """True when the agent keeps the Node's NetworkUnavailable condition (bgp.nodeCondition)."""

    def set_ready_ips(self, ips: Collection[str]) -> None:
        """The full set of this node's addresses whose pod is Ready."""

    def set_pod_ready(self, changes: Mapping[str, bool]) -> None:
        """Addresses whose pod turned Ready (True) or NotReady/terminating (False)."""

    def readiness(self) -> str | None:
        """None when BGP has converged (every peer Established, initial routes and EoR sent)."""

    def suppressed(self) -> list[dict[str, Any]]:
        """The prefixes flap damping holds back, with until when."""

    def status(self) -> list[dict[str, Any]]: ...

    def pipename(self) -> str:
        """The ExaBGP CLI pipe name, for operators: ``exabgp cli --pipename NAME show adj-rib out``."""

    async def routes(self) -> list[dict[str, Any]]: ...

    async def stop(self, *, withdraw: bool) -> None: ...


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@dataclass(frozen=True)
class NodeState:
    """What the announcer is seeded with from a full read of the store."""

    ips: dict[str, str]  # this node's addresses -> pool subnet
    subnets: list[str]  # every pool's subnet
    ready: set[str] | None  # the addresses of Ready pods (None: announceWhen is not ready)
    blocks: frozenset[str] | None = None  # this node's SpiderIPBlocks (None: advertise is not block)


# how long a CNI call answered on the event loop may wait for a lock (another process's write takes
# well under a millisecond) before it is handed to the thread pool instead
INLINE_WAIT = 0.002


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        *,
        announcer: Announcer | None = None,
        registry: CollectorRegistry | None = None,
        withdraw_on_exit: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.announcer = announcer
        self.registry = registry or CollectorRegistry()
        self.metrics = IpamMetrics.create(self.registry)
        self.withdraw_on_exit = withdraw_on_exit
        # SQLite serialises writers and the GIL the rest: few threads contend less; API calls wait on I/O
        workers = 8 if config.store == KUBERNETES else 2
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ipam")
        self.service = IpamService(
            store,
            node_name=config.node_name,
            settings=IpamSettings(
                enable_ipv4=config.ipam.enable_ipv4,
                enable_ipv6=config.ipam.enable_ipv6,
                enable_statefulset=config.ipam.enable_statefulset,
                conflict_retries=config.ipam.conflict_retries,
                block_size=config.ipam.block_size,
            ),
            on_conflict=self.metrics.conflicts.inc,
        )
        self._latency: dict[str, Histogram] = {}
        self._stopping = threading.Event()
        self._tracker = NodeAddresses(config.node_name)
        self._ready_tracker = ReadyAddresses(config.node_name)
        self._gate_ready = announcer is not None and announcer.announce_when_ready
        self._block_tracker = AffineBlocks(config.node_name)
        self._follow_blocks = announcer is not None and announcer.follows_blocks
        self._started = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- events from the CNI path and the store ---------------------------------------------------

    # The announcer hears of this node's addresses through one path, the endpoint watch
    # (_watch_endpoints): it sees every writer (this agent's CNI calls, the leader's GC on another node,
    # `spiderbgp ipam release`) in the store's order, so an address released and allocated again is
    # never left withdrawn by a late event of another path.  The CNI calls' own events only count.

    def _ips_added(self, ips: Mapping[str, str]) -> None:
        """This agent allocated ``ips`` on this node (the endpoint watch announces them)."""

    def _ips_removed(self, ips: Sequence[str]) -> None:
        """This agent released ``ips`` (the endpoint watch withdraws them)."""
        self.metrics.releases.inc(len(ips))

    def _observe(self, operation: str, code: int, seconds: float) -> None:
        latency = self._latency.get(operation)
        if latency is None:  # labels() looks the child up under a lock: once per operation
            latency = self._latency[operation] = self.metrics.latency.labels(operation)
        latency.observe(seconds)
        if code:
            self.metrics.errors.labels(operation).inc()
        elif operation == "add":
            self.metrics.allocations.inc()  # every answered ADD, whichever node the pod is on

    def _watch_endpoints(self, loop: asyncio.AbstractEventLoop, since: str) -> None:
        """Thread: follow SpiderEndpoints and pools and tell the announcer what changed on this node
        (this catches releases done by the leader's GC on another node, and pool subnet changes).
        Each event costs O(1); a full re-read runs only after a gap in the watch, and every
        ``FULL_RESYNC_SECONDS`` as a safety net."""
        next_full = time.monotonic() + FULL_RESYNC_SECONDS
        kinds = ["SpiderEndpoint", "SpiderIPPool", *(["Pod"] if self._gate_ready else [])]
        kinds += [BLOCK_KIND] if self._follow_blocks else []

        def advance(revision: str) -> None:
            """The store says nothing of these kinds changed up to ``revision`` (a Kubernetes
            BOOKMARK): resume from there, so a quiet watch outlives the store's compactions."""
            nonlocal since
            since = revision

        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_full:
                    since = self.store.revision()
                    self._push_full(loop, self._full_state())
                    next_full = time.monotonic() + FULL_RESYNC_SECONDS
                events = self.store.watch(
                    kinds, since, timeout=1.0, pods_on_node=self.config.node_name, progress=advance
                )
                for event in events:
                    since = event.revision
                    delta = self._tracker.apply([event])
                    ready = self._ready_tracker.apply([event]) if self._gate_ready else {}
                    if not delta.empty or ready:
                        loop.call_soon_threadsafe(self._push_delta, delta, ready)
                    blocks = self._block_tracker.apply([event]) if self._follow_blocks else None
                    if blocks is not None:
                        loop.call_soon_threadsafe(self._push_blocks, blocks)
                    if self._stopping.is_set() or time.monotonic() >= next_full:
                        break
            except Gone:
                next_full = 0.0  # missed events: read everything again
            except IpamError as exc:
                LOG.warning("endpoint watch: %s; retrying", exc)
                self._stopping.wait(1.0)
            except Exception:
                LOG.exception("endpoint watch failed; retrying")
                self._stopping.wait(1.0)

    def _full_state(self) -> NodeState:
        """(thread) This node's addresses, every pool's subnet and (announceWhen: ready) the Ready
        pods' addresses, from full lists (Pods listed last: an endpoint newer than the list of Pods
        only waits for its pod's next event)."""
        endpoints = self.store.list("SpiderEndpoint")
        ips, subnets = self._tracker.reset(endpoints, self.store.list("SpiderIPPool", allocated_ips=False))
        ready = self._ready_tracker.reset(endpoints, self.store.list("Pod")) if self._gate_ready else None
        blocks = (
            self._block_tracker.reset(self.store.list(BLOCK_KIND, allocated_ips=False))
            if self._follow_blocks
            else None
        )
        return NodeState(ips, subnets, ready, blocks)

    def _seed(self, state: NodeState) -> None:
        if self.announcer is not None:
            self.announcer.set_pool_subnets(state.subnets)
            self.announcer.set_pod_ips(state.ips)
            if state.ready is not None:
                self.announcer.set_ready_ips(state.ready)
            if state.blocks is not None:
                self.announcer.set_blocks(state.blocks)

    def _push_full(self, loop: asyncio.AbstractEventLoop, state: NodeState) -> None:
        loop.call_soon_threadsafe(self._seed, state)

    def _push_delta(self, delta: Delta, ready: Mapping[str, bool]) -> None:
        if self.announcer is None:
            return
        if delta.subnets is not None:
            self.announcer.set_pool_subnets(delta.subnets)
        if delta.removed:
            self.announcer.remove_pod_ips(delta.removed)
        if delta.added:
            self.announcer.add_pod_ips(delta.added)
        if ready:
            self.announcer.set_pod_ready(ready)

    def _push_blocks(self, blocks: frozenset[str]) -> None:
        if self.announcer is not None:
            self.announcer.set_blocks(blocks)

    def _gc_released(self, released: Sequence[tuple[str, str]], loop: asyncio.AbstractEventLoop) -> None:
        """From the leader's controller thread: (ip, reason) pairs the IP GC released."""
        for _ip, reason in released:
            self.metrics.gc_released.labels(reason).inc()
        self.metrics.releases.inc(len(released))  # the endpoint watch tells the announcer

    # -- the Node's NetworkUnavailable condition ----------------------------------------------------

    async def _keep_node_condition(self) -> None:
        """Task: write NetworkUnavailable=True while BGP has not converged, False once it has (on
        each flip, and once at start).  A store that fails is tried again at the next look."""
        assert self.announcer is not None
        loop = asyncio.get_running_loop()
        written: bool | None = None
        retry_at, backoff = 0.0, NODE_CONDITION_INTERVAL
        while not self._closing:  # a stopping agent writes nothing (its successor says what is true)
            why = self.announcer.readiness() if self._started else "the agent is starting"
            unavailable = why is not None
            if unavailable != written and time.monotonic() >= retry_at:
                message = why or "BGP sessions are Established and this node's routes are announced"
                try:
                    await loop.run_in_executor(
                        self.executor, self._write_node_condition, unavailable, message
                    )
                    written, backoff = unavailable, NODE_CONDITION_INTERVAL
                except IpamError as exc:  # e.g. no RBAC for nodes/status: say it once, retry slower
                    level = logging.WARNING if backoff == NODE_CONDITION_INTERVAL else logging.DEBUG
                    LOG.log(level, "node %s: cannot write NetworkUnavailable: %s", self.config.node_name, exc)
                    retry_at, backoff = time.monotonic() + backoff, min(backoff * 2, 60.0)
            await asyncio.sleep(NODE_CONDITION_INTERVAL)

    def _write_node_condition(self, unavailable: bool, message: str) -> None:
        """(thread) Read-modify-write of the Node's status; a Node not in the store is left alone."""
        for _ in range(5):
            try:
                node = self.store.get("Node", self.config.node_name)
            except NotFound:
                LOG.debug("node %s: no Node object to set NetworkUnavailable on", self.config.node_name)
                return
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            new = with_network_condition(node, unavailable=unavailable, message=message, now=now)
            if new is None:
                return
            try:
                self.store.update_status(new)
                LOG.info("node %s: NetworkUnavailable=%s (%s)", self.config.node_name, unavailable, message)
                return
            except Conflict:
                continue  # the kubelet wrote the status meanwhile: read it again

    # -- HTTP: BGP views on the CNI socket, health and metrics on TCP ---------------------------

    async def _bgp_status(self, request: web.Request) -> web.Response:
        if self.announcer is None:
            return web.json_response({"peers": [], "note": "BGP is not configured on this agent"})
        return web.json_response(
            {"peers": self.announcer.status(), "exabgpPipename": self.announcer.pipename()}
        )

    async def _bgp_routes(self, request: web.Request) -> web.Response:
        if self.announcer is None:
            return web.json_response({"routes": [], "note": "BGP is not configured on this agent"})
        return web.json_response(
            {"routes": await self.announcer.routes(), "suppressed": self.announcer.suppressed()}
        )

    def _ready(self) -> bool:
        return self._started

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        """200 once serving, the store answers and (with BGP) every peer is Established and has had
        the initial routes and End-of-RIB: the DaemonSet's readinessProbe, so a rolling update
        moves to the next node only when this one forwards again."""
        if not self._started:
            return web.Response(status=503, text="starting\n")
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.store.revision)
        except Exception as exc:
            return web.Response(status=503, text=f"store unavailable: {exc}\n")
        if self.announcer is not None:
            why = self.announcer.readiness()
            if why is not None:
                return web.Response(status=503, text=f"bgp: {why}\n")
        return web.Response(text="ok\n")

    def _pool_usage(self) -> list[tuple[str, int, int | None]]:
        """(pool, allocated, total) of every SpiderIPPool; the counts come with the pool object."""
        usage: list[tuple[str, int, int | None]] = []
        for pool in self.store.list("SpiderIPPool", allocated_ips=False):
            status = pool.get("status") or {}
            total = status.get("totalIPCount")
            usage.append(
                (
                    str(pool["metadata"]["name"]),
                    int(status.get("allocatedIPCount") or 0),
                    int(total) if isinstance(total, int) else None,
                )
            )
        return usage

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus text; the pool gauges are read from the store at scrape time (a pool deleted
        since the last scrape drops out; if the store does not answer they keep their last values)."""
        try:
            usage = await asyncio.get_running_loop().run_in_executor(self.executor, self._pool_usage)
        except Exception as exc:
            LOG.debug("pool usage for /metrics: %s", exc)
        else:
            self.metrics.pool_allocated.clear()
            self.metrics.pool_total.clear()
            for name, allocated, total in usage:
                self.metrics.pool_allocated.labels(name).set(allocated)
                if total is not None:
                    self.metrics.pool_total.labels(name).set(total)
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- lifecycle --------------------------------------------------------------------------------

    async def _serve_cni(self, app: web.Application) -> CniSocket:
        """Bind the CNI socket; a path that cannot be used is a ConfigError naming socketPath."""
        try:
            return await serve(app, self.config.socket_path)
        except SocketInUse as exc:
            raise ConfigError(self.config.source, "socketPath", str(exc)) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            where = f" ({exc.filename})" if exc.filename and exc.filename != self.config.socket_path else ""
            raise ConfigError(
                self.config.source,
                "socketPath",
                f"cannot serve on {self.config.socket_path}: {reason}{where}",
            ) from None

    async def _stop_cni(self, served: CniSocket) -> None:
        """Stop accepting CNI connections, give the requests of connections accepted just before a
        moment to arrive (closing a connection whose request has not been read yet would make the
        plugin see the agent hang up), let in-flight requests finish, remove the socket file (only
        the one this agent bound: a successor may already have bound its own)."""
        await served.stop_accepting()
        await asyncio.sleep(SHUTDOWN_GRACE)
        await shutdown(served)

    async def _serve_health(self) -> web.AppRunner:
        """Bind /healthz, /readyz and /metrics; an address that cannot be bound (no such host, port in
        use) is a ConfigError naming healthAddress."""
        health = web.Application()
        health.router.add_get("/healthz", self._healthz)
        health.router.add_get("/readyz", self._readyz)
        health.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(health, access_log=None)
        await runner.setup()
        host, port = self.config.health_host, self.config.health_port
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            reason = exc.strerror or str(exc)
            if "address already in use" in str(exc):
                reason = "address already in use"
            raise ConfigError(
                self.config.source, "healthAddress", f"cannot listen on {host}:{port}: {reason}"
            ) from None
        return runner

    async def run(self, stop: asyncio.Event) -> None:
        """Start every part, serve until ``stop`` is set, then stop them in order.  A part that fails
        to start stops the ones already started (no socket file left behind, the store closed)."""
        loop = asyncio.get_running_loop()
        backend = IpamBackend(
            self.service,
            executor=self.executor,
            events=NodeIpEvents(added=self._ips_added, removed=self._ips_removed),
            ready=self._ready,
            inline_wait=INLINE_WAIT,
        )
        runner: CniSocket | None = None
        health_runner: web.AppRunner | None = None
        watcher: threading.Thread | None = None
        leadership: Leadership | None = None
        announcer_started = False
        try:
            health_runner = await self._serve_health()
            since = ""
            if self.announcer is not None:
                since = await loop.run_in_executor(self.executor, self.store.revision)
                self._seed(await loop.run_in_executor(self.executor, self._full_state))
                announcer_started = True  # stop() is safe after a failed start
                await self.announcer.start()
            app = make_app(backend, metrics=self._observe)
            app.router.add_get("/v1/bgp/status", self._bgp_status)
            app.router.add_get("/v1/bgp/routes", self._bgp_routes)
            runner = await self._serve_cni(app)
            if self.announcer is not None:
                watcher = threading.Thread(
                    target=self._watch_endpoints, args=(loop, since), name="endpoint-watch", daemon=True
                )
                watcher.start()
            if self.config.ipam.leader.enabled:
                leadership = Leadership(
                    self.store,
                    self.config.ipam,
                    identity=self.config.node_name,
                    on_released=lambda released: self._gc_released(released, loop),
                    on_change=lambda leading: self.metrics.leader.set(1 if leading else 0),
                )
                leadership.start()
            if self.announcer is not None and self.announcer.writes_node_condition:
                self._tasks.append(asyncio.create_task(self._keep_node_condition(), name="node-condition"))
            self._started = True
            LOG.info("agent for node %s serving on %s", self.config.node_name, self.config.socket_path)
            await stop.wait()
        finally:
            self._closing = True
            served = self._started
            if served:
                LOG.info("stopping: finishing in-flight CNI requests")
            self._started = False
            if runner is not None:
                await self._stop_cni(runner)
            if leadership is not None:
                await leadership.stop()
            self._stopping.set()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.announcer is not None and announcer_started:
                await self.announcer.stop(withdraw=self.withdraw_on_exit)
            if health_runner is not None:
                await health_runner.cleanup()
            if watcher is not None:
                await loop.run_in_executor(None, watcher.join, 3.0)
            self.executor.shutdown(wait=True)
            self.store.close()
            if served:
                LOG.info("stopped")


def run_agent(
    config: AgentConfig, *, store_override: str | None = None, withdraw_on_exit: bool = False
) -> int:
    """Run until SIGTERM/SIGINT.  Returns the process exit code."""
    from spiderbgp.stores import open_store

    configure_logging(config.log_level, config.log_format)
    registry = CollectorRegistry()
    announcer = None
    if config.bgp is not None:
        from spiderbgp.bgp import build_announcer

        announcer = build_announcer(config, withdraw_on_exit=withdraw_on_exit, registry=registry)
    try:
        store = open_store(
            store_override or config.store,
            kubeconfig=config.kubeconfig,
            cached_kinds=CACHED_KINDS,
            max_pool_records=config.ipam.max_allocated_ips_per_pool,
        )
    except IpamError as exc:
        # name where the store came from: the config file's field, or the command line/environment
        if store_override:
            raise ConfigError("", "--store/SPIDERBGP_STORE", str(exc)) from None
        raise ConfigError(config.source, "store", str(exc)) from None
    agent = Agent(
        config,
        store,
        announcer=announcer,
        registry=registry,
        withdraw_on_exit=withdraw_on_exit or bool(announcer is not None and announcer.withdraw_on_exit),
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        await agent.run(stop)

    started = time.monotonic()
    asyncio.run(main())
    LOG.debug("agent ran %.1f s", time.monotonic() - started)
    return 0
