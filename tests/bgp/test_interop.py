"""Interoperability: BIRD 2 and GoBGP as the receiving router (real daemons in the router namespace)."""

from __future__ import annotations

import asyncio

import pytest

from lab.frr import wait_until
from tests.bgp.labkit import (
    NODE_AS,
    NODE_V4,
    ROUTER_AS,
    ROUTER_V4,
    BgpLab,
    birdc,
    gobgp_rib,
    speaker_config,
    start_bird,
    start_gobgp,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

POOL = "10.244.0.0/16"

BIRD_RECEIVER = f"""
router id {ROUTER_V4};
protocol device {{ }}
protocol kernel {{
    ipv4 {{ import none; export all; }};
}}
protocol bgp node {{
    local {ROUTER_V4} as {ROUTER_AS};
    neighbor {NODE_V4} as {NODE_AS};
    hold time 9;
    ipv4 {{ import all; export none; }};
}}
"""

GOBGP_RECEIVER = f"""
[global.config]
  as = {ROUTER_AS}
  router-id = "{ROUTER_V4}"
  port = 179
  local-address-list = ["{ROUTER_V4}"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{NODE_V4}"
    peer-as = {NODE_AS}
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
"""


async def test_bird_receives_and_loses_the_routes(lab: BgpLab) -> None:
    sock, _ = await asyncio.to_thread(start_bird, lab, BIRD_RECEIVER)
    sp = lab.speaker(speaker_config(lab.runtime_dir, requireHostRoute=False))
    await sp.start()
    sp.set_pod_ips({"10.244.20.1": POOL, "10.244.20.2": POOL})
    routes = await asyncio.to_thread(
        lab.wait_router_routes, lambda r: len(r) == 2, what="BIRD installed both routes"
    )
    assert routes == {"10.244.20.1/32": NODE_V4, "10.244.20.2/32": NODE_V4}
    shown = await asyncio.to_thread(birdc, sock, "show", "route", "protocol", "node")
    assert "10.244.20.1/32" in shown and "AS64512" in shown
    sp.remove_pod_ip("10.244.20.1")
    await asyncio.to_thread(lab.wait_router_routes, lambda r: set(r) == {"10.244.20.2/32"}, what="withdrawal")


async def test_gobgp_receives_and_loses_the_routes(lab: BgpLab) -> None:
    await asyncio.to_thread(start_gobgp, lab, GOBGP_RECEIVER)
    sp = lab.speaker(speaker_config(lab.runtime_dir, requireHostRoute=False))
    await sp.start()
    sp.set_pod_ips({"10.244.21.1": POOL, "10.244.21.2": POOL})

    def rib_prefixes() -> set[str]:
        return set(gobgp_rib(lab))

    await asyncio.to_thread(
        wait_until,
        lambda: rib_prefixes() == {"10.244.21.1/32", "10.244.21.2/32"},
        timeout=20,
        what="GoBGP RIB",
    )
    path = gobgp_rib(lab)["10.244.21.1/32"][0]
    assert any(a.get("nexthop") == NODE_V4 for a in path["attrs"])
    sp.remove_pod_ip("10.244.21.1")
    await asyncio.to_thread(
        wait_until, lambda: rib_prefixes() == {"10.244.21.2/32"}, timeout=10, what="GoBGP withdrawal"
    )
