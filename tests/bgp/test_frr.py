"""The speaker against a real FRR in network namespaces: announcements, attributes, readiness,
export policy, aggregate mode, reconciliation, MD5, TTL security, IPv6."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from prometheus_client import CollectorRegistry

from bgp_speaker.speaker import CLI_PIPE_DIR
from lab.frr import wait_until
from tests.bgp.labkit import (
    NODE_V4,
    NODE_V6,
    ROUTER_AS,
    ROUTER_V4,
    ROUTER_V6,
    VENV_BIN,
    BgpLab,
    frr_config,
    speaker_config,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

POOL = "10.244.0.0/16"


async def _established(lab: BgpLab, peer: str = ROUTER_V4, timeout: float = 20.0) -> None:
    sp = lab.speakers[-1]
    for _ in range(int(timeout / 0.05)):
        if any(s.address == peer and s.state == "up" for s in sp.status()):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"session with {peer} not up: {sp.status()}")


async def test_pod_route_reaches_frr_with_next_hop_and_communities_and_leaves_on_release(lab: BgpLab) -> None:
    router = lab.start_frr()
    registry = CollectorRegistry()
    cfg = speaker_config(
        lab.runtime_dir,
        peers=[
            {
                "address": ROUTER_V4,
                "asn": ROUTER_AS,
                "communities": ["64512:100", "no-export"],
                "largeCommunities": ["64512:1:7"],
                "med": 20,
            }
        ],
    )
    sp = lab.speaker(cfg, registry=registry)
    await sp.start()
    await _established(lab)
    lab.add_host_route("10.244.1.10")
    sp.set_pool_subnets([POOL])
    sp.add_pod_ip("10.244.1.10", POOL)
    sp.add_pod_ip("10.244.1.11", POOL)  # allocated, but no host route yet: not announced
    routes = await asyncio.to_thread(
        lab.wait_router_routes, lambda r: "10.244.1.10/32" in r, what="pod /32 in the router's FIB"
    )
    assert routes["10.244.1.10/32"] == NODE_V4
    assert "10.244.1.11/32" not in routes
    path = router.vtysh_json("show bgp ipv4 unicast 10.244.1.10/32 json")["paths"][0]
    assert path["community"]["string"] == "64512:100 no-export"
    assert path["largeCommunity"]["string"] == "64512:1:7"
    assert path["metric"] == 20
    assert path["nexthops"][0]["ip"] == NODE_V4
    # the second pod's host route appears (CNI ADD finished): announced
    lab.add_host_route("10.244.1.11")
    await asyncio.to_thread(lab.wait_router_routes, lambda r: "10.244.1.11/32" in r, what="second pod")
    # release: withdrawn from the router
    sp.remove_pod_ip("10.244.1.10")
    await asyncio.to_thread(lab.wait_router_routes, lambda r: "10.244.1.10/32" not in r, what="withdrawal")
    # the host route disappears (pod deleted before the release reached us): withdrawn too
    lab.del_host_route("10.244.1.11")
    await asyncio.to_thread(lab.wait_router_routes, lambda r: not r, what="all withdrawn")
    # ExaBGP's adj-rib-out, read through the API, agrees
    assert await sp.routes() == []
    assert registry.get_sample_value("spiderbgp_bgp_session_up", {"peer": ROUTER_V4}) == 1
    assert registry.get_sample_value("spiderbgp_bgp_announce_latency_seconds_count") == 2
    assert (
        registry.get_sample_value(
            "spiderbgp_bgp_prefix_updates_total", {"peer": ROUTER_V4, "action": "withdraw"}
        )
        == 2
    )


async def test_export_policy_refuses_prefixes_outside_the_pools(lab: BgpLab) -> None:
    lab.start_frr()
    cfg = speaker_config(lab.runtime_dir, exportCIDRs=["10.244.1.0/24"])
    sp = lab.speaker(cfg)
    await sp.start()
    await _established(lab)
    for ip in ("10.244.1.5", "10.244.2.5", "10.99.0.5", NODE_V4):
        lab.add_host_route(ip) if ip != NODE_V4 else None
    sp.set_pool_subnets([POOL])
    sp.add_pod_ip("10.244.1.5", POOL)  # inside the pool and the export CIDR: announced
    sp.add_pod_ip("10.244.2.5", POOL)  # inside the pool, outside exportCIDRs: refused
    sp.add_pod_ip("10.99.0.5", "10.99.0.0/16")  # not a pool subnet: refused
    sp.add_pod_ip("10.99.0.6", POOL)  # outside its own pool: refused
    sp.add_pod_ip(NODE_V4, "172.16.13.0/24")  # the node's own address: refused
    await sp.wait_synced()
    await asyncio.to_thread(lab.wait_router_routes, lambda r: "10.244.1.5/32" in r)
    # a last allowed address: UPDATEs reach the router in order, so once it is there anything the
    # speaker had let through before would be there too
    lab.add_host_route("10.244.1.7")
    sp.add_pod_ip("10.244.1.7", POOL)
    await asyncio.to_thread(lab.wait_router_routes, lambda r: "10.244.1.7/32" in r)
    assert set(lab.router_routes()) == {"10.244.1.5/32", "10.244.1.7/32"}
    assert sorted(sp.refused) == sorted(["10.244.2.5", "10.99.0.5", "10.99.0.6", NODE_V4])
    assert sp.refused["10.244.2.5"] == "outside bgp.exportCIDRs"
    assert {str(r.prefix) for r in await sp.routes()} == {"10.244.1.5/32", "10.244.1.7/32"}


async def test_aggregate_mode_announces_exactly_the_minimal_cover(lab: BgpLab) -> None:
    lab.start_frr()
    cfg = speaker_config(lab.runtime_dir, advertise="aggregate", requireHostRoute=False)
    sp = lab.speaker(cfg)
    await sp.start()
    await _established(lab)
    ips = [f"10.244.3.{i}" for i in range(0, 8)] + ["10.244.3.9", "10.244.3.10", "10.244.3.11"]
    sp.set_pod_ips({ip: POOL for ip in ips})
    want = {"10.244.3.0/29", "10.244.3.9/32", "10.244.3.10/31"}
    await asyncio.to_thread(lab.wait_router_routes, lambda r: set(r) == want, what=f"cover {want}")
    sp.remove_pod_ip("10.244.3.4")  # the /29 splits
    want = {"10.244.3.0/30", "10.244.3.5/32", "10.244.3.6/31", "10.244.3.9/32", "10.244.3.10/31"}
    await asyncio.to_thread(lab.wait_router_routes, lambda r: set(r) == want, what=f"cover {want}")


async def test_pool_mode_announces_the_pool_subnets_narrowed_by_export_cidrs(lab: BgpLab) -> None:
    lab.start_frr()
    cfg = speaker_config(
        lab.runtime_dir,
        advertise="pool",
        requireHostRoute=False,
        exportCIDRs=["10.244.0.0/16", "10.9.8.0/24"],
    )
    sp = lab.speaker(cfg)
    await sp.start()
    await _established(lab)
    sp.set_pool_subnets([POOL, "10.9.0.0/16", "10.77.0.0/16"])
    sp.set_pod_ips({"10.244.3.1": POOL, "10.9.8.7": "10.9.0.0/16", "10.77.0.1": "10.77.0.0/16"})
    want = {POOL, "10.9.8.0/24"}  # 10.9/16 narrowed to its exported /24; 10.77/16 not exported at all
    await asyncio.to_thread(lab.wait_router_routes, lambda r: set(r) == want, what=f"pool routes {want}")
    sp.remove_pod_ip("10.9.8.7")  # no pod of that pool left on this node: its subnet is withdrawn
    await asyncio.to_thread(lab.wait_router_routes, lambda r: set(r) == {POOL}, what="pool withdrawn")


def _exabgp_cli(pipename: str, command: str) -> str:
    """What an operator types: ``exabgp-cli --pipename NAME COMMAND`` (FIFOs in /run/exabgp)."""
    res = subprocess.run(
        [str(VENV_BIN / "exabgp-cli"), "--pipename", pipename, *command.split()],
        capture_output=True,
        text=True,
        timeout=20,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _tamper(pipename: str) -> None:
    """A rogue route and a withdrawal, made behind the speaker's back."""
    _exabgp_cli(pipename, f"neighbor {ROUTER_V4} announce route 10.244.4.99/32 next-hop {NODE_V4}")
    _exabgp_cli(pipename, f"neighbor {ROUTER_V4} withdraw route 10.244.4.2/32")


async def test_reconcile_repairs_a_route_injected_behind_our_back(lab: BgpLab) -> None:
    lab.start_frr()
    cfg = speaker_config(lab.runtime_dir, requireHostRoute=False)
    sp = lab.speaker(cfg, cli=True)
    await sp.start()
    await _established(lab)
    sp.set_pod_ips({"10.244.4.1": POOL, "10.244.4.2": POOL})
    await asyncio.to_thread(lab.wait_router_routes, lambda r: len(r) == 2)
    assert (CLI_PIPE_DIR / f"{sp.pipename}.in").exists()
    shown = await asyncio.to_thread(_exabgp_cli, sp.pipename, "show adj-rib out")
    assert f"10.244.4.1/32 next-hop {NODE_V4}" in shown
    await asyncio.to_thread(_tamper, sp.pipename)
    await asyncio.to_thread(lab.wait_router_routes, lambda r: set(r) == {"10.244.4.1/32", "10.244.4.99/32"})
    repaired = await sp.reconcile_now()
    assert repaired == 2
    await asyncio.to_thread(lab.wait_router_routes, lambda r: set(r) == {"10.244.4.1/32", "10.244.4.2/32"})
    assert sp.metrics.reconcile_repairs._value.get() == 2


async def test_periodic_reconcile_repairs_without_being_asked(lab: BgpLab) -> None:
    lab.start_frr()
    cfg = speaker_config(lab.runtime_dir, requireHostRoute=False, reconcileInterval=1)
    sp = lab.speaker(cfg, cli=True)
    await sp.start()
    await _established(lab)
    sp.set_pod_ips({"10.244.4.1": POOL, "10.244.4.2": POOL})
    await asyncio.to_thread(lab.wait_router_routes, lambda r: len(r) == 2)
    await asyncio.to_thread(_tamper, sp.pipename)
    await asyncio.to_thread(
        wait_until,
        lambda: sp.metrics.reconcile_repairs._value.get() >= 1,
        timeout=10,
        interval=0.05,
        what="a periodic reconcile finding the tampering",
    )
    await asyncio.to_thread(
        lab.wait_router_routes, lambda r: set(r) == {"10.244.4.1/32", "10.244.4.2/32"}, timeout=10
    )
    assert sp.metrics.reconcile_repairs._value.get() >= 1
    assert sp.metrics.reconcile_runs._value.get() >= 1


async def test_md5_session(lab: BgpLab) -> None:
    lab.start_frr(frr_config(password="S3cret-pw"))
    keyfile = lab.work / "router.md5"
    keyfile.write_text("S3cret-pw\n")
    keyfile.chmod(0o600)
    cfg = speaker_config(
        lab.runtime_dir,
        requireHostRoute=False,
        peers=[{"address": ROUTER_V4, "asn": ROUTER_AS, "passwordFile": str(keyfile)}],
    )
    sp = lab.speaker(cfg)
    await sp.start()
    rendered = lab.runtime_dir / "exabgp.conf"
    assert rendered.stat().st_mode & 0o777 == 0o600
    assert "S3cret-pw" not in rendered.read_text()  # base64 only, and the file is 0600
    await _established(lab)
    sp.add_pod_ip("10.244.5.1", POOL)
    await asyncio.to_thread(lab.wait_router_routes, lambda r: "10.244.5.1/32" in r)


async def test_wrong_md5_key_never_establishes(lab: BgpLab) -> None:
    lab.start_frr(frr_config(password="right-key"))
    keyfile = lab.work / "router.md5"
    keyfile.write_text("wrong-key")
    keyfile.chmod(0o600)
    cfg = speaker_config(
        lab.runtime_dir, peers=[{"address": ROUTER_V4, "asn": ROUTER_AS, "passwordFile": str(keyfile)}]
    )
    sp = lab.speaker(cfg)
    await sp.start()
    with pytest.raises(TimeoutError):
        await _established(lab, timeout=4.0)
    assert sp.status()[0].state == "start"


async def test_ipv6_peering_with_128_routes_and_ipv4_over_the_same_session(lab6: BgpLab) -> None:
    lab = lab6
    lab.start_frr(frr_config([NODE_V6], ipv6=True))
    cfg = speaker_config(
        lab.runtime_dir,
        nextHopV6=NODE_V6,
        peers=[{"address": ROUTER_V6, "asn": ROUTER_AS, "families": ["ipv6", "ipv4"]}],
    )
    sp = lab.speaker(cfg)
    await sp.start()
    await _established(lab, ROUTER_V6)
    pool6 = "fd00:244::/64"
    sp.set_pool_subnets([pool6, POOL])
    for ip, pool in (("fd00:244::90", pool6), ("10.244.6.1", POOL)):
        lab.add_host_route(ip)
        sp.add_pod_ip(ip, pool)
    r6 = await asyncio.to_thread(
        lab.wait_router_routes,
        lambda r: "fd00:244::90/128" in r,
        family="-6",
        what="/128 in the router's FIB",
    )
    assert r6["fd00:244::90/128"] == NODE_V6
    r4 = await asyncio.to_thread(lab.wait_router_routes, lambda r: "10.244.6.1/32" in r)
    assert r4["10.244.6.1/32"] == NODE_V4
    sp.remove_pod_ip("fd00:244::90")
    await asyncio.to_thread(lab.wait_router_routes, lambda r: not r, family="-6", what="/128 withdrawn")


async def test_ttl_security_session(lab: BgpLab) -> None:
    lab.start_frr(frr_config(ttl_security=1))
    cfg = speaker_config(
        lab.runtime_dir,
        requireHostRoute=False,
        peers=[{"address": ROUTER_V4, "asn": ROUTER_AS, "ttlSecurity": 1}],
    )
    sp = lab.speaker(cfg)
    await sp.start()
    await _established(lab)
    sp.add_pod_ip("10.244.7.1", POOL)
    await asyncio.to_thread(lab.wait_router_routes, lambda r: "10.244.7.1/32" in r)
