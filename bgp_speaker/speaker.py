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
import hashlib
import ipaddress
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from bgp_speaker.commands import (
    SHOW_ADJ_RIB_OUT,
    AdjRibRoute,
    RouteAttributes,
    ShutdownEvent,
    StateEvent,
    announce_commands,
    attributes_for,
    eor_command,
    parse_adj_rib_line,
    withdraw_commands,
)
from bgp_speaker.config import BgpConfig, Family, IPAddress, IPNetwork, PeerConfig, family_of
from bgp_speaker.damping import FlapState, is_suppressed, penalty_at, reuse_at, stale, withdrawn
from bgp_speaker.exabgp import Event, ExabgpError, ExabgpGone, ExabgpProcess
from bgp_speaker.kernel import HostRouteSource, RouteTable
from bgp_speaker.metrics import SpeakerMetrics
from bgp_speaker.passwords import Secret, read_passwords
from bgp_speaker.render import exabgp_environment, render_exabgp_config
from bgp_speaker.routes import ExportPolicy, advertised_prefixes, host_prefix, plan_peer
from bgp_speaker.status import PeerStatus, apply_event, initial_status

__all__ = ["BgpSpeaker", "SpeakerNotRunning", "cli_pipename", "default_exabgp_command"]

log = logging.getLogger(__name__)

RELAY_SCRIPT = Path(__file__).with_name("relay.py")
CLI_PIPE_DIR = Path("/run/exabgp")


class SpeakerNotRunning(RuntimeError):
    """ExaBGP is not running right now (starting, restarting, or stopped)."""


def default_exabgp_command(python: str = sys.executable) -> list[str]:
    """``<venv>/bin/exabgp server`` beside the interpreter, else ``python -m exabgp server``."""
    beside = Path(python).parent / "exabgp"
    if beside.exists():
        return [str(beside), "server"]
    return [python, "-m", "exabgp", "server"]


def cli_pipename(runtime_dir: str) -> str:
    """The ExaBGP CLI pipe name of the agent using ``runtime_dir`` (``exabgp-cli --pipename NAME``)."""
    return "spiderbgp-" + hashlib.sha1(runtime_dir.encode()).hexdigest()[:10]


def _ip(value: IPAddress | str) -> IPAddress:
    return value if not isinstance(value, str) else ipaddress.ip_address(value)


def _net(value: IPNetwork | str) -> IPNetwork:
    return value if not isinstance(value, str) else ipaddress.ip_network(value, strict=False)


@dataclass
class _Op:
    peer: str
    action: str  # announce | withdraw | eor
    prefixes: tuple[IPNetwork, ...] = ()


class BgpSpeaker:
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
        self.config = config
        self.exabgp_command = list(exabgp_command or default_exabgp_command(python))
        self.route_source = route_source
        self.metrics = SpeakerMetrics(registry)
        self.python = python
        self.cli = cli
        self.base_env = dict(base_env) if base_env is not None else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self._read_password = read_password
        self._clock = clock
        self._now = now
        self._backoff = backoff
        self._start_timeout = start_timeout
        self.runtime_dir = Path(config.runtime_dir)
        self.pipename = cli_pipename(config.runtime_dir)
        self._peers: dict[str, PeerConfig] = {p.key: p for p in config.peers}
        self._attrs: dict[tuple[str, Family], RouteAttributes] = {}
        for p in config.peers:
            for fam in p.families:
                hop = config.next_hop(fam)
                if hop is not None:
                    self._attrs[(p.key, fam)] = attributes_for(p, hop)
        node_addrs = {a for a in (config.next_hop_v4, config.next_hop_v6) if a is not None}
        node_addrs.update(p.local_address for p in config.peers if p.local_address is not None)
        self._policy = ExportPolicy(export_cidrs=config.export_cidrs, node_addresses=frozenset(node_addrs))
        # inputs
        self._pods: dict[IPAddress, IPNetwork] = {}
        self._eligible: dict[IPAddress, tuple[IPNetwork, IPNetwork]] = {}  # ip -> (host prefix, subnet)
        self._refused: dict[IPAddress, str] = {}
        self._table = RouteTable()
        self._ready: set[IPAddress] = set()
        self._by_subnet: dict[IPNetwork, set[IPAddress]] = {}  # pod IPs per pool subnet
        # the host prefixes of eligible, ready IPs (-> pool subnet), kept current input by input, and
        # those whose membership changed since the last sync: with ``advertise: host`` and no
        # ``maxPrefixes`` a sync looks only at those, so one new pod costs the same with 10 pods
        # or 10,000 on the node; ``_full_sync`` asks for a whole comparison instead
        self._hosts: dict[IPNetwork, IPNetwork] = {}
        self._dirty: set[IPNetwork] = set()
        self._full_sync = True
        self._incremental = config.advertise == "host" and all(p.max_prefixes is None for p in config.peers)
        self._table_loaded = asyncio.Event()
        self._allocated_at: dict[IPAddress, float] = {}
        # announceWhen: ready: the IPs whose pod is Ready (only IPs in _pods are kept)
        self._gate_ready = config.announce_when == "ready"
        self._pod_ready: set[IPAddress] = set()
        # damping: per host prefix, its flap history, and the suppressed ones with their reuse time
        self._damping = config.damping
        self._flaps: dict[IPNetwork, FlapState] = {}
        self._suppressed: dict[IPNetwork, float] = {}
        self._next_sweep = 0.0
        # convergence telemetry (clock times): allocated (add_pod_ip, not the full sets of set_pod_ips)
        # and waiting for the host route; host prefix desired since (route + Ready + not suppressed,
        # while ExaBGP runs); left the desired set (when, why); first acked
        self._route_pending: dict[IPAddress, float] = {}
        self._entered_at: dict[IPNetwork, float] = {}
        self._left_at: dict[IPNetwork, tuple[float, str]] = {}
        self._announced_at: dict[IPNetwork, float] = {}
        self._track_hosts = config.advertise == "host"
        self.metrics.suppressed_prefixes.set_function(lambda: len(self.suppressed()))
        # ExaBGP side
        self._proc: ExabgpProcess | None = None
        self._announced: dict[str, set[IPNetwork]] = {k: set() for k in self._peers}
        self._eor_due: set[str] = set()
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

    # ---- inputs ----------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._wake.set()

    def _admit(self, ip: IPAddress, subnet: IPNetwork) -> None:
        why = self._policy.refusal(ip, subnet)
        if why is None:
            self._eligible[ip] = (host_prefix(ip), subnet)
            self._refused.pop(ip, None)
        else:
            self._eligible.pop(ip, None)
            if self._refused.get(ip) != why:
                log.warning("BGP export policy: not announcing %s (pool %s): %s", ip, subnet, why)
            self._refused[ip] = why
        if self._table.is_local(ip):
            self._ready.add(ip)
            self._route_seen(ip)
        else:
            self._ready.discard(ip)
        self._refresh(ip, "route")

    def _route_seen(self, ip: IPAddress) -> None:
        since = self._route_pending.pop(ip, None)
        if since is not None:
            self.metrics.convergence.labels(stage="allocated_to_route").observe(self._clock() - since)

    def _refresh(self, ip: IPAddress, why: str) -> None:
        """Bring ``ip``'s host prefix in ``_hosts`` in line with its eligibility, readiness and
        damping; ``why``: what changed (released, unready, route), for the withdrawal telemetry."""
        entry = self._eligible.get(ip)
        if entry is not None and self._is_ready(ip):
            host = entry[0]
            if self._hosts.get(host) == entry[1] or self._held_by_damping(host):
                return
            if host not in self._hosts and self._track_hosts and self._proc is not None:
                # (not while seeding at start: the first announcements wait for ExaBGP, not for us)
                self._entered_at[host] = self._clock()
                self._left_at.pop(host, None)
            self._hosts[host] = entry[1]
            self._dirty.add(host)
        else:
            host = host_prefix(ip)
            was = self._hosts.pop(host, None) is not None
            held = self._suppressed.pop(host, None) is not None
            if was:
                self._dirty.add(host)
                if self._track_hosts:
                    self._entered_at.pop(host, None)
                    self._left_at[host] = (self._clock(), why)
            if (was or held) and self._damping is not None:
                now, before = self._clock(), self._flaps.get(host)
                after = self._flaps[host] = withdrawn(before, now, self._damping)
                if after.suppressed and not is_suppressed(before, now, self._damping):
                    self.metrics.damping_suppressions.inc()
                    log.info("damping: %s suppressed after %d withdrawals", host, after.withdrawals)

    def _held_by_damping(self, host: IPNetwork) -> bool:
        """True while ``host`` is suppressed (it is then kept in ``_suppressed`` with its reuse time)."""
        if self._damping is None:
            return False
        state = self._flaps.get(host)
        if state is None:
            return False  # no history: a new pod's first announcement is never delayed
        now = self._clock()
        if is_suppressed(state, now, self._damping):
            until = reuse_at(state, self._damping)
            assert until is not None
            if host not in self._suppressed:
                log.info("damping: holding %s back for %.1f s", host, until - now)
            self._suppressed[host] = until
            return True
        self._suppressed.pop(host, None)
        if stale(state, now, self._damping):
            del self._flaps[host]
        return False

    def _release_reused(self) -> None:
        """Announce the suppressed prefixes whose reuse time has come; now and then forget flap
        histories that no longer matter."""
        if self._damping is None:
            return
        now = self._clock()
        for host, until in list(self._suppressed.items()):
            if now >= until:
                self._refresh(host.network_address, "route")
        if now >= self._next_sweep:
            self._next_sweep = now + 60.0
            damping = self._damping
            for host in [h for h, st in self._flaps.items() if stale(st, now, damping)]:
                if host not in self._hosts:
                    del self._flaps[host]

    def _next_reuse(self) -> float | None:
        return min(self._suppressed.values()) if self._suppressed else None

    def _set_pod(self, ip: IPAddress, subnet: IPNetwork) -> None:
        old = self._pods.get(ip)
        if old is not None and old != subnet:
            self._unindex(ip, old)
        self._pods[ip] = subnet
        self._by_subnet.setdefault(subnet, set()).add(ip)

    def _unindex(self, ip: IPAddress, subnet: IPNetwork) -> None:
        ips = self._by_subnet.get(subnet)
        if ips is not None:
            ips.discard(ip)
            if not ips:
                del self._by_subnet[subnet]

    def set_pod_ips(
        self,
        ips: Mapping[str, str] | Mapping[IPAddress, IPNetwork] | Mapping[IPAddress | str, IPNetwork | str],
    ) -> None:
        """Replace the whole set of pod IPs allocated on this node (IP -> its pool's subnet)."""
        items: Iterable[tuple[IPAddress | str, IPNetwork | str]] = ips.items()
        subnets: dict[IPNetwork | str, IPNetwork] = {}  # thousands of IPs share a few pool subnets
        new: dict[IPAddress, IPNetwork] = {}
        for ip, subnet in items:
            net = subnets.get(subnet)
            if net is None:
                net = subnets[subnet] = _net(subnet)
            new[_ip(ip)] = net
        now = self._clock()
        for ip in set(self._pods) - set(new):
            self._forget(ip)
        for ip, subnet in new.items():
            if ip not in self._pods:
                self._allocated_at[ip] = now
            if self._pods.get(ip) != subnet:
                self._set_pod(ip, subnet)
                self._admit(ip, subnet)
        self._update_refused_metric()
        self._changed()

    def add_pod_ip(self, ip: IPAddress | str, subnet: IPNetwork | str) -> None:
        """An IP was allocated on this node (announced once its host route exists)."""
        addr, net = _ip(ip), _net(subnet)
        if self._pods.get(addr) == net:
            return
        self._allocated_at.setdefault(addr, self._clock())
        self._route_pending.setdefault(addr, self._clock())
        self._set_pod(addr, net)
        self._admit(addr, net)
        self._update_refused_metric()
        self._changed()

    def remove_pod_ip(self, ip: IPAddress | str) -> None:
        """An IP was released on this node (withdrawn at once)."""
        addr = _ip(ip)
        if addr in self._pods:
            self._forget(addr)
            self._update_refused_metric()
            self._changed()

    def _forget(self, ip: IPAddress) -> None:
        subnet = self._pods.pop(ip, None)
        if subnet is not None:
            self._unindex(ip, subnet)
        self._eligible.pop(ip, None)
        self._refused.pop(ip, None)
        self._ready.discard(ip)
        self._pod_ready.discard(ip)
        self._allocated_at.pop(ip, None)
        self._route_pending.pop(ip, None)
        self._refresh(ip, "released")

    def set_ready_ips(self, ips: Iterable[IPAddress | str]) -> None:
        """``announceWhen: ready``: the whole set of this node's IPs whose pod is Ready."""
        new = {a for a in (_ip(i) for i in ips) if a in self._pods}
        old, self._pod_ready = self._pod_ready, new
        for ip in old ^ new:
            self._refresh(ip, "unready")
        self._changed()

    def set_pod_ready(self, changes: Mapping[IPAddress | str, bool] | Mapping[str, bool]) -> None:
        """``announceWhen: ready``: some IPs' pods turned Ready (True) or NotReady/terminating (False).
        IPs not allocated here are ignored (their readiness comes again with their allocation)."""
        touched = False
        for raw, ready in changes.items():
            ip = _ip(raw)
            if ip not in self._pods or (ip in self._pod_ready) == ready:
                continue
            if ready:
                self._pod_ready.add(ip)
            else:
                self._pod_ready.discard(ip)
            self._refresh(ip, "unready")
            touched = True
        if touched:
            self._changed()

    def set_pool_subnets(self, subnets: Iterable[IPNetwork | str]) -> None:
        """The subnets of the IP pools: nothing outside them is ever announced."""
        nets = frozenset(_net(s) for s in subnets)
        if nets == self._policy.pool_subnets:
            return
        self._policy = ExportPolicy(
            pool_subnets=nets,
            export_cidrs=self._policy.export_cidrs,
            node_addresses=self._policy.node_addresses,
        )
        for ip, subnet in self._pods.items():
            self._admit(ip, subnet)
        self._update_refused_metric()
        self._changed()

    def _update_refused_metric(self) -> None:
        self.metrics.refused_prefixes.set(len(self._refused))

    @property
    def refused(self) -> dict[str, str]:
        """Pod IPs the export policy keeps out of BGP, with the reason."""
        return {str(ip): why for ip, why in self._refused.items()}

    # ---- kernel routes -------------------------------------------------------------------------

    async def _watch_routes(self) -> None:
        assert self.route_source is not None
        while not self._stopping:
            try:
                async for batch in self.route_source.watch():
                    touched = self._table.apply(batch)
                    if self._recheck_ready(touched, full=batch.reset):
                        self._changed()
                    self._table_loaded.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("kernel route watch failed (%s); restarting it", exc)
            await asyncio.sleep(1.0)

    def _recheck_ready(self, touched: set[IPNetwork], *, full: bool) -> bool:
        """Re-evaluate the pod IPs a route change can affect: the pod IP of a host route, and the
        pod IPs inside a wider route (found through their pool subnets, so a link route of another
        family or range, like a new veth's fe80::/64, costs nothing)."""
        if full:
            candidates: Iterable[IPAddress] = list(self._pods)
        else:
            found: set[IPAddress] = set()
            for t in touched:
                if t.prefixlen == t.max_prefixlen:
                    if t.network_address in self._pods:
                        found.add(t.network_address)
                    continue
                for subnet, ips in self._by_subnet.items():
                    if subnet.version != t.version or not subnet.overlaps(t):
                        continue
                    if subnet.subnet_of(t):  # type: ignore[arg-type]
                        found.update(ips)
                    else:
                        found.update(ip for ip in ips if ip in t)
            candidates = found
        changed = False
        for ip in candidates:
            local = self._table.is_local(ip)
            if local != (ip in self._ready):
                changed = True
                if local:
                    self._ready.add(ip)
                    self._route_seen(ip)
                else:
                    self._ready.discard(ip)
                self._refresh(ip, "route")
        return changed

    def _is_ready(self, ip: IPAddress) -> bool:
        """Announceable: routed here (with requireHostRoute) and, with announceWhen: ready, Ready."""
        if self.config.require_host_route and ip not in self._ready:
            return False
        return not self._gate_ready or ip in self._pod_ready

    # ---- desired state -----------------------------------------------------------------------

    def desired(self) -> frozenset[IPNetwork]:
        """The prefixes this node should announce right now (before per-peer families and limits)."""
        return advertised_prefixes(
            self._hosts, mode=self.config.advertise, export_cidrs=self.config.export_cidrs
        )

    def _desired_for(self, peer: PeerConfig, desired: frozenset[IPNetwork]) -> set[IPNetwork]:
        fams = set(peer.families)
        if fams == {"ipv4", "ipv6"}:
            return set(desired)
        return {p for p in desired if family_of(p) in fams}

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
            log.error("%s; retrying in %.1fs", exc, self._backoff[0])
        except BaseException:
            await self._cancel_tasks()
            self._started = False
            raise
        self._tasks.append(asyncio.create_task(self._supervise(proc), name="bgp-supervisor"))

    def _prepare_runtime_dir(self, passwords: Mapping[str, Secret]) -> None:
        d = self.runtime_dir
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        self._kill_leftover()
        relay = [self.python, str(RELAY_SCRIPT), str(d / "api.sock"), "TOKEN"]
        # the token is per generation: the config is rendered with a placeholder and rewritten in _spawn
        self._config_template = render_exabgp_config(self.config, relay_argv=relay, passwords=passwords)
        if self.cli:
            CLI_PIPE_DIR.mkdir(parents=True, exist_ok=True)
            for suffix in (".in", ".out"):
                path = CLI_PIPE_DIR / f"{self.pipename}{suffix}"
                with contextlib.suppress(FileNotFoundError):
                    if not stat.S_ISFIFO(path.stat().st_mode):
                        path.unlink()
                if not path.exists():
                    os.mkfifo(path, 0o600)

    def _kill_leftover(self) -> None:
        """Stop an ExaBGP that a previous agent with the same runtime dir left running."""
        pid_file = self.runtime_dir / "exabgp.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.runtime_dir / "exabgp.conf").encode() in cmdline:
            log.warning("stopping ExaBGP %d left by a previous agent", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

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
        text = self._config_template.replace(" TOKEN;", f" {proc.token};", 1)
        conf = d / "exabgp.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(conf, 0o600)
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
        log.info("ExaBGP started (pid %s)", proc.pid)
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
                    log.error("%s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff[1])
                    continue
            born = self._clock()
            await self._run_generation(proc)
            if self._stopping:
                return
            self.metrics.exabgp_up.set(0)
            self._mark_down(proc.close_reason)
            log.error("ExaBGP stopped unexpectedly (%s); restarting", proc.close_reason)
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
            log.info("ExaBGP is shutting down")
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
            log.info("BGP session with %s is up", key)
            self._up_pending.add(key)
            self._initial_sent.discard(key)
            if self._peers[key].graceful_restart > 0:
                self._eor_due.add(key)
            self._changed()
        elif event.state != "up":
            self._up_pending.discard(key)
            self._initial_sent.discard(key)
            if event.state == "down" and before.established:
                log.warning("BGP session with %s went down: %s", key, event.reason)

    def _peer_key(self, address: str) -> str | None:
        try:
            key = str(ipaddress.ip_address(address))
        except ValueError:
            return None
        return key if key in self._peers else None

    def _ops_for_peer(self, peer: PeerConfig, desired: frozenset[IPNetwork]) -> list[tuple[_Op, list[str]]]:
        """The whole comparison: everything desired against everything announced."""
        want = self._desired_for(peer, desired)
        plan = plan_peer(want, self._announced[peer.key], limit=peer.max_prefixes)
        self.metrics.held_back_prefixes.labels(peer=peer.key).set(len(plan.held_back))
        return self._peer_ops(peer, plan.announce, plan.withdraw)

    def _changed_ops_for_peer(
        self, peer: PeerConfig, dirty: Sequence[IPNetwork]
    ) -> list[tuple[_Op, list[str]]]:
        """Only the host prefixes whose membership changed (``advertise: host``, no limit)."""
        fams = set(peer.families)
        announced = self._announced[peer.key]
        new: list[IPNetwork] = []
        gone: list[IPNetwork] = []
        for p in dirty:
            if family_of(p) not in fams:
                continue
            if p in self._hosts:
                if p not in announced:
                    new.append(p)
            elif p in announced:
                gone.append(p)
        return self._peer_ops(peer, new, gone)

    def _peer_ops(
        self, peer: PeerConfig, announce: Sequence[IPNetwork], withdraw: Sequence[IPNetwork]
    ) -> list[tuple[_Op, list[str]]]:
        key = peer.key
        ops: list[tuple[_Op, list[str]]] = []
        for fam in peer.families:
            attrs = self._attrs.get((key, fam))
            if attrs is None:
                continue
            gone = tuple(p for p in withdraw if family_of(p) == fam)
            if gone:
                ops.append((_Op(key, "withdraw", gone), withdraw_commands(key, attrs, gone)))
            new = tuple(p for p in announce if family_of(p) == fam)
            if new:
                ops.append((_Op(key, "announce", new), announce_commands(key, attrs, new)))
        if key in self._eor_due:  # after the differences above, so the EoR follows the full set
            self._eor_due.discard(key)
            for fam in peer.families:
                ops.append((_Op(key, "eor"), [eor_command(key, fam)]))
        return ops

    async def _sync(self, proc: ExabgpProcess) -> None:
        self._wake.clear()
        self._release_reused()
        ops: list[tuple[_Op, list[str]]] = []
        if self._incremental and not self._full_sync:
            dirty = sorted(self._dirty, key=_order)
            self._dirty.clear()
            for peer in self.config.peers:
                ops.extend(self._changed_ops_for_peer(peer, dirty))
        else:
            self._full_sync = False
            self._dirty.clear()
            desired = self.desired()
            for peer in self.config.peers:
                ops.extend(self._ops_for_peer(peer, desired))
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
        i = 0
        failed = False
        eor_sent: set[str] = set()
        now = self._clock()
        for op, cmds in ops:
            chunk = results[i : i + len(cmds)]
            i += len(cmds)
            ok = all(r.ok for r in chunk)
            if op.action == "eor" and ok:
                eor_sent.add(op.peer)
            if not ok and op.action == "eor":  # the session went down again before the EoR: harmless
                log.info("End-of-RIB to %s not sent: the session is not established", op.peer)
            elif not ok:
                failed = True
                self.metrics.command_errors.inc(sum(1 for r in chunk if not r.ok))
                log.error("ExaBGP refused: %s", next(r.command for r in chunk if not r.ok)[:300])
            if op.action == "announce" and ok:
                self._announced[op.peer].update(op.prefixes)
                self.metrics.updates_sent.labels(peer=op.peer, action="announce").inc(len(op.prefixes))
                self._acked_announce(op.prefixes, now)
            elif op.action == "withdraw" and ok:
                self._announced[op.peer].difference_update(op.prefixes)
                self.metrics.updates_sent.labels(peer=op.peer, action="withdraw").inc(len(op.prefixes))
                self._acked_withdraw(op.prefixes, now)
        for key, prefixes in self._announced.items():
            self.metrics.announced_prefixes.labels(peer=key).set(len(prefixes))
        self._observe_latency()
        if not failed:
            self._settle_initial(eor_sent)
        if failed:  # try again later (in full) rather than spinning
            self._full_sync = True
            asyncio.get_running_loop().call_later(5.0, self._changed)

    def _acked_announce(self, prefixes: Sequence[IPNetwork], now: float) -> None:
        for p in prefixes:
            self._announced_at.setdefault(p, now)
            since = self._entered_at.pop(p, None)
            if since is not None:
                self.metrics.convergence.labels(stage="ready_to_announced").observe(now - since)

    def _acked_withdraw(self, prefixes: Sequence[IPNetwork], now: float) -> None:
        for p in prefixes:
            if not any(p in s for s in self._announced.values()):
                self._announced_at.pop(p, None)
            left = self._left_at.pop(p, None)
            if left is not None:
                self.metrics.convergence.labels(stage=f"{left[1]}_to_withdrawn").observe(now - left[0])

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

    def announced_age(self, prefix: IPNetwork, *, now: float | None = None) -> float | None:
        """Seconds since ExaBGP first acked the announcement of ``prefix`` (None: not announced)."""
        since = self._announced_at.get(prefix)
        if since is None:
            return None
        return (self._clock() if now is None else now) - since

    def suppressed(self) -> list[dict[str, object]]:
        """The prefixes damping suppresses now: prefix, penalty now, withdrawals, until (UTC, ISO),
        and ``held``: whether a Ready, routed address is waiting for it (else none is allocated)."""
        damping = self._damping
        if damping is None:
            return []
        now, wall = self._clock(), self._now()
        out: list[dict[str, object]] = []
        for host, state in sorted(self._flaps.items(), key=lambda kv: _order(kv[0])):
            until = reuse_at(state, damping)
            if until is None or now >= until:
                continue
            out.append(
                {
                    "prefix": str(host),
                    "penalty": round(penalty_at(state, now, damping)),
                    "withdrawals": state.withdrawals,
                    "until": (wall + dt.timedelta(seconds=until - now)).isoformat(timespec="seconds"),
                    "held": host in self._suppressed,
                }
            )
        return out

    def _observe_latency(self) -> None:
        if not self._allocated_at:
            return
        announced = list(self._announced.values())
        wide: list[IPNetwork] | None = None  # only aggregate and pool modes announce wider prefixes
        now = self._clock()
        for ip, since in list(self._allocated_at.items()):
            entry = self._eligible.get(ip)
            if entry is None:
                continue
            hit = any(entry[0] in s for s in announced)
            if not hit and self.config.advertise != "host":
                if wide is None:
                    wide = [p for s in announced for p in s if p.prefixlen < p.max_prefixlen]
                hit = any(ip in p for p in wide)
            if hit:
                self.metrics.announce_latency.observe(now - since)
                del self._allocated_at[ip]

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
                log.warning("reconcile: %d prefixes differ for peer %s; repairing", len(diff), key)
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
                log.warning("withdraw on exit incomplete: %s", exc or "timeout")
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
                gone = sorted((x for x in every if family_of(x) == fam), key=_order)
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
        for path in (self.runtime_dir / "api.sock", self.runtime_dir / "exabgp.pid"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.cli:
            for suffix in (".in", ".out"):
                with contextlib.suppress(FileNotFoundError):
                    (CLI_PIPE_DIR / f"{self.pipename}{suffix}").unlink()


def _order(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)
