"""The ExaBGP driver and the speaker's bookkeeping against a real ExaBGP whose peer is unreachable: it
runs alone in a namespace that holds only a loopback, so no packet leaves it.  ExaBGP keeps API routes
in its adj-rib-out while the session is down, which is what these tests read back."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from bgp_speaker.commands import (
    NLRI_PER_LINE,
    SHOW_ADJ_RIB_OUT,
    RouteAttributes,
    announce_commands,
    parse_adj_rib_line,
)
from bgp_speaker.config import parse_bgp_config
from bgp_speaker.exabgp import Event, ExabgpError, ExabgpGone, ExabgpProcess
from bgp_speaker.kernel import NetlinkRouteSource
from bgp_speaker.render import exabgp_environment
from bgp_speaker.speaker import RELAY_SCRIPT, BgpSpeaker, SpeakerNotRunning
from lab.netns import Netns, ProcRef, Sandbox, ip_netns_exec, run
from tests.bgp.labkit import VENV_BIN

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

PEER = "192.0.2.1"
POOL = "10.244.0.0/16"
N = ipaddress.ip_network


@pytest.fixture
def solo_sandbox() -> Iterator[tuple[Sandbox, Netns, Path]]:
    with Sandbox() as sb:
        ns = sb.netns("solo")
        work = sb.add_path(Path(f"/tmp/sbgp-{sb.token}-drv"))
        work.mkdir()
        yield sb, ns, work


@pytest.fixture
def solo(solo_sandbox: tuple[Sandbox, Netns, Path]) -> tuple[Netns, Path]:
    _, ns, work = solo_sandbox
    return ns, work


def _conf(work: Path, token: str, extra: str = "") -> Path:
    conf = work / "exabgp.conf"
    conf.write_text(
        f"""process spiderbgp {{
    run {VENV_BIN / "python"} {RELAY_SCRIPT} {work / "api.sock"} {token};
    encoder json;
    respawn false;
}}
neighbor {PEER} {{
    router-id 192.0.2.11;
    local-address 192.0.2.11;
    local-as 64512;
    peer-as 23000;
    {extra}
    api {{ processes [ spiderbgp ]; neighbor-changes; }}
}}
"""
    )
    return conf


def _process(ns: Netns, work: Path, events: list[Event], extra: str = "") -> ExabgpProcess:
    proc = ExabgpProcess(
        command=ip_netns_exec(ns, [str(VENV_BIN / "exabgp"), "server"]),
        config_path=work / "exabgp.conf",
        socket_path=work / "api.sock",
        log_path=work / "exabgp.log",
        env={"PATH": "/usr/sbin:/usr/bin:/bin", **exabgp_environment(pipename="drv", cli=False)},
        on_event=events.append,
    )
    _conf(work, proc.token, extra)
    return proc


@pytest.fixture
async def exa(solo: tuple[Netns, Path]) -> AsyncIterator[tuple[ExabgpProcess, list[Event]]]:
    ns, work = solo
    events: list[Event] = []
    proc = _process(ns, work, events)
    await proc.start()
    try:
        yield proc, events
    finally:
        await proc.stop()


async def test_each_command_gets_its_own_ack_and_output(exa: tuple[ExabgpProcess, list[Event]]) -> None:
    proc, _ = exa
    results = await proc.send_many(
        [
            f"neighbor {PEER} announce attributes next-hop 192.0.2.11 nlri 10.244.1.1/32 10.244.1.2/32",
            "this is not a command",
            "neighbor 198.51.100.9 announce route 10.244.1.3/32 next-hop 192.0.2.11",  # no such neighbor
            f"neighbor {PEER} withdraw attributes next-hop 192.0.2.11 nlri 10.244.1.2/32",
            SHOW_ADJ_RIB_OUT,
        ]
    )
    assert [r.ok for r in results] == [True, False, False, True, True]
    routes = [r for line in results[-1].output for r in parse_adj_rib_line(line)]
    assert [(r.peer, r.prefix, str(r.next_hop)) for r in routes] == [(PEER, N("10.244.1.1/32"), "192.0.2.11")]
    assert all(not r.output for r in results[:-1])


async def test_bulk_batch_of_thousands_of_prefixes_is_acked(exa: tuple[ExabgpProcess, list[Event]]) -> None:
    proc, _ = exa
    nets = list(N("10.250.0.0/20").subnets(new_prefix=32))  # 4096 prefixes, 9 lines
    lines = [
        f"neighbor {PEER} announce attributes next-hop 192.0.2.11 nlri "
        + " ".join(map(str, nets[i : i + 500]))
        for i in range(0, len(nets), 500)
    ]
    results = await proc.send_many(lines)
    assert len(results) == len(lines) and all(r.ok for r in results)
    shown = await proc.send(SHOW_ADJ_RIB_OUT)
    assert {r.prefix for line in shown.output for r in parse_adj_rib_line(line)} == set(nets)


async def test_lines_of_nlri_per_line_prefixes_never_wait_for_exabgps_idle_tick(
    exa: tuple[ExabgpProcess, list[Event]],
) -> None:
    """ExaBGP advances an API command by 50 prefixes per loop turn and then sleeps for its idle tick
    (50 ms with our reactor speed) unless new input arrives: 500-prefix lines wait 10 ticks each,
    lines of NLRI_PER_LINE prefixes are acked within one turn.  What makes that so is checked here:
    every line carries fewer than 50 prefixes, and ExaBGP acks and holds every one of them; the time
    it saves is bench_bgp's figure (a timed test would assert the machine's load)."""
    proc, _ = exa
    attrs = RouteAttributes(next_hop=ipaddress.ip_address("192.0.2.11"))
    first = [N(f"10.251.{i // 250}.{i % 250}/32") for i in range(1000)]
    second = [N(f"10.252.{i // 250}.{i % 250}/32") for i in range(1000)]
    wide = announce_commands(PEER, attrs, first, per_line=500)
    narrow = announce_commands(PEER, attrs, second)
    assert NLRI_PER_LINE < 50
    assert len(wide) == 2 and len(narrow) == -(-1000 // NLRI_PER_LINE)
    assert all(len(line.split(" nlri ", 1)[1].split()) <= NLRI_PER_LINE for line in narrow)
    assert all(r.ok for r in await proc.send_many(wide))
    assert all(r.ok for r in await proc.send_many(narrow))
    shown = await proc.send(SHOW_ADJ_RIB_OUT)
    assert {r.prefix for line in shown.output for r in parse_adj_rib_line(line)} == {*first, *second}


async def test_exabgp_death_is_noticed_at_once(exa: tuple[ExabgpProcess, list[Event]]) -> None:
    proc, _ = exa
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(proc.closed.wait(), 1.0)
    assert "ExaBGP exited" in proc.close_reason or "API pipe" in proc.close_reason
    with pytest.raises(ExabgpGone):
        await proc.send(SHOW_ADJ_RIB_OUT)


def _relay_pid(exabgp_pid: int) -> int:
    kids = Path(f"/proc/{exabgp_pid}/task/{exabgp_pid}/children").read_text().split()
    assert len(kids) == 1, kids
    return int(kids[0])


async def test_commands_go_straight_into_exabgps_pipe_and_the_relay_holds_no_copy(
    exa: tuple[ExabgpProcess, list[Event]],
) -> None:
    proc, _ = exa
    assert proc.pid is not None
    relay = _relay_pid(proc.pid)
    # the relay handed both pipe ends over and then lets go of its copies: its stdin and stdout
    # become /dev/null right after the agent has the pipes
    deadline = time.monotonic() + 5
    while (
        os.readlink(f"/proc/{relay}/fd/0") != os.devnull or os.readlink(f"/proc/{relay}/fd/1") != os.devnull
    ):
        assert time.monotonic() < deadline, "the relay kept its copies of ExaBGP's pipes"
        await asyncio.sleep(0.01)
    result = await proc.send(f"neighbor {PEER} announce route 10.244.9.9/32 next-hop 192.0.2.11")
    assert result.ok


async def test_a_dead_relay_ends_the_generation(exa: tuple[ExabgpProcess, list[Event]]) -> None:
    proc, _ = exa
    assert proc.pid is not None
    os.kill(_relay_pid(proc.pid), signal.SIGKILL)
    await asyncio.wait_for(proc.closed.wait(), 2.0)
    assert proc.close_reason == "the relay exited"
    with pytest.raises(ExabgpGone):
        await proc.send(SHOW_ADJ_RIB_OUT)


async def test_a_stopped_generation_leaves_no_relay(exa: tuple[ExabgpProcess, list[Event]]) -> None:
    proc, _ = exa
    assert proc.pid is not None
    relay = _relay_pid(proc.pid)
    await proc.stop()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{relay}").exists() and Path(f"/proc/{relay}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "relay still running"
        await asyncio.sleep(0.05)


async def test_a_broken_config_fails_start_with_one_line(solo: tuple[Netns, Path]) -> None:
    ns, work = solo
    proc = _process(ns, work, [], extra="no-such-keyword 1;")
    with pytest.raises(ExabgpError) as err:
        await proc.start(timeout=20)
    assert "\n" not in str(err.value)
    assert "ExaBGP exited" in str(err.value)
    assert "no-such-keyword" in str(err.value) or "valid" in str(err.value)


class HostRoutes:
    """Host routes to pods in the test's namespace, as the CNI ptp plugin makes them: through a dummy
    veth "pods" (the speaker reads them with its own NetlinkRouteSource)."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        run(ns, ["ip", "link", "add", "pods", "type", "veth", "peer", "name", "podpeer"])
        run(ns, ["ip", "link", "set", "pods", "up"])
        run(ns, ["ip", "link", "set", "podpeer", "up"])

    def add(self, *ips: str) -> None:
        for ip in ips:
            run(self.ns, ["ip", "route", "replace", ip, "dev", "pods", "scope", "host"])

    def delete(self, *ips: str) -> None:
        for ip in ips:
            run(self.ns, ["ip", "route", "del", ip, "dev", "pods"])


def _speaker(
    ns: Netns,
    work: Path,
    *,
    backoff: tuple[float, float] = (0.5, 30.0),
    **top: object,
) -> BgpSpeaker:
    raw = {
        "asn": 64512,
        "nextHop": "192.0.2.11",
        "runtimeDir": str(work / "rt"),
        "reconcileInterval": 0,
        "announceWhen": "allocated",
        "peers": [{"address": PEER, "asn": 23000, "gracefulRestart": 0, "maxPrefixes": 3}],
        **top,
    }
    return BgpSpeaker(
        parse_bgp_config(raw, source="t"),
        exabgp_command=ip_netns_exec(ns, [str(VENV_BIN / "exabgp"), "server"]),
        route_source=NetlinkRouteSource(netns=ns.name),
        cli=False,
        backoff=backoff,
    )


async def _adj(sp: BgpSpeaker) -> set[str]:
    return {str(r.prefix) for r in await sp.routes()}


async def _until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    """Wait on observable state (the speaker's adj-rib-out, a metric): a liveness bound only."""
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        await asyncio.sleep(0.02)


async def test_speaker_gates_on_host_routes_and_limits_per_peer(solo: tuple[Netns, Path]) -> None:
    ns, work = solo
    routes = HostRoutes(ns)
    sp = _speaker(ns, work)
    held_back = sp.metrics.held_back_prefixes.labels(peer=PEER)

    async def adj_is(*want: str) -> bool:
        return await _adj(sp) == set(want)

    await sp.start()
    try:
        assert sp.status()[0].state == "start"
        sp.set_pool_subnets([POOL])
        sp.set_pod_ips({f"10.244.1.{i}": POOL for i in range(1, 6)})
        await sp.wait_synced()
        assert await _adj(sp) == set()  # no host route yet
        routes.add("10.244.1.2", "10.244.1.4")
        await _until(lambda: adj_is("10.244.1.2/32", "10.244.1.4/32"), "the two routed IPs announced")
        routes.add("10.244.1.1", "10.244.1.3", "10.244.1.5")

        async def all_five_seen() -> bool:  # three announced, two held back by maxPrefixes
            return bool(held_back._value.get() == 2)

        await _until(all_five_seen, "the speaker seeing all five host routes")
        await sp.wait_synced()
        assert await _adj(sp) == {
            "10.244.1.1/32",
            "10.244.1.2/32",
            "10.244.1.4/32",
        }  # maxPrefixes 3, no churn
        routes.delete("10.244.1.2")
        await _until(
            lambda: adj_is("10.244.1.1/32", "10.244.1.3/32", "10.244.1.4/32"),
            "a held-back IP taking the place",
        )
        await sp.wait_synced()
        assert held_back._value.get() == 1
        sp.set_pool_subnets(["10.244.1.0/30"])  # the pool shrank: .4 is outside it now
        await sp.wait_synced()
        assert await _adj(sp) == {"10.244.1.1/32", "10.244.1.3/32"}
        assert sp.refused == {
            "10.244.1.4": "outside every pool subnet",
            "10.244.1.5": "outside every pool subnet",
        }
        assert sp.status()[0].prefixes == 2
    finally:
        await sp.stop()
    assert not (work / "rt" / "exabgp.pid").exists()
    with pytest.raises(SpeakerNotRunning):
        await sp.routes()
    assert sp.status()[0].state == "down"


def _exabgp_pids(conf: Path) -> set[int]:
    """The processes running ExaBGP with ``conf`` (found by their command line)."""
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(conf).encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    pids.add(int(entry.name))
    return pids


async def test_new_speaker_stops_an_exabgp_left_behind(solo_sandbox: tuple[Sandbox, Netns, Path]) -> None:
    """The agent (a speaker in its own process, tests/bgp/speaker_main.py) is SIGKILLed while its
    ExaBGP is frozen (SIGSTOP), so the kernel's parent-death SIGTERM cannot end it: that ExaBGP and
    its pid file are left behind, and the next speaker with the runtime dir stops it."""
    sb, ns, work = solo_sandbox
    bgp = {
        "asn": 64512,
        "nextHop": "192.0.2.11",
        "runtimeDir": str(work / "rt"),
        "requireHostRoute": False,
        "reconcileInterval": 0,
        "peers": [{"address": PEER, "asn": 23000, "gracefulRestart": 0}],
    }
    conf = work / "agent.json"
    conf.write_text(json.dumps({"bgp": bgp, "pods": {}, "pools": []}))
    agent = sb.popen(
        None,
        [sys.executable, "-m", "tests.bgp.speaker_main", str(conf), ns.name],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert agent.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 30)
    agent.stdout.close()
    assert line.strip() == b"ready"
    left = ProcRef.of(int((work / "rt" / "exabgp.pid").read_text()))
    try:
        left.signal(signal.SIGSTOP)
        os.kill(agent.pid, signal.SIGKILL)  # the agent crashes
        assert await asyncio.to_thread(agent.wait, 10) == -signal.SIGKILL
        assert left.alive(), "the frozen ExaBGP should have outlived its agent"
        second = _speaker(ns, work, requireHostRoute=False)
        await second.start()
        try:
            assert int((work / "rt" / "exabgp.pid").read_text()) != left.pid
            assert not left.alive(), "the ExaBGP left behind is still running"
            assert second.running
        finally:
            await second.stop()
    finally:
        left.signal(signal.SIGKILL)  # the process this test froze, if an assertion failed


async def test_stopping_while_exabgp_comes_up_leaves_no_process(solo: tuple[Netns, Path]) -> None:
    """The speaker stops while a restarted ExaBGP has not connected yet: that process goes too.  The
    real ExaBGP is killed (SIGKILL); its successor is frozen (SIGSTOP) as soon as it exists, so it
    cannot connect before the speaker stops."""
    ns, work = solo
    sp = _speaker(ns, work, backoff=(0.1, 0.1), requireHostRoute=False)
    conf = work / "rt" / "exabgp.conf"
    await sp.start()
    coming: ProcRef | None = None
    try:
        await sp.wait_synced()
        [first] = _exabgp_pids(conf)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while coming is None:
            assert time.monotonic() < deadline, "no new ExaBGP after the kill"
            for pid in _exabgp_pids(conf) - {first}:
                with contextlib.suppress(ProcessLookupError):
                    coming = ProcRef.of(pid)
                    coming.signal(signal.SIGSTOP)
            await asyncio.sleep(0.005)
        assert not sp.running and sp.restarts == 1
        await sp.stop()
        assert not coming.alive(), "the ExaBGP that was coming up outlived the speaker"
    finally:
        await sp.stop()
        if coming is not None:
            coming.signal(signal.SIGKILL)  # the process this test froze, if an assertion failed


async def test_incremental_syncs_keep_exabgps_adj_rib_out_exact(solo: tuple[Netns, Path]) -> None:
    """The real sync on its incremental path (``advertise: host``, no ``maxPrefixes``) against the real
    ExaBGP: after a seeded random run of allocations, releases and host routes made in the kernel,
    ExaBGP's adj-rib-out holds exactly the allocated and routed addresses, every time it is looked at
    (tests/bgp/test_incremental.py checks the same bookkeeping over many more runs, without ExaBGP)."""
    ns, work = solo
    routes = HostRoutes(ns)
    sp = _speaker(ns, work, peers=[{"address": PEER, "asn": 23000, "gracefulRestart": 0}])
    assert sp._incremental
    rng = random.Random(13)
    ips = [f"10.244.7.{i}" for i in range(1, 25)]
    pods: set[str] = set()
    routed: set[str] = set()

    async def exact() -> bool:
        return await _adj(sp) == {f"{ip}/32" for ip in pods & routed}

    sp.set_pool_subnets([POOL])
    await sp.start()
    try:
        await sp.wait_synced()
        for step in range(80):
            ip = rng.choice(ips)
            kind = rng.choice(["pod+", "pod-", "route+", "route-"])
            if kind == "pod+" and ip not in pods:
                sp.add_pod_ip(ip, POOL)
                pods.add(ip)
            elif kind == "pod-" and ip in pods:
                sp.remove_pod_ip(ip)
                pods.discard(ip)
            elif kind == "route+" and ip not in routed:
                routes.add(ip)
                routed.add(ip)
            elif kind == "route-" and ip in routed:
                routes.delete(ip)
                routed.discard(ip)
            if step % 8 == 7:
                await _until(exact, f"adj-rib-out exact after step {step}")
                assert not sp._full_sync  # the changed prefixes alone got it there
        await _until(exact, "adj-rib-out exact at the end")
        assert pods & routed, "the run announced nothing: a weak seed"
        assert sp.metrics.command_errors._value.get() == 0
    finally:
        await sp.stop()
