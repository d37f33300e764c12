"""The speaker keeps FRR's view right across failures: bgpd restart, ExaBGP crash, agent restart with
graceful restart, link flap, withdraw on exit.  Real FRR and ExaBGP in namespaces."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.frr import wait_until
from lab.netns import ProcRef, set_link
from tests.bgp.labkit import (
    NODE_AS,
    NODE_V4,
    ROUTER_AS,
    ROUTER_V4,
    VENV_BIN,
    BgpLab,
    RouteMonitor,
    frr_config,
    hosts,
    speaker_config,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

POOL = "10.244.0.0/16"


async def _up(lab: BgpLab, timeout: float = 20.0) -> None:
    sp = lab.speakers[-1]
    for _ in range(int(timeout / 0.05)):
        if sp.status()[0].state == "up":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"session not up: {sp.status()}")


async def _all_back(lab: BgpLab, want: set[str], timeout: float = 30.0, what: str = "all routes") -> None:
    await asyncio.to_thread(
        lab.wait_router_routes, lambda r: set(r) == want, timeout=timeout, what=f"{what} ({len(want)})"
    )


def _all_stale(lab: BgpLab, count: int) -> None:
    """Wait until FRR holds ``count`` routes, every one stale: it saw the session end (graceful restart)."""
    assert lab.router is not None
    router = lab.router
    wait_until(
        lambda: len(r := router.bgp_routes()) == count and all(p.stale for p in r.values()),
        timeout=20,
        interval=0.05,
        what=f"{count} stale routes in FRR",
    )


def _stale_flushed(lab: BgpLab) -> None:
    """Wait until FRR holds no stale route: the End-of-RIB came and the stale ones left (were deleted)."""
    assert lab.router is not None
    router = lab.router
    wait_until(
        lambda: not any(p.stale for p in router.bgp_routes().values()),
        timeout=20,
        interval=0.05,
        what="no stale route in FRR (End-of-RIB handled)",
    )


async def test_bgpd_restart_gets_every_route_back(lab: BgpLab) -> None:
    router = lab.start_frr()
    sp = lab.speaker(speaker_config(lab.runtime_dir, requireHostRoute=False))
    await sp.start()
    ips = hosts("10.244.8.0/24", 50)
    sp.set_pod_ips(dict.fromkeys(ips, POOL))
    want = {f"{ip}/32" for ip in ips}
    await _all_back(lab, want)
    await asyncio.to_thread(router.stop_daemon, "bgpd", sig=signal.SIGKILL)
    await asyncio.to_thread(router.start_daemon, "bgpd")
    await asyncio.to_thread(router.push_config, frr_config())
    await asyncio.to_thread(router.wait_established, {"172.16.13.11"}, timeout=30)
    await _all_back(lab, want, what="routes after bgpd restart")
    assert sp.restarts == 0  # ExaBGP itself was not restarted: its session came back and re-sent


async def test_exabgp_killed_is_restarted_and_every_route_comes_back(lab: BgpLab) -> None:
    lab.start_frr()
    sp = lab.speaker(speaker_config(lab.runtime_dir, requireHostRoute=False))
    await sp.start()
    ips = hosts("10.244.9.0/24", 40)
    sp.set_pod_ips(dict.fromkeys(ips, POOL))
    want = {f"{ip}/32" for ip in ips}
    await _all_back(lab, want)
    old_pid = int((lab.runtime_dir / "exabgp.pid").read_text())
    os.kill(old_pid, signal.SIGKILL)
    # without graceful restart the router drops everything at once (TCP closed)
    await asyncio.to_thread(lab.wait_router_routes, lambda r: not r, timeout=10, what="routes gone")
    sp.add_pod_ip("10.244.9.200", POOL)  # a change while ExaBGP is down is not lost
    want.add("10.244.9.200/32")
    await _all_back(lab, want, what="routes after ExaBGP restart")
    assert sp.restarts == 1
    assert int((lab.runtime_dir / "exabgp.pid").read_text()) != old_pid
    assert sp.metrics.exabgp_restarts._value.get() == 1


async def test_exabgp_that_does_not_start_is_retried_without_stopping_the_agent(lab: BgpLab) -> None:
    lab.start_frr()
    marker = lab.work / "refused-once"
    wrapper = lab.work / "exabgp-refuses-once"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e {marker} ]; then touch {marker}; echo 'not today'; exit 3; fi\n"
        f'exec {VENV_BIN / "exabgp"} "$@"\n'
    )
    wrapper.chmod(0o755)
    sp = lab.speaker(
        speaker_config(lab.runtime_dir, requireHostRoute=False), exabgp_command=lab.exabgp_command(wrapper)
    )
    await sp.start()  # no exception: the first attempt failing is retried like a later death
    (peer,) = sp.status()
    assert peer.state == "down" and "not today" in peer.info, peer
    assert sp.metrics.exabgp_up._value.get() == 0
    ips = hosts("10.244.15.0/24", 10)
    sp.set_pod_ips(dict.fromkeys(ips, POOL))
    await _all_back(lab, {f"{ip}/32" for ip in ips}, what="routes from the second ExaBGP")
    assert sp.metrics.exabgp_up._value.get() == 1
    assert sp.status()[0].state == "up"


async def test_exabgp_killed_under_graceful_restart_keeps_every_route_in_the_router(lab: BgpLab) -> None:
    lab.start_frr()
    cfg = speaker_config(
        lab.runtime_dir,
        requireHostRoute=False,
        peers=[{"address": ROUTER_V4, "asn": ROUTER_AS, "gracefulRestart": 30}],
    )
    sp = lab.speaker(cfg)
    await sp.start()
    ips = hosts("10.244.14.0/24", 40)
    sp.set_pod_ips(dict.fromkeys(ips, POOL))
    await _all_back(lab, {f"{ip}/32" for ip in ips})
    await _up(lab)
    monitor = RouteMonitor(lab.sandbox, lab.router_ns)
    try:
        os.kill(int((lab.runtime_dir / "exabgp.pid").read_text()), signal.SIGKILL)
        sp.remove_pod_ip(ips[0])  # released while ExaBGP is down
        await asyncio.to_thread(
            wait_until, lambda: sp.restarts == 1 and sp.status()[0].state == "up", timeout=20, what="restart"
        )
        await _all_back(lab, {f"{ip}/32" for ip in ips[1:]}, what="routes after the restart")
        await asyncio.to_thread(_stale_flushed, lab)  # End-of-RIB handled: no deletion is still to come
        await asyncio.to_thread(monitor.caught_up)
    finally:
        monitor.stop()
    assert not any(monitor.deleted(f"{ip}/32") for ip in ips[1:])
    assert monitor.deleted(f"{ips[0]}/32")


async def test_agent_restart_with_graceful_restart_never_removes_a_route(lab: BgpLab) -> None:
    lab.start_frr()
    cfg = speaker_config(
        lab.runtime_dir,
        requireHostRoute=False,
        peers=[{"address": ROUTER_V4, "asn": ROUTER_AS, "gracefulRestart": 30}],
    )
    first = lab.speaker(cfg)
    await first.start()
    ips = hosts("10.244.10.0/24", 60)
    kept, released = ips[:50], ips[50:]
    first.set_pod_ips(dict.fromkeys(ips, POOL))
    await _all_back(lab, {f"{ip}/32" for ip in ips})
    await _up(lab)
    monitor = RouteMonitor(lab.sandbox, lab.router_ns)
    try:
        await first.stop(withdraw=False)  # GR: ExaBGP closes silently, FRR keeps the routes (stale)
        await asyncio.to_thread(_all_stale, lab, 60)
        assert len(lab.router_routes()) == 60
        second = lab.speaker(cfg)
        second.set_pod_ips(dict.fromkeys([*kept, "10.244.10.100"], POOL))  # 10 released, 1 new meanwhile
        await second.start()
        want = {f"{ip}/32" for ip in [*kept, "10.244.10.100"]}
        await _all_back(lab, want, what="refreshed routes after the agent restart")
        await asyncio.to_thread(_stale_flushed, lab)
        await asyncio.to_thread(monitor.caught_up)
    finally:
        monitor.stop()
    for ip in kept:
        assert not monitor.deleted(f"{ip}/32"), f"{ip} left the router's FIB during the restart"
    for ip in released:
        assert monitor.deleted(f"{ip}/32"), f"stale {ip} was not removed after End-of-RIB"
    stale = [p for p, path in (await asyncio.to_thread(lab.router.bgp_routes)).items() if path.stale]  # type: ignore[union-attr]
    assert stale == []


async def test_link_down_and_up_brings_the_routes_back(lab: BgpLab) -> None:
    lab.start_frr()
    sp = lab.speaker(speaker_config(lab.runtime_dir, requireHostRoute=False))
    await sp.start()
    ips = hosts("10.244.11.0/24", 20)
    sp.set_pod_ips(dict.fromkeys(ips, POOL))
    want = {f"{ip}/32" for ip in ips}
    await _all_back(lab, want)
    await asyncio.to_thread(set_link, lab.router_ns, "r-node", up=False)
    await asyncio.to_thread(
        lab.wait_router_routes, lambda r: not r, timeout=10, what="routes gone on link down"
    )
    router = lab.router
    assert router is not None
    # the session itself went down (FRR's fast failover on the link), not just the routes
    await asyncio.to_thread(
        wait_until,
        lambda: NODE_V4 not in router.established(),
        timeout=20,
        interval=0.05,
        what="session down",
    )
    await asyncio.to_thread(set_link, lab.router_ns, "r-node", up=True)
    await _all_back(lab, want, timeout=40, what="routes after link up")


async def test_withdraw_on_exit_removes_routes_even_with_graceful_restart(lab: BgpLab) -> None:
    lab.start_frr()
    cfg = speaker_config(
        lab.runtime_dir,
        requireHostRoute=False,
        withdrawOnExit=True,
        peers=[{"address": ROUTER_V4, "asn": ROUTER_AS, "gracefulRestart": 60}],
    )
    sp = lab.speaker(cfg)
    await sp.start()
    ips = hosts("10.244.12.0/24", 30)
    sp.set_pod_ips(dict.fromkeys(ips, POOL))
    await _all_back(lab, {f"{ip}/32" for ip in ips})
    await _up(lab)
    await sp.stop()  # bgp.withdrawOnExit: withdraw, wait for the acks and the UPDATEs, then stop
    # the routes are gone right away, not kept stale for 60 s
    await asyncio.to_thread(
        lab.wait_router_routes, lambda r: not r, timeout=3, what="routes withdrawn on exit"
    )
    assert not (lab.runtime_dir / "exabgp.pid").exists()


async def test_agent_crash_takes_its_exabgp_along_and_graceful_restart_keeps_the_routes(lab: BgpLab) -> None:
    lab.start_frr()
    ips = hosts("10.244.13.0/24", 30)
    bgp = {
        "asn": NODE_AS,
        "nextHop": NODE_V4,
        "runtimeDir": str(lab.runtime_dir),
        "requireHostRoute": False,
        "reconcileInterval": 0,
        "peers": [{"address": ROUTER_V4, "asn": ROUTER_AS, "holdTime": 9, "gracefulRestart": 30}],
    }
    conf = lab.work / "agent.json"
    conf.write_text(json.dumps({"bgp": bgp, "pods": dict.fromkeys(ips, POOL), "pools": [POOL]}))
    agent = lab.sandbox.popen(
        None,
        [sys.executable, "-m", "tests.bgp.speaker_main", str(conf), lab.node_ns.name],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert agent.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 30)
    agent.stdout.close()
    assert line.strip() == b"ready"
    await _all_back(lab, {f"{ip}/32" for ip in ips})
    exabgp = ProcRef.of(int((lab.runtime_dir / "exabgp.pid").read_text()))
    monitor = RouteMonitor(lab.sandbox, lab.router_ns)
    try:
        os.kill(agent.pid, signal.SIGKILL)  # the agent crashes
        await asyncio.to_thread(agent.wait, 5)
        # the kernel tells its ExaBGP (parent-death signal): no orphan keeps announcing
        await asyncio.to_thread(
            wait_until, lambda: not exabgp.alive(), timeout=5, interval=0.05, what="ExaBGP gone"
        )
        await asyncio.to_thread(_all_stale, lab, 30)  # the router saw the session end...
        assert len(lab.router_routes()) == 30  # ... and, graceful restart, keeps forwarding
        cfg = speaker_config(lab.runtime_dir, requireHostRoute=False, peers=[bgp["peers"][0]])  # type: ignore[index]
        again = lab.speaker(cfg)
        again.set_pod_ips(dict.fromkeys(ips[:25], POOL))  # five pods went away meanwhile
        await again.start()
        await _all_back(lab, {f"{ip}/32" for ip in ips[:25]}, what="routes after the agent came back")
        await asyncio.to_thread(_stale_flushed, lab)
        await asyncio.to_thread(monitor.caught_up)
    finally:
        monitor.stop()
    assert not any(monitor.deleted(f"{ip}/32") for ip in ips[:25])
    assert all(monitor.deleted(f"{ip}/32") for ip in ips[25:])
