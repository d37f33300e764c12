"""The BGP speaker the agent owns: desired routes in, ExaBGP kept equal to them.

Inputs (call them from the event loop's thread; they never block):
* ``set_pod_ips({ip: pool_subnet})`` (full state), ``add_pod_ip(ip, subnet)``, ``remove_pod_ip(ip)``;
* ``set_pool_subnets(subnets)``: the pools' subnets, the outer limit of the export policy;
* the kernel's routes, from a ``HostRouteSource`` (pyroute2 netlink in production): with
  ``requireHostRoute`` an IP is announced only once its host route exists;
* with ``announceWhen: ready``, ``set_ready_ips(ips)`` (full state) and ``set_pod_ready({ip: bool})``:
  an IP is announced only while its pod is Ready, and withdrawn as soon as it is not;
* with ``damping``, a prefix withdrawn too often is held back (``bgp_speaker.damping``) until its
  penalty has decayed; a prefix without history is never delayed.

``readiness()`` says why the node is not converged yet (None once every peer is Established and has
had the initial routes, and the End-of-RIB with graceful restart): the agent's ``/readyz``.

The speaker is three parts: the desired-state bookkeeping (``bgp_speaker.desired.DesiredState``,
which the speaker extends: every input above, the desired prefixes, and ``plan()`` / ``acknowledge()``
around each send, no asyncio), the files and leftover processes of ExaBGP (``bgp_speaker.supervision``)
with one generation's process and pipes (``bgp_speaker.exabgp``), and, here, the tasks: the supervisor,
the sync/reconcile loop of a generation, the kernel route watch, and stop.

A supervisor task runs one ExaBGP *generation* at a time (``bgp_speaker.exabgp``).  For each
generation it announces the whole desired set, then sends only differences (batched, per peer,
acked).  A peer session coming ``up`` gets the full set from ExaBGP's adj-rib-out (which holds
exactly what was acked) and, with graceful restart (``manual-eor``), an End-of-RIB once every change
queued so far has been sent.  Every ``reconcileInterval`` the adj-rib-out is read
back through the API and any difference is repaired.  When ExaBGP dies (or its relay's connection
drops) the generation ends at once and a new one starts after a backoff (0.5 s doubling to 30 s).

``stop(withdraw=True)`` withdraws everything, waits for ExaBGP's acks and for the UPDATEs to leave,
then stops ExaBGP; ``stop(withdraw=False)`` just stops it, and with graceful restart the routers keep
the routes (stale) until the next agent replays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from bgp_speaker.commands import (
    SHOW_ADJ_RIB_OUT,
    AdjRibRoute,
    ShutdownEvent,
    StateEvent,
    parse_adj_rib_line,
    withdraw_commands,
)
from bgp_speaker.config import BgpConfig, IPNetwork, family_of
from bgp_speaker.desired import DesiredState, order
from bgp_speaker.exabgp import Event, ExabgpError, ExabgpGone, ExabgpProcess
from bgp_speaker.kernel import HostRouteSource
from bgp_speaker.metrics import SpeakerMetrics
from bgp_speaker.passwords import Secret, read_passwords
from bgp_speaker.render import exabgp_environment
from bgp_speaker.routes import plan_peer
from bgp_speaker.status import PeerStatus, apply_event, initial_status
from bgp_speaker.supervision import (
    CLI_PIPE_DIR,
    RELAY_SCRIPT,
    cli_pipename,
    default_exabgp_command,
    kill_leftover,
    prepare_runtime_dir,
    remove_runtime_files,
    write_private,
)

__all__ = [
    "CLI_PIPE_DIR",
    "RELAY_SCRIPT",
    "BgpSpeaker",
    "SpeakerNotRunning",
    "cli_pipename",
    "default_exabgp_command",
]

LOG = logging.getLogger(__name__)


class SpeakerNotRunning(RuntimeError):
    """ExaBGP is not running right now (starting, restarting, or stopped)."""


class BgpSpeaker(DesiredState):
    """The desired state (``bgp_speaker.desired``) kept in ExaBGP: one generation at a time."""

    def __init__(
        self,
        config: BgpConfig,
        *,
        exabgp_command: Sequence[str] | None = None,
        route_source: HostRouteSource | None = None,
        registry: CollectorRegistry | None = None,
        python: str = sys.executable,
        cli: bool = True,
        base_env: Mapping[str, str] | None = None,
        read_password: Callable[[str], bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        backoff: tuple[float, float] = (0.5, 30.0),
        start_timeout: float = 20.0,
    ) -> None:
        if config.require_host_route and route_source is None:
            raise ValueError("bgp.requireHostRoute needs a route source (NetlinkRouteSource)")
        super().__init__(config, metrics=SpeakerMetrics(registry), clock=clock, now=now)
        self.exabgp_command = list(exabgp_command or default_exabgp_command(python))
        self.route_source = route_source
        self.python = python
        self.cli = cli
        self.base_env = dict(base_env) if base_env is not None else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self._read_password = read_password
        self._backoff = backoff
        self._start_timeout = start_timeout
        self.runtime_dir = Path(config.runtime_dir)
        self.pipename = cli_pipename(config.runtime_dir)
        self._table_loaded = asyncio.Event()
        # ExaBGP side
        self._proc: ExabgpProcess | None = None
        self._up_pending: set[str] = set()  # session up, initial routes not yet confirmed sent
        self._initial_sent: set[str] = set()  # initial routes (and End-of-RIB) sent this session
        self._status: dict[str, PeerStatus] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = 0
        for p in config.peers:
            self._status[p.key] = initial_status(p.key, local_as=config.asn, peer_as=p.asn, now=now())
            self.metrics.session_up.labels(peer=p.key).set(0)
            self.metrics.announced_prefixes.labels(peer=p.key).set(0)

    # ---- inputs (the setters are DesiredState's) -------------------------------------------------

    def _changed(self) -> None:
        self._wake.set()

    def _exabgp_running(self) -> bool:
        return self._proc is not None

    # ---- kernel routes -------------------------------------------------------------------------

    async def _watch_routes(self) -> None:
        assert self.route_source is not None
        while not self._stopping:
            try:
                async for batch in self.route_source.watch():
                    if self.apply_routes(batch):
                        self._changed()
                    self._table_loaded.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                LOG.warning("kernel route watch failed (%s); restarting it", exc)
            await asyncio.sleep(1.0)

    # ---- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the runtime dir, start the route watch and ExaBGP.  BgpConfigError if the config
        cannot be used (a password file, the runtime dir).  An ExaBGP that does not start (it exits,
        or does not connect in time) is logged and retried in the background with the same backoff
        as one that dies later, as calico-node does with BIRD: the node keeps its IPAM meanwhile, and
        ``status()`` and the ``exabgp_up`` metric say why there is no session."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        passwords = (
            read_passwords(self.config)
            if self._read_password is None
            else read_passwords(self.config, read=self._read_password)
        )
        self._prepare_runtime_dir(passwords)
        self._table_loaded.clear()
        if self.route_source is not None:  # loads the kernel table while ExaBGP starts
            self._tasks.append(asyncio.create_task(self._watch_routes(), name="bgp-route-watch"))
        proc: ExabgpProcess | None = None
        try:
            proc = await self._spawn()
        except ExabgpError as exc:
            self._mark_down(str(exc))
            LOG.error("%s; retrying in %.1fs", exc, self._backoff[0])
        except BaseException:
            await self._cancel_tasks()
            self._started = False
            raise
        self._tasks.append(asyncio.create_task(self._supervise(proc), name="bgp-supervisor"))

    def _prepare_runtime_dir(self, passwords: Mapping[str, Secret]) -> None:
        kill_leftover(self.runtime_dir)
        self._config_template = prepare_runtime_dir(
            self.config, python=self.python, passwords=passwords, cli_pipe=self.pipename if self.cli else None
        )

    async def _spawn(self) -> ExabgpProcess:
        d = self.runtime_dir
        proc = ExabgpProcess(
            command=self.exabgp_command,
            config_path=d / "exabgp.conf",
            socket_path=d / "api.sock",
            log_path=d / "exabgp.log",
            env={**self.base_env, **exabgp_environment(pipename=self.pipename, cli=self.cli)},
            on_event=self._on_event,
        )
        write_private(d / "exabgp.conf", self._config_template.replace(" TOKEN;", f" {proc.token};", 1))
        await proc.start(timeout=self._start_timeout)
        (d / "exabgp.pid").write_text(f"{proc.pid}\n")
        self._proc = proc
        self.metrics.exabgp_up.set(1)
        self._announced = {k: set() for k in self._peers}
        self._full_sync = True
        self._eor_due = set()
        self._up_pending = set()
        self._initial_sent = set()
        now = self._now()
        for p in self.config.peers:
            self._status[p.key] = initial_status(p.key, local_as=self.config.asn, peer_as=p.asn, now=now)
        LOG.info("ExaBGP started (pid %s)", proc.pid)
        return proc

    async def _supervise(self, proc: ExabgpProcess | None) -> None:
        """Run ExaBGP generation after generation; ``proc`` None: the first start failed (retry)."""
        delay = self._backoff[0]
        if proc is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])
        while not self._stopping:
            if proc is None:
                try:
                    proc = await self._spawn()
                except ExabgpError as exc:
                    self._mark_down(str(exc))
                    LOG.error("%s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff[1])
                    continue
            born = self._clock()
            await self._run_generation(proc)
            if self._stopping:
                return
            self.metrics.exabgp_up.set(0)
            self._mark_down(proc.close_reason)
            LOG.error("ExaBGP stopped unexpectedly (%s); restarting", proc.close_reason)
            await proc.stop(grace=1.0)
            self._proc = None
            self.restarts += 1
            self.metrics.exabgp_restarts.inc()
            if self._clock() - born > 30.0:
                delay = self._backoff[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])
            proc = None

    def _mark_down(self, reason: str) -> None:
        self._up_pending = set()
        self._initial_sent = set()
        now = self._now()
        for key, st in self._status.items():
            self._status[key] = PeerStatus(
                address=st.address,
                peer_type=st.peer_type,
                state="down",
                since=now,
                info=f"ExaBGP not running ({reason})" if reason else "ExaBGP not running",
            )
            self.metrics.session_up.labels(peer=key).set(0)

    async def _run_generation(self, proc: ExabgpProcess) -> None:
        if self.route_source is not None and not self._table_loaded.is_set():
            # announce from the complete kernel table, never from a half-read one
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._table_loaded.wait(), 10.0)
        interval = self.config.reconcile_interval
        next_reconcile = self._clock() + interval if interval > 0 else None
        # the generation's end wakes the loop like any input does, so waiting for work is a wait on
        # one event (no pair of tasks to create and cancel on every change)
        closer = asyncio.create_task(self._wake_when_closed(proc), name="bgp-generation-end")
        try:
            while not proc.closed.is_set() and not self._stopping:
                try:
                    await self._sync(proc)
                    if next_reconcile is not None and self._clock() >= next_reconcile:
                        await self._reconcile(proc)
                        next_reconcile = self._clock() + interval
                except ExabgpGone:
                    return
                wake_at = [t for t in (next_reconcile, self._next_reuse()) if t is not None]
                timeout = max(0.0, min(wake_at) - self._clock()) if wake_at else None
                await self._wait_for_work(timeout)
        finally:
            closer.cancel()

    async def _wake_when_closed(self, proc: ExabgpProcess) -> None:
        await proc.closed.wait()
        self._wake.set()

    async def _wait_for_work(self, timeout: float | None) -> None:
        if self._wake.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    # ---- talking to ExaBGP ---------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ShutdownEvent):
            LOG.info("ExaBGP is shutting down")
            return
        assert isinstance(event, StateEvent)
        key = self._peer_key(event.peer)
        if key is None:
            return
        before = self._status[key]
        self._status[key] = apply_event(before, event, now=self._now())
        self.metrics.session_up.labels(peer=key).set(1 if self._status[key].established else 0)
        if event.state == "up":
            # ExaBGP re-sends its whole adj-rib-out (= what we announced) on every new session by
            # itself; with graceful restart (manual-eor) we add the End-of-RIB once our changes
            # queued so far are in, so the router keeps its stale routes until the set is complete.
            LOG.info("BGP session with %s is up", key)
            self._up_pending.add(key)
            self._initial_sent.discard(key)
            if self._peers[key].graceful_restart > 0:
                self._eor_due.add(key)
            self._changed()
        elif event.state != "up":
            self._up_pending.discard(key)
            self._initial_sent.discard(key)
            if event.state == "down" and before.established:
                LOG.warning("BGP session with %s went down: %s", key, event.reason)

    def _peer_key(self, address: str) -> str | None:
        try:
            key = str(ipaddress.ip_address(address))
        except ValueError:
            return None
        return key if key in self._peers else None

    async def _sync(self, proc: ExabgpProcess) -> None:
        self._wake.clear()
        self._release_reused()
        ops = self.plan()
        if not ops:
            self._observe_latency()
            self._settle_initial(set())
            return
        lines = [line for _, cmds in ops for line in cmds]
        try:
            results = await proc.send_many(lines)
        except BaseException:
            self._full_sync = True  # whatever was not acked is compared again in full
            raise
        failed, eor_sent = self.acknowledge(ops, results)
        self._observe_latency()
        if failed:  # try again later (in full) rather than spinning
            asyncio.get_running_loop().call_later(5.0, self._changed)
        else:
            self._settle_initial(eor_sent)

    def _settle_initial(self, eor_sent: set[str]) -> None:
        """After a sync that sent everything queued: peers whose session came up have had their
        initial routes (ExaBGP replays its adj-rib-out itself) and, with graceful restart, the EoR."""
        for key in list(self._up_pending):
            if key in self._eor_due:
                continue
            if self._peers[key].graceful_restart > 0 and key not in eor_sent:
                continue
            if self._status[key].established:
                self._up_pending.discard(key)
                self._initial_sent.add(key)

    def readiness(self) -> str | None:
        """None when the node is converged: ExaBGP runs, the kernel routes are loaded, and every
        peer is Established and has had the initial routes (and End-of-RIB); else the reason."""
        if not self.running:
            return "ExaBGP is not running"
        if self.route_source is not None and not self._table_loaded.is_set():
            return "the kernel's routes are not loaded yet"
        for p in self.config.peers:
            st = self._status[p.key]
            if not st.established:
                return f"BGP peer {p.key} is not Established ({st.state})"
            if p.key not in self._initial_sent:
                eor = " and End-of-RIB" if p.graceful_restart > 0 else ""
                return f"BGP peer {p.key}: initial routes{eor} not sent yet"
        return None

    async def _adj_rib_out(self, proc: ExabgpProcess) -> list[AdjRibRoute]:
        result = await proc.send(SHOW_ADJ_RIB_OUT)
        routes: list[AdjRibRoute] = []
        for line in result.output:
            routes.extend(parse_adj_rib_line(line))
        return routes

    async def _reconcile(self, proc: ExabgpProcess) -> int:
        """Read ExaBGP's adj-rib-out, take it as the truth, and let the next sync repair it."""
        self.metrics.reconcile_runs.inc()
        routes = await self._adj_rib_out(proc)
        actual: dict[str, set[IPNetwork]] = {k: set() for k in self._peers}
        wrong: dict[str, set[IPNetwork]] = {k: set() for k in self._peers}
        for r in routes:
            key = self._peer_key(r.peer)
            if key is None:
                continue
            actual[key].add(r.prefix)
            attrs = self._attrs.get((key, family_of(r.prefix)))
            if attrs is not None and r.next_hop is not None and r.next_hop != attrs.next_hop:
                wrong[key].add(r.prefix)
        repairs = 0
        for key, believed in self._announced.items():
            diff = (actual[key] ^ believed) | wrong[key]
            if diff:
                LOG.warning("reconcile: %d prefixes differ for peer %s; repairing", len(diff), key)
                repairs += len(diff)
                # a route with the wrong next hop counts as missing: announcing it again replaces it
                self._announced[key] = actual[key] - wrong[key]
        if repairs:
            self._full_sync = True
            self.metrics.reconcile_repairs.inc(repairs)
            await self._sync(proc)
        return repairs

    # ---- queries -------------------------------------------------------------------------------

    def status(self) -> list[PeerStatus]:
        """One entry per configured peer (like ``calicoctl node status``)."""
        out: list[PeerStatus] = []
        for p in self.config.peers:
            st = self._status[p.key]
            out.append(
                PeerStatus(
                    address=st.address,
                    peer_type=st.peer_type,
                    state=st.state,
                    since=st.since,
                    info=st.info,
                    established=st.established,
                    prefixes=len(self._announced.get(p.key, ())),
                )
            )
        return out

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._proc.closed.is_set()

    async def routes(self) -> list[AdjRibRoute]:
        """ExaBGP's adj-rib-out, read through its API (``show adj-rib out json``, format v2)."""
        proc = self._proc
        if proc is None or proc.closed.is_set():
            raise SpeakerNotRunning("ExaBGP is not running")
        try:
            return await self._adj_rib_out(proc)
        except ExabgpGone as exc:
            raise SpeakerNotRunning(str(exc)) from None

    async def reconcile_now(self) -> int:
        """Run one reconciliation now; returns the number of repaired prefixes."""
        proc = self._proc
        if proc is None or proc.closed.is_set():
            raise SpeakerNotRunning("ExaBGP is not running")
        return await self._reconcile(proc)

    async def wait_synced(self, timeout: float = 10.0) -> None:
        """Wait until ExaBGP holds exactly the desired routes (for tests and the drain path)."""
        deadline = self._clock() + timeout
        while True:
            proc = self._proc
            if proc is not None and not proc.closed.is_set() and not self._wake.is_set():
                desired = self.desired()
                if all(
                    plan_peer(
                        self._desired_for(p, desired), self._announced[p.key], limit=p.max_prefixes
                    ).empty
                    for p in self.config.peers
                ):
                    return
            if self._clock() >= deadline:
                raise TimeoutError(f"BGP speaker not in sync after {timeout:.0f}s")
            await asyncio.sleep(0.02)

    # ---- stop ----------------------------------------------------------------------------------

    async def stop(self, *, withdraw: bool | None = None, drain_timeout: float = 5.0) -> None:
        """Stop ExaBGP.  With ``withdraw`` (default: bgp.withdrawOnExit) withdraw every route first
        and wait for ExaBGP's acks and for the UPDATEs to be sent."""
        if withdraw is None:
            withdraw = self.config.withdraw_on_exit
        self._stopping = True
        self._wake.set()
        supervisor = [t for t in self._tasks if t.get_name() == "bgp-supervisor"]
        for t in supervisor:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        proc = self._proc
        if withdraw and proc is not None and not proc.closed.is_set():
            try:
                await asyncio.wait_for(self._withdraw_all(proc), drain_timeout)
            except (TimeoutError, ExabgpGone) as exc:
                LOG.warning("withdraw on exit incomplete: %s", exc or "timeout")
        if proc is not None:
            await proc.stop()
        self._proc = None
        self.metrics.exabgp_up.set(0)
        self._mark_down("stopped")
        await self._cancel_tasks()
        self._cleanup_files()
        self._started = False

    async def _withdraw_all(self, proc: ExabgpProcess) -> None:
        before = await self._updates_sent(proc)
        lines: list[str] = []
        desired = self.desired()
        for p in self.config.peers:
            every = self._announced[p.key] | self._desired_for(p, desired)
            for fam in p.families:
                attrs = self._attrs.get((p.key, fam))
                gone = sorted((x for x in every if family_of(x) == fam), key=order)
                if attrs is not None and gone:
                    lines.extend(withdraw_commands(p.key, attrs, gone))
        if not lines:
            return
        established = {k for k, st in self._status.items() if st.established and self._announced[k]}
        results = await proc.send_many(lines)
        if all(r.ok for r in results):
            for k in self._announced:
                self._announced[k].clear()
        # "done" means queued in the adj-rib-out; wait until the UPDATE counters stop moving
        if not established:
            return
        last = before
        stable = 0
        while stable < 2:
            await asyncio.sleep(0.05)
            now = await self._updates_sent(proc)
            moved = any(now.get(k, 0) > before.get(k, 0) for k in established)
            stable = stable + 1 if (now == last and moved) else 0
            last = now

    async def _updates_sent(self, proc: ExabgpProcess) -> dict[str, int]:
        result = await proc.send("show neighbor json")
        counts: dict[str, int] = {}
        for line in result.output:
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            for n in data if isinstance(data, list) else []:
                try:
                    counts[str(n["peer"]["address"])] = int(n["messages"]["sent"]["update"])
                except (KeyError, TypeError, ValueError):
                    continue
        return counts

    async def _cancel_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []

    def _cleanup_files(self) -> None:
        remove_runtime_files(self.runtime_dir, cli_pipe=self.pipename if self.cli else None)
