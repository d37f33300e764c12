"""The ExaBGP driver and the speaker's bookkeeping against a real ExaBGP whose peer is unreachable: it
runs alone in a namespace that holds only a loopback, so no packet leaves it.  ExaBGP keeps API routes
in its adj-rib-out while the session is down, which is what these tests read back."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
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
from bgp_speaker.kernel import RouteBatch, RouteChange
from bgp_speaker.render import exabgp_environment
from bgp_speaker.speaker import RELAY_SCRIPT, BgpSpeaker, SpeakerNotRunning
from lab.netns import Netns, Sandbox, ip_netns_exec
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
def solo() -> Iterator[tuple[Netns, Path]]:
    with Sandbox() as sb:
        ns = sb.netns("solo")
        work = sb.add_path(Path(f"/tmp/sbgp-{sb.token}-drv"))
        work.mkdir()
        yield ns, work


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
    started = time.monotonic()
    results = await proc.send_many(lines)
    assert all(r.ok for r in results)
    shown = await proc.send(SHOW_ADJ_RIB_OUT)
    assert len(shown.output) == len(nets)
    assert time.monotonic() - started < 30


async def test_lines_of_nlri_per_line_prefixes_never_wait_for_exabgps_idle_tick(
    exa: tuple[ExabgpProcess, list[Event]],
) -> None:
    """ExaBGP advances an API command by 50 prefixes per loop turn and then sleeps for its idle tick
    (50 ms with our reactor speed) unless new input arrives: 500-prefix lines wait 10 ticks each,
    lines of NLRI_PER_LINE prefixes are acked within one turn."""
    proc, _ = exa
    attrs = RouteAttributes(next_hop=ipaddress.ip_address("192.0.2.11"))
    first = [N(f"10.251.{i // 250}.{i % 250}/32") for i in range(1000)]
    second = [N(f"10.252.{i // 250}.{i % 250}/32") for i in range(1000)]
    started = time.monotonic()
    assert all(r.ok for r in await proc.send_many(announce_commands(PEER, attrs, first, per_line=500)))
    wide = time.monotonic() - started
    started = time.monotonic()
    assert all(r.ok for r in await proc.send_many(announce_commands(PEER, attrs, second)))
    narrow = time.monotonic() - started
    assert NLRI_PER_LINE < 50
    assert wide > 0.8  # 20 ticks of 50 ms
    assert narrow < wide / 2, (narrow, wide)


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


class FakeRoutes:
    """Our own route-source seam (a HostRouteSource), fed by the test."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[RouteBatch] = asyncio.Queue()
        self.queue.put_nowait(RouteBatch((), reset=True))

    async def watch(self) -> AsyncIterator[RouteBatch]:
        while True:
            yield await self.queue.get()

    def add(self, *ips: str) -> None:
        self.queue.put_nowait(RouteBatch(tuple(RouteChange("add", N(f"{ip}/32"), True, oif=9) for ip in ips)))

    def delete(self, *ips: str) -> None:
        self.queue.put_nowait(RouteBatch(tuple(RouteChange("del", N(f"{ip}/32"), True, oif=9) for ip in ips)))


def _speaker(ns: Netns, work: Path, routes: FakeRoutes, **top: object) -> BgpSpeaker:
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
        route_source=routes,
        cli=False,
    )


async def _adj(sp: BgpSpeaker) -> set[str]:
    return {str(r.prefix) for r in await sp.routes()}


async def test_speaker_gates_on_host_routes_and_limits_per_peer(solo: tuple[Netns, Path]) -> None:
    ns, work = solo
    routes = FakeRoutes()
    sp = _speaker(ns, work, routes)
    await sp.start()
    try:
        assert sp.status()[0].state == "start"
        sp.set_pool_subnets([POOL])
        sp.set_pod_ips({f"10.244.1.{i}": POOL for i in range(1, 6)})
        await sp.wait_synced()
        assert await _adj(sp) == set()  # no host route yet
        routes.add("10.244.1.2", "10.244.1.4")
        await asyncio.sleep(0.2)
        await sp.wait_synced()
        assert await _adj(sp) == {"10.244.1.2/32", "10.244.1.4/32"}
        routes.add("10.244.1.1", "10.244.1.3", "10.244.1.5")
        await asyncio.sleep(0.2)
        await sp.wait_synced()
        assert await _adj(sp) == {
            "10.244.1.1/32",
            "10.244.1.2/32",
            "10.244.1.4/32",
        }  # maxPrefixes 3, no churn
        assert sp.metrics.held_back_prefixes.labels(peer=PEER)._value.get() == 2
        routes.delete("10.244.1.2")
        await asyncio.sleep(0.2)
        await sp.wait_synced()
        assert await _adj(sp) == {"10.244.1.1/32", "10.244.1.3/32", "10.244.1.4/32"}
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


async def test_new_speaker_stops_an_exabgp_left_behind(solo: tuple[Netns, Path]) -> None:
    ns, work = solo
    first = _speaker(ns, work, FakeRoutes(), requireHostRoute=False)
    await first.start()
    pid = int((work / "rt" / "exabgp.pid").read_text())
    # the agent "crashes": its ExaBGP is still there and the pid file too
    first._stopping = True
    await first._cancel_tasks()
    second = _speaker(ns, work, FakeRoutes(), requireHostRoute=False)
    await second.start()
    try:
        assert int((work / "rt" / "exabgp.pid").read_text()) != pid
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        await second.stop()
        proc = first._proc
        if proc is not None:
            await proc.stop()


async def test_stopping_while_exabgp_comes_up_leaves_no_process(solo: tuple[Netns, Path]) -> None:
    """The speaker stops while a restarted ExaBGP has not connected yet: that process goes too."""
    _, work = solo
    marker, pid_file = work / "failed-once", work / "hung.pid"
    hangs = work / "exabgp-that-hangs"
    hangs.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e {marker} ]; then touch {marker}; exit 3; fi\n"
        f"echo $$ > {pid_file}; exec sleep 600\n"  # alive, but its relay never connects
    )
    hangs.chmod(0o755)
    raw = {
        "asn": 64512,
        "nextHop": "192.0.2.11",
        "runtimeDir": str(work / "rt"),
        "requireHostRoute": False,
        "peers": [{"address": PEER, "asn": 23000}],
    }
    sp = BgpSpeaker(
        parse_bgp_config(raw, source="t"), exabgp_command=[str(hangs)], cli=False, backoff=(0.1, 0.1)
    )
    await sp.start()  # the first attempt exits: retried in the background
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    try:
        await sp.stop()
        assert not Path(f"/proc/{pid}").exists(), "the ExaBGP that was coming up outlived the speaker"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the process this test started, if the assertion failed
