"""The agent socket's bounds on its clients: idle, header and body timeouts that trickled bytes do not
extend, a connection limit that makes room by closing the idlest connection, and, in a real agent
process under a low descriptor limit, hundreds of idle clients that neither stop the plugin from
being served nor flood the log."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from cni import wire
from ipam.store.sqlite import SqliteStore
from spiderbgp.cni_endpoint import SocketLimits, _RateLimitedLog
from tests.agent.conftest import AgentProcess, agent_config, eventually, seed
from tests.cni.conftest import Agent, Plugin, cni_env, netconf
from tests.cni.test_socket_hostile import add_body, post, responses

FAST = SocketLimits(max_connections=4, idle_timeout=0.5, header_timeout=0.5, body_timeout=0.5)


@pytest.fixture
def make_agent(tmp_path: Path, store: SqliteStore) -> Iterator[Callable[[SocketLimits], Agent]]:
    agents: list[Agent] = []

    def make(limits: SocketLimits) -> Agent:
        agent = Agent(tmp_path / f"run{len(agents)}" / "agent.sock", store, limits=limits)
        agents.append(agent)
        agent.start()
        return agent

    try:
        yield make
    finally:
        for agent in agents:
            agent.stop()


def connect(path: Path, stack: ExitStack, timeout: float = 10) -> socket.socket:
    s = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    s.connect(str(path))  # blocking: a unix socket's full backlog is EAGAIN for a non-blocking connect
    s.settimeout(timeout)
    return s


def read_to_close(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_an_idle_connection_is_closed_after_the_idle_timeout(
    make_agent: Callable[[SocketLimits], Agent],
) -> None:
    agent = make_agent(FAST)
    with ExitStack() as stack:
        silent = connect(agent.socket_path, stack)
        served = connect(agent.socket_path, stack)
        served.sendall(post(wire.PATH_ADD, add_body(agent)))  # keep-alive: answered, then idle
        assert read_to_close(silent) == b""
        [(status, _, _)] = responses(read_to_close(served))
        assert status == 200
    eventually(lambda: agent.served.open_connections == 0, 5, "both connections closed")


@pytest.mark.parametrize(
    ("head", "trickle", "phase"),
    [
        (b"", b"POST /v1/cni/add HTTP/1.1\r\nHost: agent\r\nX-Slow: " + b"a" * 40, "head"),
        (
            b"POST /v1/cni/add HTTP/1.1\r\nHost: agent\r\nContent-Length: 500\r\n\r\n",
            b"{" + b" " * 40,
            "body",
        ),
    ],
    ids=["slowloris head", "slow body"],
)
def test_a_request_trickled_in_gets_408_when_its_phase_is_over(
    make_agent: Callable[[SocketLimits], Agent], head: bytes, trickle: bytes, phase: str
) -> None:
    """One byte every 50 ms keeps the connection busy (never idle for 0.5 s) but does not move the
    deadline: the request is refused once its head (or body) is 0.5 s late."""
    agent = make_agent(FAST)
    before = agent.store.records("pool4")
    with ExitStack() as stack:
        s = connect(agent.socket_path, stack)
        s.sendall(head)
        sent = 0
        while sent < len(trickle) and not select.select([s], [], [], 0.05)[0]:  # until it answers
            s.sendall(trickle[sent : sent + 1])
            sent += 1
        answer = read_to_close(s)
    assert sent < len(trickle)  # answered while bytes were still trickling in (2 s of them)
    [(status, _, body)] = responses(answer)
    assert status == 408 and body["code"] == wire.CODE_BAD_REQUEST
    assert body["details"] == f"request timeout: the {phase} did not arrive within 0.5s"
    assert agent.store.records("pool4") == before and agent.operations == []


def test_a_slow_chunked_body_on_the_aiohttp_path_gets_408(
    make_agent: Callable[[SocketLimits], Agent],
) -> None:
    agent = make_agent(FAST)
    with ExitStack() as stack:
        s = connect(agent.socket_path, stack)
        s.sendall(b'POST /v1/cni/add HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"con')
        answer = b""
        while not answer.endswith(b"}"):  # the answer, without waiting for aiohttp's lingering close
            answer += s.recv(65536)
    [(status, _, body)] = responses(answer)
    assert status == 408 and body["details"] == "request timeout: the body did not arrive within 0.5s"
    assert agent.operations == [("add", wire.CODE_BAD_REQUEST)]


def test_at_the_limit_a_new_connection_closes_the_idlest(make_agent: Callable[[SocketLimits], Agent]) -> None:
    agent = make_agent(SocketLimits(max_connections=4, idle_timeout=60))
    with ExitStack() as stack:
        idle = []
        for _ in range(4):
            idle.append(connect(agent.socket_path, stack))
            eventually(lambda: agent.served.open_connections == len(idle), 5, "the connection accepted")
        new = connect(agent.socket_path, stack)
        new.sendall(post(wire.PATH_ADD, add_body(agent), "Connection: close"))
        [(status, _, body)] = responses(read_to_close(new))
        assert status == 200 and body["ips"][0]["address"] == "10.244.100.10/24"
        assert read_to_close(idle[0]) == b""  # the oldest idle one made room
        assert agent.served.turned_away == 0


def test_at_the_limit_with_no_idle_connection_a_new_one_is_turned_away(
    make_agent: Callable[[SocketLimits], Agent],
) -> None:
    agent = make_agent(SocketLimits(max_connections=4, header_timeout=60))
    with ExitStack() as stack:
        for _ in range(4):  # each in the middle of a head: not idle
            connect(agent.socket_path, stack).sendall(b"POST /v1/cni/add HTTP/1.1\r\n")
        eventually(lambda: agent.served.open_connections == 4, 5, "4 connections accepted")
        eventually(lambda: not any(c.idle for c in agent.served.connections), 5, "4 heads arriving")
        s = connect(agent.socket_path, stack)
        [(status, _, body)] = responses(read_to_close(s))
    assert status == 503 and body["code"] == wire.CODE_TRY_AGAIN
    assert body["details"] == "agent socket: 4 connections open (the limit), none of them idle"
    assert agent.served.turned_away == 1


def test_repeated_warnings_are_one_line_per_interval() -> None:
    lines: list[str] = []
    limited = _RateLimitedLog(10.0, lines.append)
    for i in range(1000):
        limited.warn(i * 0.01, "cannot accept a connection: Too many open files")
    limited.warn(10.5, "cannot accept a connection: Too many open files")
    assert lines == [
        "cannot accept a connection: Too many open files",
        "cannot accept a connection: Too many open files (999 more in the last 10s)",
    ]


def test_out_of_descriptors_is_one_warning_line_and_serving_resumes(
    make_agent: Callable[[SocketLimits], Agent], caplog: pytest.LogCaptureFixture
) -> None:
    """The process runs out of descriptors while clients wait in the backlog: the accept loop pauses and
    retries, logging one line (not asyncio's traceback per attempt), and serves them once
    descriptors are free again."""
    agent = make_agent(SocketLimits())
    caplog.set_level(logging.DEBUG, logger="spiderbgp.cni_endpoint")
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1, hard)
        )
        with contextlib.suppress(OSError):  # take every descriptor number left below the limit
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        for c in clients:
            c.connect(str(agent.socket_path))  # queued in the backlog: accepting them needs descriptors
        eventually(lambda: agent.served._accept_log.left_out >= 3, 10, "accept retried and failed")
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with ExitStack() as stack:
        for c in clients:
            stack.enter_context(c)
            c.settimeout(10)
        clients[0].sendall(post(wire.PATH_ADD, add_body(agent), "Connection: close"))
        [(status, _, _)] = responses(read_to_close(clients[0]))
        assert status == 200
    warnings = [
        r for r in caplog.records if r.name == "spiderbgp.cni_endpoint" and r.levelno >= logging.WARNING
    ]
    assert [r.getMessage().split(" (")[0] for r in warnings] == [
        "CNI socket: cannot accept a connection: Too many open files"
    ]
    assert all(r.exc_info is None for r in caplog.records)


# -- the case: a real agent process with 256 descriptors and 300 idle clients -------------------


def test_idle_clients_beyond_the_descriptor_limit_do_not_stop_the_plugin(
    tmp_path: Path, plugin: Plugin
) -> None:
    db = tmp_path / "state" / "state.db"
    uids = seed(db, [("web-0", "node1")])
    config = agent_config(tmp_path, "node1", db)
    agent = AgentProcess(config, tmp_path / "agent.yaml", tmp_path / "agent.log", nofile=256)
    try:
        agent.start()
        agent.wait_ready()
        with ExitStack() as stack:
            clients = [connect(agent.socket_path, stack) for _ in range(300)]
            # the agent keeps at most 128 (half its descriptors): the others were closed for newer ones
            closed: set[int] = set()

            def count_closed() -> int:
                for i, c in enumerate(clients):
                    if i not in closed:
                        c.setblocking(False)
                        try:
                            if c.recv(1) == b"":
                                closed.add(i)
                        except BlockingIOError:
                            pass
                return len(closed)

            eventually(lambda: count_closed() >= 300 - 128, 10, "the idlest connections closed")
            assert closed == set(range(300 - 128))  # the oldest ones
            env = cni_env("ADD", "c1", uid=uids["web-0"], pod="web-0")
            res = plugin.run(env, netconf(agent.socket_path, "1.0.0"))
            assert res.rc == 0, res
            assert res.json["ips"][0]["address"].startswith("10.244.100.")
            assert agent.http("/healthz") == (200, "ok\n")
        log = agent.log()
        assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    finally:
        agent.kill()


def test_a_request_trickled_in_byte_by_byte_within_its_deadlines_is_answered(
    make_agent: Callable[[SocketLimits], Agent],
) -> None:
    """Bytes arriving one by one are parsed once the head's blank line (then the body's last byte) is
    there, not on every byte, and the call is answered like any other."""
    agent = make_agent(SocketLimits())
    data = post(wire.PATH_ADD, add_body(agent), "Connection: close")
    with ExitStack() as stack:
        s = connect(agent.socket_path, stack)
        for i in range(len(data)):
            s.sendall(data[i : i + 1])
            if i % 64 == 0:
                time.sleep(0.001)  # let the agent read what came so far: many small chunks
        [(status, _, body)] = responses(read_to_close(s))
    assert status == 200 and body["ips"][0]["address"] == "10.244.100.10/24"
