"""spiderbgp.cni_endpoint over a real unix socket, answering with the agent's real CNI backend (IPAM on
SQLite): validation, error mapping, socket set-up, shutdown.  A call is kept in flight by another
writer holding the database (``write_lock``), as a busy node would."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cni import wire, wire_agent
from ipam.service import IpamService
from ipam.store.sqlite import SqliteStore
from spiderbgp.agent import INLINE_WAIT
from spiderbgp.cni_endpoint import (
    CniSocket,
    SocketInUse,
    make_app,
    serve,
    shutdown,
)
from spiderbgp.cni_http import Refusal, _Partial, parse_call
from spiderbgp.ipam_backend import IpamBackend, NodeIpEvents

from .conftest import NAMESPACE, NODE, Cluster, records, write_lock


class Announcer:
    """Where the agent tells the BGP speaker about this node's addresses; ``crash`` makes that fail,
    an unexpected error in the middle of an ADD."""

    def __init__(self) -> None:
        self.crash: Exception | None = None

    def added(self, ips: Mapping[str, str]) -> None:
        if self.crash is not None:
            raise self.crash

    def removed(self, ips: Sequence[str]) -> None:
        if self.crash is not None:
            raise self.crash


@dataclass
class Served:
    """The agent's real CNI backend (IpamBackend over IpamService over SqliteStore, group commit on
    the event loop as the agent runs it) behind the endpoint, on a temp socket, in this test's loop."""

    store: SqliteStore
    cluster: Cluster
    backend: IpamBackend
    announcer: Announcer
    session: aiohttp.ClientSession
    observed: list[tuple[str, int]]
    path: Path
    runner: CniSocket
    ready: list[bool]


@pytest.fixture
async def served(tmp_path: Path, store: SqliteStore) -> AsyncIterator[Served]:
    cluster = Cluster(store)
    cluster.pod("web-0")
    announcer, ready = Announcer(), [True]
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ipam")
    backend = IpamBackend(
        IpamService(store, node_name=NODE),
        executor=executor,
        events=NodeIpEvents(added=announcer.added, removed=announcer.removed),
        ready=lambda: ready[0],
        inline_wait=INLINE_WAIT,
    )
    observed: list[tuple[str, int]] = []
    path = tmp_path / "d" / "agent.sock"
    try:
        runner = await serve(
            make_app(backend, metrics=lambda op, code, _s: observed.append((op, code))),
            str(path),
            shutdown_timeout=5,
        )
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)))
        try:
            yield Served(store, cluster, backend, announcer, session, observed, path, runner, ready)
        finally:
            await session.close()
            await shutdown(runner)
    finally:
        executor.shutdown(wait=True)


async def call(session: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with session.request(method, f"http://agent{path}", **kw) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (at most 10 s) until ``condition()`` holds."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


def add(container: str, pod: str, *pools: str) -> dict[str, Any]:
    return wire.AddRequest(
        container_id=container,
        if_name="eth0",
        netns="/n",
        pod_namespace=NAMESPACE,
        pod_name=pod,
        default_ipv4_ippool=pools,
        network="net",
    ).to_json()


ADD = add("c", "web-0")  # the first ADD of a test gets the first address of pool4
ROUTES = [
    {"ifName": "eth0", "dst": "10.99.0.0/16", "gw": "10.244.100.1"},
    {"ifName": "eth0", "dst": "0.0.0.0/0", "gw": "10.244.100.1"},
]


def answer(address: str) -> dict[str, Any]:
    """The agent's answer to an ADD that got ``address`` of pool4."""
    ip = {"address": f"{address}/24", "pool": "pool4", "nic": "eth0", "gateway": "10.244.100.1", "version": 4}
    return {"apiVersion": "v1", "ips": [ip], "routes": ROUTES}


async def test_every_endpoint_round_trips(served: Served) -> None:
    session, store = served.session, served.store
    first = await call(session, "POST", wire.PATH_ADD, json=ADD)
    assert first == await call(session, "POST", wire.PATH_ADD, json=ADD) == (200, answer("10.244.100.10"))
    assert records(store) == [("10.244.100.10", "default/web-0")]
    check = wire.CheckRequest(container_id="c", if_name="eth0", ips=["10.244.100.10/24"], pod_namespace=NAMESPACE,
                              pod_name="web-0", network="net")  # fmt: skip
    assert await call(session, "POST", wire.PATH_CHECK, json=check.to_json()) == (200, {"apiVersion": "v1"})
    wrong = {**check.to_json(), "ips": ["10.244.100.12/24"]}
    status, err = await call(session, "POST", wire.PATH_CHECK, json=wrong)
    assert (status, err["code"]) == (409, wire.CODE_RESERVATION_MISMATCH)
    # GC releases what the runtime no longer lists, once its pod is gone
    served.cluster.pod("web-1")
    assert await call(session, "POST", wire.PATH_ADD, json=add("c2", "web-1")) == (
        200,
        answer("10.244.100.11"),
    )
    served.cluster.delete_pod("web-1")
    greq = wire.GcRequest(
        network="net", valid_attachments=[wire.Attachment(container_id="c", if_name="eth0")]
    )
    status, body = await call(session, "POST", wire.PATH_GC, json=greq.to_json())
    assert (status, body) == (200, {"apiVersion": "v1", "released": ["10.244.100.11"]})
    assert wire_agent.read_gc_result(body) == wire_agent.GcResult(released=["10.244.100.11"])
    assert records(store) == [("10.244.100.10", "default/web-0")]
    uid = served.cluster.uid("web-0")
    served.cluster.delete_pod("web-0")
    dreq = wire.DelRequest(container_id="c", if_name="eth0", pod_namespace=NAMESPACE, pod_name="web-0",
                           pod_uid=uid, network="net")  # fmt: skip
    assert await call(session, "POST", wire.PATH_DEL, json=dreq.to_json()) == (200, {"apiVersion": "v1"})
    assert records(store) == []
    # the query reaches the agent decoded: the pool it names is the one it looks at
    sreq = wire.StatusRequest(network="net_1.a-b", default_ipv4_ippool=["pool4"])
    ok = {"apiVersion": "v1", "status": "ok"}
    assert await call(session, "GET", f"{wire.PATH_STATUS}?{sreq.to_query()}") == (200, ok)
    sreq = wire.StatusRequest(network="net_1.a-b", default_ipv4_ippool=["pool.a-1"])
    status, err = await call(session, "GET", f"{wire.PATH_STATUS}?{sreq.to_query()}")
    assert (status, err["code"], err["details"]) == (503, wire.CODE_UNAVAILABLE, "no free IP in pool.a-1")
    assert [op for op, _ in served.observed] == [
        "add",
        "add",
        "check",
        "check",
        "add",
        "gc",
        "del",
        "status",
        "status",
    ]


@pytest.mark.parametrize(("body", "needle"), [({**ADD, "ifName": 3}, "AddRequest.ifName: expected a string"), ({"containerID": "c"}, "AddRequest.ifName: missing"),
                                              ({**ADD, "apiVersion": "v9"}, "AddRequest.apiVersion"), ("not json", "not JSON")])  # fmt: skip
async def test_bad_bodies_are_400_naming_the_field(served: Served, body: Any, needle: str) -> None:
    kw = {"data": body} if isinstance(body, str) else {"json": body}
    status, err = await call(served.session, "POST", wire.PATH_ADD, **kw)
    assert status == 400 and err["code"] == wire.CODE_BAD_REQUEST and needle in err["details"]
    assert records(served.store) == [] and served.observed == [("add", wire.CODE_BAD_REQUEST)]


async def test_oversized_body_is_413(served: Served) -> None:
    status, err = await call(
        served.session, "POST", wire.PATH_ADD, data=io.BytesIO(b"x" * (wire.MAX_BODY_BYTES + 1))
    )
    assert status == 413 and err["code"] == wire.CODE_BAD_REQUEST
    assert records(served.store) == []


async def test_unknown_path_and_method_are_json(served: Served) -> None:
    session = served.session
    assert (await call(session, "GET", "/v1/cni/nothing"))[1]["code"] == wire.CODE_BAD_REQUEST
    assert (await call(session, "GET", wire.PATH_ADD))[0] == 405
    assert (await call(session, "GET", f"{wire.PATH_STATUS}?bogus=1"))[1][
        "details"
    ] == "StatusRequest.bogus: unknown query parameter"


async def test_backend_errors_and_crashes(served: Served) -> None:
    session = served.session
    served.cluster.pod("web-1")
    tiny = add("c2", "web-1", "tiny")
    status, body = await call(session, "POST", wire.PATH_ADD, json=tiny)
    assert status == 200 and body["ips"][0]["address"] == "10.245.0.5/24"
    status, err = await call(session, "POST", wire.PATH_ADD, json=add("c", "web-0", "tiny"))
    assert status == 422 and wire.ErrorResponse.from_json(err) == wire.ErrorResponse(
        code=100,
        msg="no IP available",
        details="no IPv4 address for eth0: pool tiny: all IP addresses used out",
    )
    served.announcer.crash = RuntimeError("secret internals at /some/path")
    status, err = await call(session, "POST", wire.PATH_ADD, json=ADD)
    assert (status, err) == (
        500,
        {
            "apiVersion": "v1",
            "code": wire.CODE_AGENT_INTERNAL,
            "msg": "agent internal error",
            "details": "add: RuntimeError (see the agent log)",
        },  # the class, never the message
    )
    served.announcer.crash = None
    served.store.close()  # the store fails under the agent: a definite, retryable answer, and not ready
    status, err = await call(session, "POST", wire.PATH_ADD, json=add("c3", "web-0"))
    assert (status, err["code"], err["msg"]) == (503, wire.CODE_TRY_AGAIN, "object store unavailable")
    assert await call(session, "GET", wire.PATH_READYZ) == (
        503,
        {
            "apiVersion": "v1",
            "code": wire.CODE_UNAVAILABLE,
            "msg": "plugin not available",
            "details": "agent is not ready",
        },
    )


async def test_probes(served: Served) -> None:
    session, ok = served.session, {"apiVersion": "v1", "status": "ok"}
    assert await call(session, "GET", wire.PATH_HEALTHZ) == (200, ok)
    assert await call(session, "GET", wire.PATH_READYZ) == (200, ok)
    served.ready[0] = False  # e.g. the informers have not synced yet
    status, err = await call(session, "GET", wire.PATH_READYZ)
    assert status == 503 and err["code"] == wire.CODE_UNAVAILABLE
    assert await call(session, "GET", wire.PATH_HEALTHZ) == (200, ok)  # alive, only not ready


async def test_socket_and_directory_modes(served: Served) -> None:
    path = served.path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    with pytest.raises(SocketInUse, match="another process is listening"):
        await serve(make_app(served.backend), str(path))


async def test_stale_socket_replaced_and_regular_file_refused(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    runner = await serve(make_app(served.backend), str(path))
    await shutdown(runner)
    assert not path.exists()
    path.write_text("keep me")
    with pytest.raises(SocketInUse, match="is not a socket"):
        await serve(make_app(served.backend), str(path))
    assert path.read_text() == "keep me"


async def test_graceful_shutdown_finishes_in_flight_request(served: Served) -> None:
    runner = served.runner
    with write_lock(served.store):  # another writer holds the database: the ADD waits for it
        pending = asyncio.create_task(call(served.session, "POST", wire.PATH_ADD, json=ADD))
        await until(lambda: runner.busy == 1, "the ADD is being answered")
        stopping = asyncio.create_task(shutdown(runner))

        def refused() -> bool:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(served.path))
            except OSError:
                return True
            finally:
                probe.close()
            return False

        # shutdown has begun once no new connection is accepted; the held ADD and the shutdown still wait
        await until(refused, "shutdown stops accepting connections")
        assert not stopping.done() and not pending.done()
    assert await asyncio.wait_for(pending, 10) == (200, answer("10.244.100.10"))
    await asyncio.wait_for(stopping, 10)
    assert records(served.store) == [("10.244.100.10", "default/web-0")]


# -- the short path and the hand-over to aiohttp, over raw connections ------------------------------------


def _post(path: str, body: bytes, *extra: str, version: str = "HTTP/1.1") -> bytes:
    head = [f"POST {path} {version}", "Host: agent", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _responses(reader: asyncio.StreamReader, count: int) -> list[tuple[int, dict[str, str], Any]]:
    """``count`` HTTP responses with Content-Length bodies, in order."""
    out = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(headers["content-length"]))
        out.append((int(lines[0].split(" ")[1]), headers, json.loads(body)))
    return out


ADD_BYTES = json.dumps(ADD).encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_post(wire.PATH_ADD, ADD_BYTES), "add"),
        (_post(wire.PATH_DEL, b"{}", "Connection: keep-alive, Close"), "del close"),
        (b"GET /v1/cni/status?network=n HTTP/1.1\r\nHost: a\r\n\r\n", "status"),
        (_post(wire.PATH_ADD, ADD_BYTES)[:-3], "incomplete body"),
        (b"POST /v1/cni/add HTTP/1.1\r\nHost: a", "incomplete"),
        (_post(wire.PATH_ADD, ADD_BYTES, version="HTTP/1.0"), None),
        (_post("/v1/bgp/status", b""), None),
        (_post(wire.PATH_ADD + "?x=1", ADD_BYTES), None),
        (_post(wire.PATH_ADD, ADD_BYTES, "Content-Length: 3"), "refused 400"),
        (_post(wire.PATH_ADD, ADD_BYTES, "Transfer-Encoding: chunked"), "refused 400"),
        (_post(wire.PATH_ADD, ADD_BYTES, "Expect: 100-continue"), None),
        (_post(wire.PATH_ADD, ADD_BYTES, " folded"), "refused 400"),
        (_post(wire.PATH_ADD, ADD_BYTES, "Bad Name: x"), "refused 400"),
        (b"POST /v1/cni/add HTTP/1.1\r\nHost: a\r\n\r\n", None),
        (b"GET /v1/cni/status HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", None),
        (b"POST /v1/cni/add HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (wire.MAX_BODY_BYTES + 1), None),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 20000, "refused 431"),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n", "refused 431"),
        (b"FOO / HTTP/1.1\r\n\r\n", "refused 501"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "refused 505"),
    ],
)
def test_parse_call_takes_only_what_it_fully_understands(data: bytes, expected: str | None) -> None:
    incomplete = expected is not None and expected.startswith("incomplete")
    call = parse_call(data if incomplete else data + b"next")
    if expected is None:
        assert call is None
        return
    if incomplete:  # how long the request will be, once its head is there
        assert call == _Partial(len(data) + 3 if expected == "incomplete body" else 0)
        return
    if expected.startswith("refused"):
        assert isinstance(call, Refusal) and call.status == int(expected.split()[1])
        assert call.details.startswith("malformed HTTP request: ") and "\n" not in call.details
        return
    assert not isinstance(call, (_Partial, Refusal)) and call is not None
    operation, _, close = expected.partition(" ")
    assert (call.operation, call.close, call.size) == (operation, close == "close", len(data))


async def test_pipelined_calls_are_answered_in_order(served: Served) -> None:
    uid = served.cluster.pod("web-1")
    first = await call(served.session, "POST", wire.PATH_ADD, json=add("c2", "web-1"))
    assert first == (200, answer("10.244.100.10"))
    served.cluster.delete_pod("web-1")
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    try:
        dreq = wire.DelRequest(container_id="c2", if_name="eth0", pod_namespace=NAMESPACE, pod_name="web-1",
                               pod_uid=uid, network="net")  # fmt: skip
        writer.write(
            _post(wire.PATH_ADD, ADD_BYTES)
            + _post(wire.PATH_DEL, json.dumps(dreq.to_json()).encode())
            + _post(wire.PATH_ADD, b"{")
        )
        answers = await _responses(reader, 3)
    finally:
        writer.close()
    assert [(status, body.get("code")) for status, _, body in answers] == [
        (200, None),
        (200, None),
        (400, 106),
    ]
    assert answers[0][2] == answer("10.244.100.11")
    assert answers[0][1]["content-type"].startswith("application/json")
    # in order: the ADD came before the DEL freed .10, the DEL after it
    assert records(served.store) == [("10.244.100.11", "default/web-0")]
    assert served.observed == [("add", 0), ("add", 0), ("del", 0), ("add", wire.CODE_BAD_REQUEST)]


async def test_a_connection_changes_to_aiohttp_at_the_first_request_it_does_not_take(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    try:
        probe = b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n"
        writer.write(_post(wire.PATH_ADD, ADD_BYTES) + probe + _post(wire.PATH_ADD, ADD_BYTES))
        answers = await _responses(reader, 3)
    finally:
        writer.close()
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert answers[1][2] == {"apiVersion": "v1", "status": "ok"}
    assert answers[0][2] == answers[2][2] == answer("10.244.100.10")


@pytest.mark.parametrize("extra", [(), ("Transfer-Encoding: chunked",)])
async def test_requests_the_short_path_leaves_are_served_by_aiohttp(
    served: Served, extra: tuple[str, ...]
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    try:
        if extra:  # chunked: the same body in two chunks
            body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                10,
                ADD_BYTES[:10],
                len(ADD_BYTES) - 10,
                ADD_BYTES[10:],
            )
            writer.write(f"POST {wire.PATH_ADD} HTTP/1.1\r\nHost: a\r\n{extra[0]}\r\n\r\n".encode() + body)
        else:
            writer.write(_post(wire.PATH_ADD, ADD_BYTES, version="HTTP/1.0"))
        [(status, _, body)] = await _responses(reader, 1)
    finally:
        writer.close()
    assert (status, body) == (200, answer("10.244.100.10"))
    assert records(served.store) == [("10.244.100.10", "default/web-0")] and served.observed == [("add", 0)]


async def test_connection_close_is_honoured(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    try:
        writer.write(_post(wire.PATH_ADD, ADD_BYTES, "Connection: close"))
        [(status, headers, _)] = await _responses(reader, 1)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_bytes_sent_while_a_call_is_answered_wait_and_are_read_after(served: Served) -> None:
    """A client that sends on (more than a body's worth) while its call is held: reading pauses, the
    call is answered, then what followed is read (here not HTTP, which aiohttp refuses)."""
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    try:
        with write_lock(served.store):  # another writer holds the database: the ADD waits for it
            writer.write(_post(wire.PATH_ADD, ADD_BYTES))
            await until(lambda: served.runner.busy == 1, "the ADD is being answered")
            junk = b"x" * (wire.MAX_BODY_BYTES + 200_000)
            writer.write(junk)
            sending = asyncio.create_task(writer.drain())
            await asyncio.sleep(0.2)
        [(status, _, body)] = await _responses(reader, 1)
        assert (status, body) == (200, answer("10.244.100.10"))
        await asyncio.wait_for(sending, 5)
        rest = await asyncio.wait_for(reader.read(), 5)  # aiohttp answers the junk with 400 and closes
        assert rest == b"" or rest.split(b" ", 2)[1] == b"400"
    finally:
        writer.close()


async def test_a_client_that_does_not_read_its_answers_gets_no_more_answered(served: Served) -> None:
    """Pipelined calls from a client that reads nothing: once the answers fill the socket and the
    transport's buffer, the agent stops reading and answering (memory stays bounded) until the
    client reads, then answers the rest."""
    observed = served.observed
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    count = 8_000  # their answers (~110 bytes each, 880 KB) are more than the buffers hold
    try:
        writer.write(b"GET /v1/cni/status?network=n HTTP/1.1\r\nHost: a\r\n\r\n" * count)
        seen, still = -1, 0
        while still < 10 and len(observed) < count:  # until answering has stopped for 0.5 s
            await asyncio.sleep(0.05)
            seen, still = len(observed), still + 1 if len(observed) == seen else 0
        assert len(observed) < count
        answers = await _responses(reader, count)
        assert len(observed) == count and {status for status, _, _ in answers} == {200}
    finally:
        writer.close()
