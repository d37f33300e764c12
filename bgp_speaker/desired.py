"""The speaker's desired-state bookkeeping, without asyncio or ExaBGP: pod IPs, pool subnets, kernel
routes, pod readiness and damping in; the desired prefixes, and the operations (with their ExaBGP
commands) that bring each peer's announced set to them, out.  ``plan()`` gives the operations,
``acknowledge()`` takes ExaBGP's answers; ``bgp_speaker.speaker`` sends them in between.

Inputs are applied one at a time and kept current (``_hosts``, ``_dirty``), so one new pod costs the
same with 10 pods or 10,000 on the node; ``routes.desired_routes`` computes the same set from scratch
(the property tests compare the two).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from bgp_speaker.blocks import BlockRoutes, block_lengths, block_prefixes, borrowed_hosts, covered
from bgp_speaker.commands import (
    RouteAttributes,
    announce_commands,
    attributes_for,
    eor_command,
    withdraw_commands,
)
from bgp_speaker.config import BgpConfig, Family, IPAddress, IPNetwork, PeerConfig, family_of
from bgp_speaker.damping import FlapState, is_suppressed, penalty_at, reuse_at, stale, withdrawn
from bgp_speaker.exabgp import CommandResult
from bgp_speaker.kernel import RouteBatch, RouteTable
from bgp_speaker.metrics import SpeakerMetrics
from bgp_speaker.routes import ExportPolicy, advertised_prefixes, host_prefix, plan_peer

__all__ = ["DesiredState", "Op", "order"]

LOG = logging.getLogger("bgp_speaker.speaker")


def _ip(value: IPAddress | str) -> IPAddress:
    return value if not isinstance(value, str) else ipaddress.ip_address(value)


def _net(value: IPNetwork | str) -> IPNetwork:
    return value if not isinstance(value, str) else ipaddress.ip_network(value, strict=False)


def order(net: IPNetwork) -> tuple[int, int, int]:
    """Prefixes in address order, IPv4 first."""
    return (net.version, int(net.network_address), net.prefixlen)


@dataclass(frozen=True)
class Op:
    """One operation for one peer: announce or withdraw ``prefixes``, or send an End-of-RIB."""

    peer: str
    action: str  # announce | withdraw | eor
    prefixes: tuple[IPNetwork, ...] = ()


class DesiredState:
    """What the node should announce to each peer, and what ExaBGP acked (see the module docstring)."""

    def __init__(
        self,
        config: BgpConfig,
        *,
        metrics: SpeakerMetrics,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._now = now
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
        # advertise: block: this node's affine blocks, their lengths, and the host prefixes outside
        # them (kept current host by host, so a sync does not look at every address)
        self._block_mode = config.advertise == "block"
        self._blocks: frozenset[IPNetwork] = frozenset()
        self._block_lengths: frozenset[tuple[int, int]] = frozenset()
        self._borrowed: set[IPNetwork] = set()
        # the host prefixes of eligible, ready IPs (-> pool subnet), kept current input by input, and
        # those whose membership changed since the last sync: with ``advertise: host`` and no
        # ``maxPrefixes`` a sync looks only at those, so one new pod costs the same with 10 pods
        # or 10,000 on the node; ``_full_sync`` asks for a whole comparison instead
        self._hosts: dict[IPNetwork, IPNetwork] = {}
        self._dirty: set[IPNetwork] = set()
        self._full_sync = True
        self._incremental = config.advertise == "host" and all(p.max_prefixes is None for p in config.peers)
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
        # what ExaBGP acked, per peer, and the peers owed an End-of-RIB
        self._announced: dict[str, set[IPNetwork]] = {k: set() for k in self._peers}
        self._eor_due: set[str] = set()

    def _changed(self) -> None:
        """An input changed: the speaker wakes its sync loop (nothing to do here)."""

    def _exabgp_running(self) -> bool:
        """Whether ExaBGP runs (the speaker says): entries into the desired set are timed only then."""
        return False

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

    def set_blocks(self, blocks: Iterable[IPNetwork | str]) -> None:
        """``advertise: block``: the whole set of allocation blocks affine to this node."""
        nets = frozenset(_net(b) for b in blocks)
        if nets != self._blocks:
            new = nets - self._blocks
            self._blocks = nets
            self._block_lengths = block_lengths(nets)
            self._borrowed = set(borrowed_hosts(self._hosts, nets))
            for refusal in self.block_routes().refused:
                if _net(refusal.subject) in new:
                    LOG.warning("BGP export policy: not announcing block %s", refusal)
            self._changed()

    def block_routes(self) -> BlockRoutes:
        """``advertise: block``: the blocks and borrowed host prefixes to announce, the blocks to
        blackhole in this node's kernel (see ``bgp_speaker.blocks``)."""
        return block_prefixes(
            self._blocks,
            frozenset(self._borrowed),
            pool_subnets=self._policy.pool_subnets,
            export_cidrs=self._policy.export_cidrs,
            node_addresses=self._policy.node_addresses,
        )

    @property
    def refused(self) -> dict[str, str]:
        """Pod IPs the export policy keeps out of BGP, with the reason."""
        return {str(ip): why for ip, why in self._refused.items()}

    def apply_routes(self, batch: RouteBatch) -> bool:
        """A batch of kernel route changes; True when an IP's announceability changed."""
        touched = self._table.apply(batch)
        return self._recheck_ready(touched, full=batch.reset)

    def desired(self) -> frozenset[IPNetwork]:
        """The prefixes this node should announce right now (before per-peer families and limits)."""
        if self._block_mode:
            return self.block_routes().prefixes
        return advertised_prefixes(
            self._hosts, mode=self.config.advertise, export_cidrs=self.config.export_cidrs
        )

    def plan(self) -> list[tuple[Op, list[str]]]:
        """The operations (and their ExaBGP commands) that bring every peer's announced set to the
        desired one: the changed host prefixes alone when that is exact (``advertise: host``, no
        ``maxPrefixes``, no full comparison asked for), else the whole comparison."""
        ops: list[tuple[Op, list[str]]] = []
        if self._incremental and not self._full_sync:
            dirty = sorted(self._dirty, key=order)
            self._dirty.clear()
            for peer in self.config.peers:
                ops.extend(self._changed_ops_for_peer(peer, dirty))
        else:
            self._full_sync = False
            self._dirty.clear()
            desired = self.desired()
            for peer in self.config.peers:
                ops.extend(self._ops_for_peer(peer, desired))
        return ops

    def acknowledge(
        self, ops: Sequence[tuple[Op, list[str]]], results: Sequence[CommandResult]
    ) -> tuple[bool, set[str]]:
        """Take ExaBGP's answers to the commands of ``plan()`` (in order): what it acked is announced
        (or withdrawn).  Returns (whether a command failed, the peers that got their End-of-RIB)."""
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
                LOG.info("End-of-RIB to %s not sent: the session is not established", op.peer)
            elif not ok:
                failed = True
                self.metrics.command_errors.inc(sum(1 for r in chunk if not r.ok))
                LOG.error("ExaBGP refused: %s", next(r.command for r in chunk if not r.ok)[:300])
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
        if failed:  # compared again in full next time
            self._full_sync = True
        return failed, eor_sent

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
        for host, state in sorted(self._flaps.items(), key=lambda kv: order(kv[0])):
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

    def _admit(self, ip: IPAddress, subnet: IPNetwork) -> None:
        why = self._policy.refusal(ip, subnet)
        if why is None:
            self._eligible[ip] = (host_prefix(ip), subnet)
            self._refused.pop(ip, None)
        else:
            self._eligible.pop(ip, None)
            if self._refused.get(ip) != why:
                LOG.warning("BGP export policy: not announcing %s (pool %s): %s", ip, subnet, why)
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
            if host not in self._hosts and self._track_hosts and self._exabgp_running():
                # (not while seeding at start: the first announcements wait for ExaBGP, not for us)
                self._entered_at[host] = self._clock()
                self._left_at.pop(host, None)
            self._hosts[host] = entry[1]
            self._dirty.add(host)
            if self._block_mode and not covered(host, self._blocks, self._block_lengths):
                self._borrowed.add(host)
        else:
            host = host_prefix(ip)
            was = self._hosts.pop(host, None) is not None
            if self._block_mode:
                self._borrowed.discard(host)
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
                    LOG.info("damping: %s suppressed after %d withdrawals", host, after.withdrawals)

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
                LOG.info("damping: holding %s back for %.1f s", host, until - now)
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

    def _update_refused_metric(self) -> None:
        self.metrics.refused_prefixes.set(len(self._refused))

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

    def _desired_for(self, peer: PeerConfig, desired: frozenset[IPNetwork]) -> set[IPNetwork]:
        fams = set(peer.families)
        if fams == {"ipv4", "ipv6"}:
            return set(desired)
        return {p for p in desired if family_of(p) in fams}

    def _ops_for_peer(self, peer: PeerConfig, desired: frozenset[IPNetwork]) -> list[tuple[Op, list[str]]]:
        """The whole comparison: everything desired against everything announced."""
        want = self._desired_for(peer, desired)
        plan = plan_peer(want, self._announced[peer.key], limit=peer.max_prefixes)
        self.metrics.held_back_prefixes.labels(peer=peer.key).set(len(plan.held_back))
        return self._peer_ops(peer, plan.announce, plan.withdraw)

    def _changed_ops_for_peer(
        self, peer: PeerConfig, dirty: Sequence[IPNetwork]
    ) -> list[tuple[Op, list[str]]]:
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
    ) -> list[tuple[Op, list[str]]]:
        key = peer.key
        ops: list[tuple[Op, list[str]]] = []
        for fam in peer.families:
            attrs = self._attrs.get((key, fam))
            if attrs is None:
                continue
            gone = tuple(p for p in withdraw if family_of(p) == fam)
            if gone:
                ops.append((Op(key, "withdraw", gone), withdraw_commands(key, attrs, gone)))
            new = tuple(p for p in announce if family_of(p) == fam)
            if new:
                ops.append((Op(key, "announce", new), announce_commands(key, attrs, new)))
        if key in self._eor_due:  # after the differences above, so the EoR follows the full set
            self._eor_due.discard(key)
            for fam in peer.families:
                ops.append((Op(key, "eor"), [eor_command(key, fam)]))
        return ops

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
