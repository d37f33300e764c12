"""The agent's BGP side: bgp_speaker.BgpSpeaker behind the agent's Announcer interface."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from bgp_speaker import (
    BgpConfigError,
    BgpSpeaker,
    NetlinkRouteSource,
    SpeakerNotRunning,
    parse_bgp_config,
    source_address,
)
from bgp_speaker.blackholes import BlackholeRoutes, NetlinkBlackholes
from bgp_speaker.blocks import BlockRoutes
from bgp_speaker.config import IPNetwork
from spiderbgp.config import AgentConfig
from spiderbgp.fields import ConfigError

__all__ = ["SpeakerAnnouncer", "build_announcer"]

LOG = logging.getLogger("spiderbgp.bgp")


class SpeakerAnnouncer:
    """Implements spiderbgp.agent.Announcer over a BgpSpeaker."""

    def __init__(
        self, speaker: BgpSpeaker, *, withdraw_on_exit: bool, blackholes: BlackholeRoutes | None = None
    ) -> None:
        self.speaker = speaker
        self.withdraw_on_exit = withdraw_on_exit or speaker.config.withdraw_on_exit
        self.blackholes = blackholes  # advertise: block: the blocks' blackhole routes in this kernel
        self._blackholes_wanted: frozenset[IPNetwork] = frozenset()
        self._blackhole_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.blackholes is not None and not self.follows_blocks:
            await self._clear_blackholes()
        await self.speaker.start()

    async def _clear_blackholes(self) -> None:
        """Not in block mode: remove the blackhole routes an earlier ``advertise: block`` run left in
        this kernel (they would swallow this node's traffic to addresses of its former blocks that
        other nodes now hold and announce as /32s)."""
        assert self.blackholes is not None
        try:
            done = await asyncio.to_thread(self.blackholes.sync, frozenset())
        except Exception as exc:
            LOG.error("blackhole routes left by advertise: block not removed: %s", exc)
            return
        if done.remove:
            LOG.info(
                "advertise is %s: removed the blackhole routes of former blocks",
                self.speaker.config.advertise,
            )

    def set_pod_ips(self, ips: Mapping[str, str]) -> None:
        self.speaker.set_pod_ips({ip: subnet for ip, subnet in ips.items()})

    def set_pool_subnets(self, subnets: Sequence[str]) -> None:
        self.speaker.set_pool_subnets(subnets)

    def add_pod_ips(self, ips: Mapping[str, str]) -> None:
        for ip, subnet in ips.items():
            self.speaker.add_pod_ip(ip, subnet)

    def remove_pod_ips(self, ips: Sequence[str]) -> None:
        for ip in ips:
            self.speaker.remove_pod_ip(ip)

    @property
    def announce_when_ready(self) -> bool:
        return self.speaker.config.announce_when == "ready"

    @property
    def follows_blocks(self) -> bool:
        return self.speaker.config.advertise == "block"

    def set_blocks(self, blocks: Collection[str]) -> None:
        nets = frozenset(ipaddress.ip_network(b) for b in blocks)
        self.speaker.set_blocks(nets)
        if self.blackholes is not None:
            self._blackholes_wanted = nets
            if self._blackhole_task is None or self._blackhole_task.done():
                self._blackhole_task = asyncio.get_running_loop().create_task(self._sync_blackholes())

    async def _sync_blackholes(self) -> None:
        """Bring the kernel's blackhole routes to the latest blocks, one netlink sync at a time, in a
        thread (pyroute2's IPRoute runs an event loop of its own); a failure is logged and repaired by
        the next change or full resync."""
        assert self.blackholes is not None
        while True:
            wanted = self._blackholes_wanted
            try:
                await asyncio.to_thread(self.blackholes.sync, wanted)
            except Exception as exc:
                LOG.error(
                    "blackhole routes for blocks %s: %s", ", ".join(map(str, sorted(wanted, key=str))), exc
                )
                return
            if self._blackholes_wanted == wanted:
                return

    @property
    def writes_node_condition(self) -> bool:
        return self.speaker.config.node_condition

    def set_ready_ips(self, ips: Collection[str]) -> None:
        self.speaker.set_ready_ips(ips)

    def set_pod_ready(self, changes: Mapping[str, bool]) -> None:
        self.speaker.set_pod_ready(changes)

    def readiness(self) -> str | None:
        return self.speaker.readiness()

    def suppressed(self) -> list[dict[str, Any]]:
        return self.speaker.suppressed()

    def status(self) -> list[dict[str, Any]]:
        return [dict(s.as_dict()) for s in self.speaker.status()]

    def pipename(self) -> str:
        return self.speaker.pipename

    async def routes(self) -> list[dict[str, Any]]:
        try:
            routes = await self.speaker.routes()
        except SpeakerNotRunning:
            return []
        blocks = self.speaker.block_routes() if self.follows_blocks else None
        out = []
        for r in routes:
            row = r.as_dict()
            age = self.speaker.announced_age(r.prefix)
            row["ageSeconds"] = None if age is None else round(age, 1)
            if blocks is not None:
                row["kind"] = _kind(r.prefix, blocks)
            out.append(row)
        return out

    async def stop(self, *, withdraw: bool) -> None:
        if self._blackhole_task is not None:  # the blackholes stay: the blocks are still this node's
            await asyncio.wait([self._blackhole_task], timeout=5.0)
        await self.speaker.stop(withdraw=withdraw or self.withdraw_on_exit)


def _kind(prefix: IPNetwork, blocks: BlockRoutes) -> str:
    """``advertise: block``: whether an announced prefix is a block (or its part inside exportCIDRs),
    a borrowed address, or neither any more (being withdrawn)."""
    if prefix in blocks.borrowed:
        return "borrowed"
    if any(prefix.version == b.version and prefix.subnet_of(b) for b in blocks.blocks):  # type: ignore[arg-type]
        return "block"
    return ""


def build_announcer(
    config: AgentConfig, *, withdraw_on_exit: bool, registry: CollectorRegistry, python: str = sys.executable
) -> SpeakerAnnouncer:
    """Parse the config's bgp section and build the speaker; ConfigError names the field."""
    try:
        bgp = parse_bgp_config(config.bgp, source=config.source, source_address=source_address)
    except BgpConfigError as exc:
        raise ConfigError(exc.source, exc.field, exc.reason) from None
    route_source = NetlinkRouteSource() if bgp.require_host_route else None
    speaker = BgpSpeaker(bgp, route_source=route_source, registry=registry, python=python)
    blackholes = NetlinkBlackholes()  # block mode keeps them; the other modes clear leftovers at start
    return SpeakerAnnouncer(speaker, withdraw_on_exit=withdraw_on_exit, blackholes=blackholes)
