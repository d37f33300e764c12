"""Run one BgpSpeaker as its own process, the way the agent hosts it, until it is killed.

    python -m tests.bgp.speaker_main CONFIG.json NODE_NETNS

CONFIG.json holds ``{"bgp": {...}, "pods": {"ip": "subnet", ...}, "pools": ["subnet", ...]}``.  The
process prints ``ready`` on stdout once ExaBGP runs.  Tests use it to crash an "agent" for real
(SIGKILL) and check that its ExaBGP goes with it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bgp_speaker.config import parse_bgp_config
from bgp_speaker.kernel import NetlinkRouteSource
from bgp_speaker.speaker import BgpSpeaker


async def _run(config: Path, netns: str) -> None:
    raw = json.loads(config.read_text())
    # no Pod objects here: announce on allocation (and route), as the agent does with announceWhen: allocated
    cfg = parse_bgp_config({"announceWhen": "allocated", **raw["bgp"]}, source=str(config))
    exabgp = Path(sys.executable).with_name("exabgp")
    sp = BgpSpeaker(
        cfg,
        exabgp_command=["ip", "netns", "exec", netns, str(exabgp), "server"],
        route_source=NetlinkRouteSource(netns=netns),
        cli=False,
    )
    sp.set_pool_subnets(raw.get("pools", []))
    sp.set_pod_ips(raw.get("pods", {}))
    await sp.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    asyncio.run(_run(Path(sys.argv[1]), sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
