"""The agent's BGP side: bgp_speaker.BgpSpeaker behind the agent's Announcer interface."""

from __future__ import annotations

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
from spiderbgp.config import AgentConfig
from spiderbgp.fields import ConfigError

__all__ = ["SpeakerAnnouncer", "build_announcer"]


class SpeakerAnnouncer:
    """Implements spiderbgp.agent.Announcer over a BgpSpeaker."""

    def __init__(self, speaker: BgpSpeaker, *, withdraw_on_exit: bool) -> None:
        self.speaker = speaker
        self.withdraw_on_exit = withdraw_on_exit or speaker.config.withdraw_on_exit

    async def start(self) -> None:
        await self.speaker.start()

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
        out = []
        for r in routes:
            row = r.as_dict()
            age = self.speaker.announced_age(r.prefix)
            row["ageSeconds"] = None if age is None else round(age, 1)
            out.append(row)
        return out

    async def stop(self, *, withdraw: bool) -> None:
        await self.speaker.stop(withdraw=withdraw or self.withdraw_on_exit)


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
    return SpeakerAnnouncer(speaker, withdraw_on_exit=withdraw_on_exit)
