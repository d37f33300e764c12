"""spiderbgp.cni_endpoint over a real unix socket: validation, error mapping, socket set-up, shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cni import wire, wire_agent
from spiderbgp.cni_endpoint import (
    BackendError,
    Refusal,
    SocketInUse,
    _Partial,
    make_app,
    parse_call,
    serve,
    shutdown,
)


class ScriptedBackend:
    """A CniBackend whose answers the test sets (the endpoint, not IPAM, is under test here)."""

    def __init__(self) -> None:
        self.raise_: BaseException | None = None
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()
        self.seen: list[object] = []
        self.is_healthy = True

    async def _step(self, request: object) -> None:
        self.seen.append(request)
        self.started.set()
        await self.release.wait()
        if self.raise_ is not None:
            raise self.raise_

    async def add(self, request: wire.AddRequest) -> wire.AddResponse:
        await self._step(request)
        return wire.AddResponse(
            ips=[wire.IPConfig(address="10.0.0.9/24", gateway="10.0.0.1", pool="p", nic=request.if_name)]
        )

    async def delete(self, request: wire.DelRequest) -> None:
        await self._step(request)

    async def check(self, request: wire.CheckRequest) -> None:
        await self._step(request)

    async def gc(self, request: wire.GcRequest) -> wire.GcResult:
        await self._step(request)
        return wire.GcResult(released=["10.0.0.7"])

    async def status(self, request: wire.StatusRequest) -> None:
        await self._step(request)

    async def healthy(self) -> bool:
        return self.is_healthy

    async def ready(self) -> bool:
        if self.raise_ is not None:
            raise self.raise_
        return self.is_healthy


ADD = wire.AddRequest(
    container_id="c", if_name="eth0", netns="/n", pod_namespace="ns", pod_name="p", network="net"
).to_json()


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    backend = ScriptedBackend()
    observed: list[tuple[str, int]] = []
    path = tmp_path / "d" / "agent.sock"
    runner = await serve(
        make_app(backend, metrics=lambda op, code, _s: observed.append((op, code))),
        str(path),
        shutdown_timeout=5,
    )
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)))
    try:
        yield backend, session, observed, path, runner
    finally:
        await session.close()
        await shutdown(runner)


async def call(session: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with session.request(method, f"http://agent{path}", **kw) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_every_endpoint_round_trips(served: Any) -> None:
    backend, session, observed, _, _ = served
    assert await call(session, "POST", wire.PATH_ADD, json=ADD) == (
        200,
        wire_agent.add_response_json(
            wire.AddResponse.from_json((await call(session, "POST", wire.PATH_ADD, json=ADD))[1])
        ),
    )
    assert backend.seen[0] == wire_agent.read_request(wire.AddRequest, ADD)
    dreq = wire.DelRequest(container_id="c", if_name="eth0", network="net").to_json()
    assert (await call(session, "POST", wire.PATH_DEL, json=dreq))[0] == 200
    creq = wire.CheckRequest(container_id="c", if_name="eth0", ips=["10.0.0.9/24"], network="net").to_json()
    assert (await call(session, "POST", wire.PATH_CHECK, json=creq))[0] == 200
    greq = wire.GcRequest(
        network="net", valid_attachments=[wire.Attachment(container_id="c", if_name="eth0")]
    ).to_json()
    status, body = await call(session, "POST", wire.PATH_GC, json=greq)
    assert (status, wire_agent.read_gc_result(body).released) == (200, ("10.0.0.7",))
    sreq = wire.StatusRequest(network="net_1.a-b", default_ipv4_ippool=["pool.a-1"])
    assert (await call(session, "GET", f"{wire.PATH_STATUS}?{sreq.to_query()}"))[0] == 200
    assert backend.seen[-1] == sreq
    assert [op for op, _ in observed] == ["add", "add", "del", "check", "gc", "status"]


@pytest.mark.parametrize(("body", "needle"), [({**ADD, "ifName": 3}, "AddRequest.ifName: expected a string"), ({"containerID": "c"}, "AddRequest.ifName: missing"),
                                              ({**ADD, "apiVersion": "v9"}, "AddRequest.apiVersion"), ("not json", "not JSON")])  # fmt: skip
async def test_bad_bodies_are_400_naming_the_field(served: Any, body: Any, needle: str) -> None:
    backend, session, observed, _, _ = served
    kw = {"data": body} if isinstance(body, str) else {"json": body}
    status, err = await call(session, "POST", wire.PATH_ADD, **kw)
    assert status == 400 and err["code"] == wire.CODE_BAD_REQUEST and needle in err["details"]
    assert backend.seen == [] and observed == [("add", wire.CODE_BAD_REQUEST)]


async def test_oversized_body_is_413(served: Any) -> None:
    _, session, _, _, _ = served
    status, err = await call(
        session, "POST", wire.PATH_ADD, data=io.BytesIO(b"x" * (wire.MAX_BODY_BYTES + 1))
    )
    assert status == 413 and err["code"] == wire.CODE_BAD_REQUEST


async def test_unknown_path_and_method_are_json(served: Any) -> None:
    _, session, _, _, _ = served
    assert (await call(session, "GET", "/v1/cni/nothing"))[1]["code"] == wire.CODE_BAD_REQUEST
    assert (await call(session, "GET", wire.PATH_ADD))[0] == 405
    assert (await call(session, "GET", f"{wire.PATH_STATUS}?bogus=1"))[1][
        "details"
    ] == "StatusRequest.bogus: unknown query parameter"


async def test_backend_errors_and_crashes(served: Any) -> None:
    backend, session, _, _, _ = served
    backend.raise_ = BackendError(
        wire.CODE_NO_IP_AVAILABLE, details='SpiderIPPool "p": all IPs allocated', http_status=409
    )
    status, err = await call(session, "POST", wire.PATH_ADD, json=ADD)
    assert status == 409 and wire.ErrorResponse.from_json(err) == wire.ErrorResponse(
        code=100, msg="no IP available", details='SpiderIPPool "p": all IPs allocated'
    )
    backend.raise_ = RuntimeError("secret internals at /some/path")
    status, err = await call(session, "POST", wire.PATH_ADD, json=ADD)
    assert (
        status == 500
        and err["code"] == wire.CODE_AGENT_INTERNAL
        and "secret" not in str(err)
        and "Traceback" not in str(err)
    )
    assert (await call(session, "GET", wire.PATH_READYZ))[0] == 503


async def test_probes(served: Any) -> None:
    backend, session, _, _, _ = served
    assert await call(session, "GET", wire.PATH_HEALTHZ) == (200, {"apiVersion": "v1", "status": "ok"})
    backend.is_healthy = False
    status, err = await call(session, "GET", wire.PATH_HEALTHZ)
    assert status == 503 and err["code"] == wire.CODE_UNAVAILABLE


async def test_socket_and_directory_modes(served: Any) -> None:
    _, _, _, path, _ = served
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    with pytest.raises(SocketInUse, match="another process is listening"):
        await serve(make_app(ScriptedBackend()), str(path))


async def test_stale_socket_replaced_and_regular_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    runner = await serve(make_app(ScriptedBackend()), str(path))
    await shutdown(runner)
    assert not path.exists()
    path.write_text("keep me")
    with pytest.raises(SocketInUse, match="is not a socket"):
        await serve(make_app(ScriptedBackend()), str(path))
    assert path.read_text() == "keep me"


async def test_graceful_shutdown_finishes_in_flight_request(served: Any) -> None:
    backend, session, _, path, runner = served
    backend.release.clear()
    pending = asyncio.create_task(call(session, "POST", wire.PATH_ADD, json=ADD))
    await asyncio.wait_for(backend.started.wait(), 5)
    stopping = asyncio.create_task(shutdown(runner))
    await asyncio.sleep(0.2)
    assert not stopping.done()
    # no new connections are accepted once shutdown began
    with pytest.raises(OSError):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        finally:
            probe.close()
    backend.release.set()
    status, body = await asyncio.wait_for(pending, 5)
    assert status == 200 and body["ips"][0]["address"] == "10.0.0.9/24"
    await asyncio.wait_for(stopping, 5)


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


async def test_pipelined_calls_are_answered_in_order(served: Any) -> None:
    backend, _, observed, path, _ = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        dreq = json.dumps(wire.DelRequest(container_id="c", if_name="eth0", network="net").to_json()).encode()
        writer.write(
            _post(wire.PATH_ADD, ADD_BYTES) + _post(wire.PATH_DEL, dreq) + _post(wire.PATH_ADD, b"{")
        )
        answers = await _responses(reader, 3)
    finally:
        writer.close()
    assert [(status, body.get("code")) for status, _, body in answers] == [
        (200, None),
        (200, None),
        (400, 106),
    ]
    assert answers[0][2]["ips"][0]["address"] == "10.0.0.9/24"
    assert answers[0][1]["content-type"].startswith("application/json")
    assert [type(r).__name__ for r in backend.seen] == ["AddRequest", "DelRequest"]
    assert observed == [("add", 0), ("del", 0), ("add", wire.CODE_BAD_REQUEST)]


async def test_a_connection_changes_to_aiohttp_at_the_first_request_it_does_not_take(served: Any) -> None:
    _, _, _, path, _ = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        probe = b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n"
        writer.write(_post(wire.PATH_ADD, ADD_BYTES) + probe + _post(wire.PATH_ADD, ADD_BYTES))
        answers = await _responses(reader, 3)
    finally:
        writer.close()
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert answers[1][2] == {"apiVersion": "v1", "status": "ok"} and "ips" in answers[2][2]


@pytest.mark.parametrize("extra", [(), ("Transfer-Encoding: chunked",)])
async def test_requests_the_short_path_leaves_are_served_by_aiohttp(
    served: Any, extra: tuple[str, ...]
) -> None:
    backend, _, observed, path, _ = served
    reader, writer = await asyncio.open_unix_connection(str(path))
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
    assert status == 200 and body["ips"][0]["address"] == "10.0.0.9/24"
    assert backend.seen == [wire_agent.read_request(wire.AddRequest, ADD)] and observed == [("add", 0)]


async def test_connection_close_is_honoured(served: Any) -> None:
    _, _, _, path, _ = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(_post(wire.PATH_ADD, ADD_BYTES, "Connection: close"))
        [(status, headers, _)] = await _responses(reader, 1)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_bytes_sent_while_a_call_is_answered_wait_and_are_read_after(served: Any) -> None:
    """A client that sends on (more than a body's worth) while its call is held: reading pauses, the
    call is answered, then what followed is read (here not HTTP, which aiohttp refuses)."""
    backend, _, _, path, _ = served
    backend.release.clear()
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(_post(wire.PATH_ADD, ADD_BYTES))
        await asyncio.wait_for(backend.started.wait(), 5)
        junk = b"x" * (wire.MAX_BODY_BYTES + 200_000)
        writer.write(junk)
        sending = asyncio.create_task(writer.drain())
        await asyncio.sleep(0.2)
        backend.release.set()
        [(status, _, body)] = await _responses(reader, 1)
        assert status == 200 and body["ips"][0]["address"] == "10.0.0.9/24"
        await asyncio.wait_for(sending, 5)
        rest = await asyncio.wait_for(reader.read(), 5)  # aiohttp answers the junk with 400 and closes
        assert rest == b"" or rest.split(b" ", 2)[1] == b"400"
    finally:
        writer.close()


async def test_a_client_that_does_not_read_its_answers_gets_no_more_answered(served: Any) -> None:
    """Pipelined calls from a client that reads nothing: once the answers fill the socket and the
    transport's buffer, the agent stops reading and answering (memory stays bounded) until the
    client reads, then answers the rest."""
    _, _, observed, path, _ = served
    reader, writer = await asyncio.open_unix_connection(str(path))
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
