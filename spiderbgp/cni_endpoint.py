"""The agent's CNI endpoint: HTTP/1.1 + JSON over a unix socket, schema in ``cni.wire``.

``make_app(backend)`` builds the aiohttp application; ``serve(app, socket_path)`` binds it (parent
directory created 0700, a stale socket removed, the socket chmod 0600) and returns a ``CniSocket``;
``shutdown(socket)`` stops accepting, lets in-flight requests finish and removes the socket file.
Every answer is JSON: the ``cni.wire`` response of the call, or an ``ErrorResponse`` carrying a CNI
error code (the plugin prints that code to the runtime).  A bad body is a 400 naming the field; a
backend failure never leaks a traceback into the response.

The CNI calls themselves take a short path: a connection starts on ``_FastConnection``, which answers
a well-formed ``POST`` of a CNI call with a Content-Length body (and ``GET`` of STATUS) by itself, with
the same code the application's handlers run (``_answer``).  Anything else on a connection (another
path, chunked or oversized bodies, ``Expect``, HTTP/1.0, anything it does not parse) hands the
connection, bytes read so far included, to aiohttp's own protocol for the application, which then
serves it to its end.  aiohttp's per-connection and per-request machinery (a request object, a stream
reader, a writer, a task per connection, timers) cost more than the IPAM call for an ADD, and the
plugin opens a new connection for every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

import httptools
from aiohttp import web

from cni import wire

__all__ = [
    "BackendError",
    "CniBackend",
    "CniSocket",
    "RequestObserver",
    "SocketInUse",
    "make_app",
    "serve",
    "shutdown",
]

log = logging.getLogger(__name__)

# (operation, CNI code or 0 for success, seconds): the agent wires this to its Prometheus metrics.
RequestObserver = Callable[[str, int, float], None]


class BackendError(Exception):
    """A failure the backend reports to the plugin: a CNI ``code``, a short ``msg``, the ``details``
    line, and the HTTP status of the answer (5xx only for conditions the plugin should retry)."""

    def __init__(self, code: int, msg: str = "", details: str = "", http_status: int = 500) -> None:
        self.code = code
        self.msg = msg or wire.ERROR_MESSAGES.get(code, "error")
        self.details = details
        self.http_status = http_status
        super().__init__(details or self.msg)


class CniBackend(Protocol):
    """What the endpoint calls; the agent's IPAM service implements it.  Each method answers only
    once its effect is durable.  DEL/GC of anything unknown succeed."""

    async def add(self, request: wire.AddRequest) -> wire.AddResponse: ...

    async def delete(self, request: wire.DelRequest) -> None: ...

    async def check(self, request: wire.CheckRequest) -> None: ...

    async def gc(self, request: wire.GcRequest) -> wire.GcResult: ...

    async def status(self, request: wire.StatusRequest) -> None: ...

    async def healthy(self) -> bool: ...

    async def ready(self) -> bool: ...


_BACKEND = web.AppKey("backend", CniBackend)
_OBSERVER = web.AppKey("observer", object)  # RequestObserver | None (AppKey needs a runtime type)

# operation -> (method, path)
_CALLS = {
    "add": ("POST", wire.PATH_ADD),
    "del": ("POST", wire.PATH_DEL),
    "check": ("POST", wire.PATH_CHECK),
    "gc": ("POST", wire.PATH_GC),
    "status": ("GET", wire.PATH_STATUS),
}
_OK = {"apiVersion": wire.API_VERSION}
_STATUS_OK = {"apiVersion": wire.API_VERSION, "status": "ok"}


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _error_body(code: int, details: str = "", msg: str = "") -> dict[str, Any]:
    body = wire.ErrorResponse(code=code, msg=msg or wire.ERROR_MESSAGES.get(code, "error"), details=details)
    return body.to_json()


def _error(http_status: int, code: int, details: str = "", msg: str = "") -> web.Response:
    return web.json_response(_error_body(code, details, msg), status=http_status)


class _BadRequest(Exception):
    def __init__(self, details: str, http_status: int = 400) -> None:
        super().__init__(details)
        self.details, self.http_status = details, http_status


def _parse_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise _BadRequest(f"request body: not JSON ({str(err)[:120]})") from None


async def _call(backend: CniBackend, operation: str, payload: object) -> dict[str, Any]:
    """One CNI call: ``payload`` is the decoded JSON body (the query pairs for STATUS)."""
    try:
        if operation == "add":
            return (await backend.add(wire.AddRequest.from_json(payload))).to_json()
        if operation == "del":
            await backend.delete(wire.DelRequest.from_json(payload))
            return _OK
        if operation == "check":
            await backend.check(wire.CheckRequest.from_json(payload))
            return _OK
        if operation == "gc":
            return (await backend.gc(wire.GcRequest.from_json(payload))).to_json()
        await backend.status(wire.StatusRequest.from_query(payload))  # type: ignore[arg-type]
        return _STATUS_OK
    except ValueError as err:  # the wire schema names the field; the backend raises BackendError
        raise _BadRequest(str(err)) from None


async def _answer(
    backend: CniBackend,
    observer: RequestObserver | None,
    operation: str,
    request: bytes | list[tuple[str, str]] | _BadRequest,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of one CNI call, told to ``observer``.  ``request`` is the body (the
    query pairs for STATUS), or why it could not be read."""
    started = time.perf_counter()
    code = 0
    try:
        if isinstance(request, _BadRequest):
            raise request
        payload = request if isinstance(request, list) else _parse_json(request)
        return 200, await _call(backend, operation, payload)
    except _BadRequest as err:
        code = wire.CODE_BAD_REQUEST
        return err.http_status, _error_body(code, err.details)
    except BackendError as err:
        code = err.code
        return err.http_status, _error_body(err.code, err.details, err.msg)
    except Exception as err:
        code = wire.CODE_AGENT_INTERNAL
        log.exception("CNI %s failed", operation)
        return 500, _error_body(code, f"{operation}: {type(err).__name__} (see the agent log)")
    finally:
        if observer is not None:
            observer(operation, code, time.perf_counter() - started)


# -- the aiohttp application (every connection the short path hands over) ----------------------------


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > wire.MAX_BODY_BYTES:
        raise _BadRequest(f"request body: {request.content_length} bytes is over {wire.MAX_BODY_BYTES}", 413)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _BadRequest(f"request body: over {wire.MAX_BODY_BYTES} bytes", 413) from None


def _handler(operation: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        observer = request.app[_OBSERVER]
        body: bytes | list[tuple[str, str]] | _BadRequest
        if operation == "status":
            body = list(request.query.items())
        else:
            try:
                body = await _read_body(request)
            except _BadRequest as err:
                body = err
        status, answer = await _answer(
            request.app[_BACKEND], observer if callable(observer) else None, operation, body
        )
        return web.Response(body=_dumps(answer), status=status, content_type="application/json")

    return handle


def _probe(name: str, attr: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        backend = request.app[_BACKEND]
        try:
            ok = await getattr(backend, attr)()
        except Exception:
            log.exception("%s probe failed", name)
            ok = False
        if ok:
            return web.json_response(_STATUS_OK)
        return _error(503, wire.CODE_UNAVAILABLE, f"agent is not {name}")

    return handler


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 404/405/413 answers become ErrorResponse JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = wire.CODE_AGENT_INTERNAL if exc.status >= 500 else wire.CODE_BAD_REQUEST
        return _error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")


def make_app(backend: CniBackend, *, metrics: RequestObserver | None = None) -> web.Application:
    """The CNI endpoint application over ``backend``; ``metrics`` is told every call's outcome."""
    app = web.Application(client_max_size=wire.MAX_BODY_BYTES, middlewares=[_json_errors])
    app[_BACKEND] = backend
    app[_OBSERVER] = metrics
    for operation, (method, path) in _CALLS.items():
        app.router.add_route(method, path, _handler(operation))
    app.router.add_get(wire.PATH_HEALTHZ, _probe("healthy", "healthy"))
    app.router.add_get(wire.PATH_READYZ, _probe("ready", "ready"))
    return app


# -- the short path ------------------------------------------------------------------------------------

_ROUTES = {(m.encode(), p.encode()): op for op, (m, p) in _CALLS.items()}
_MAX_HEAD = 16 * 1024  # a head longer than this, or not complete by then, goes to aiohttp
_MAX_PENDING = wire.MAX_BODY_BYTES + _MAX_HEAD  # bytes read ahead while a call is answered
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
            409: b"Conflict", 413: b"Payload Too Large", 422: b"Unprocessable Entity", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 503: b"Service Unavailable",
            505: b"HTTP Version Not Supported"}  # fmt: skip
_INCOMPLETE = "incomplete"
_LINGER = 2.0  # seconds a refused connection is read on (and dropped) before it is closed


class Refusal:
    """A request the agent answers with an error and then closes the connection: malformed HTTP, a
    head too long, a request cut short or too slow (``status``, the one-line ``details``)."""

    __slots__ = ("details", "status")

    def __init__(self, status: int, details: str) -> None:
        self.status, self.details = status, details

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Refusal) and (self.status, self.details) == (other.status, other.details)

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.details!r})"

    def response(self) -> bytes:
        return _response(self.status, _error_body(wire.CODE_BAD_REQUEST, self.details), True)


def _malformed(data: bytes | bytearray, err: httptools.HttpParserError) -> Refusal:
    """What to answer a request llhttp could not parse: 501 for a method it does not know in an
    otherwise HTTP/1.x request line, 505 for another protocol version (HTTP/2's preface included),
    else 400; the details carry llhttp's one-line reason."""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    first = bytes(data[:200]).split(b"\r\n", 1)[0].split(b" ")
    if (
        isinstance(err, httptools.HttpParserInvalidMethodError)
        and len(first) == 3
        and first[2].startswith(b"HTTP/1.")
    ):
        method = first[0].decode("latin-1")
        return Refusal(501, f"malformed HTTP request: method {method[:40]!r} is not implemented")
    if reason in ("Pause on PRI/Upgrade", "Invalid HTTP version") or first[-1:] == [b"HTTP/2.0"]:
        return Refusal(505, f"malformed HTTP request: {reason} (the agent speaks HTTP/1.1)")
    return Refusal(400, f"malformed HTTP request: {reason}")


class _Call:
    """One request the short path answers."""

    __slots__ = ("body", "close", "operation", "query", "size")

    def __init__(self, operation: str, query: bytes, body: bytes, close: bool, size: int) -> None:
        self.operation, self.query, self.body, self.close, self.size = operation, query, body, close, size


class _Stop(Exception):
    """Raised from a parser callback to stop at the end of the first request (or at its head)."""


class _Request:
    """The first request of a buffer as httptools' parser reports it (callbacks of its protocol)."""

    __slots__ = (
        "body",
        "complete",
        "content_length",
        "headers_done",
        "operation",
        "parser",
        "query",
        "reject",
        "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.body: list[bytes] = []
        self.operation = ""
        self.query = b""
        self.content_length = -1
        self.headers_done = False
        self.complete = False
        self.reject = False
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (b"transfer-encoding", b"expect", b"upgrade"):
            self.reject = True
        elif name == b"content-length":
            self.content_length = int(value)  # llhttp has checked that it is one valid number

    def on_headers_complete(self) -> None:
        self.headers_done = True
        path, _, self.query = self.url.partition(b"?")
        operation = _ROUTES.get((self.parser.get_method(), path))
        length = self.content_length
        if (
            operation is None
            or self.reject
            or self.parser.get_http_version() != "1.1"
            or (self.query and operation != "status")
            or (operation == "status" and length > 0)
            or (operation != "status" and not 0 <= length <= wire.MAX_BODY_BYTES)
        ):
            self.reject = True
            raise _Stop
        self.operation = operation

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        raise _Stop


def parse_call(data: bytes | bytearray) -> _Call | Refusal | str | None:
    """The CNI call at the start of ``data``; ``_INCOMPLETE`` when more bytes may make it one; a
    Refusal for malformed HTTP or a head over 16 KiB; None for a well-formed request the short path
    does not answer (aiohttp then serves the connection).

    The bytes are parsed by llhttp (``httptools``, the parser uvicorn uses).  Accepted: ``POST <CNI
    path> HTTP/1.1`` with a Content-Length body (at most MAX_BODY_BYTES) and no Transfer-Encoding,
    Expect or Upgrade, or ``GET <status path>[?query] HTTP/1.1`` without a body.
    """
    request = _Request()
    try:
        request.parser.feed_data(bytes(data))
    except httptools.HttpParserCallbackError:
        pass  # a _Stop from a callback: the first request, or its head, has been seen
    except httptools.HttpParserError as err:
        return _malformed(data, err)
    if request.headers_done and data.find(b"\r\n\r\n", 0, _MAX_HEAD) < 0:
        return Refusal(431, f"malformed HTTP request: the head is longer than {_MAX_HEAD} bytes")
    if request.reject:
        return None
    if not request.headers_done:
        if len(data) <= _MAX_HEAD:
            return _INCOMPLETE
        return Refusal(431, f"malformed HTTP request: the head is longer than {_MAX_HEAD} bytes")
    if not request.complete:
        return _INCOMPLETE
    body = b"".join(request.body)
    # llhttp accepted the request with CRLF line ends and a Content-Length: it ends that many bytes
    # after the blank line that ends its head, where the next request on the connection starts
    size = data.find(b"\r\n\r\n") + 4 + len(body)
    return _Call(request.operation, request.query, body, not request.parser.should_keep_alive(), size)


def _response(status: int, body: dict[str, Any], close: bool) -> bytes:
    payload = _dumps(body)
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n" % (
        status,
        _REASONS.get(status, b"Error"),
        len(payload),
    )
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + payload


class _FastConnection(asyncio.Protocol):
    """A connection on the short path until a request it does not answer arrives."""

    def __init__(self, server: CniSocket) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False  # a call is being answered: later bytes wait in the buffer
        self._eof = False
        self._task: asyncio.Task[None] | None = None
        self._refused: asyncio.TimerHandle | None = None  # set once refused: reading on to discard

    @property
    def busy(self) -> bool:
        return self._busy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._refused is not None:
            self._refused.cancel()

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return  # refused: what follows is read only so that the answer is not lost to a reset
        self._buffer += data
        if not self._busy:
            self._next()
        elif len(self._buffer) > _MAX_PENDING and self._transport is not None:
            self._transport.pause_reading()  # a client that sends on without reading our answers

    def eof_received(self) -> bool:
        self._eof = True
        if self._busy:
            return True  # keep the transport open to answer the call in progress
        if self._buffer and self._refused is None:
            self._next()  # a request cut short by the client's shutdown is refused; the rest answered
            return True
        return False

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _next(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if not transport.is_reading():
            transport.resume_reading()
        if not self._buffer:
            if self._eof:
                transport.close()
            return
        if self._server.closing:
            transport.close()
            return
        call = parse_call(self._buffer)
        if call is None:
            self._hand_over(transport)
        elif isinstance(call, _Call):
            del self._buffer[: call.size]
            self._busy = True
            self._server.busy += 1
            # the loop keeps only a weak reference to a task: the connection holds this one
            self._task = asyncio.get_running_loop().create_task(self._run(transport, call))
        elif isinstance(call, Refusal):
            self.refuse(call)
        elif self._eof:
            self.refuse(
                Refusal(
                    400,
                    f"incomplete HTTP request: the client shut down its side after {len(self._buffer)} bytes",
                )
            )

    def refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal`` and close.  Unless the client has shut down its side, the answer ends
        with our shutdown and what the client still sends is read and dropped for up to _LINGER
        seconds: closing a unix socket with unread bytes resets it, and the answer would be lost."""
        transport = self._transport
        if transport is None or self._refused is not None:
            return
        log.debug("CNI socket: %s: %s", refusal.status, refusal.details)
        self._buffer.clear()
        transport.write(refusal.response())
        if self._eof:
            transport.close()
            return
        transport.write_eof()
        self._refused = asyncio.get_running_loop().call_later(_LINGER, transport.close)
        if not transport.is_reading():
            transport.resume_reading()

    async def _run(self, transport: asyncio.Transport, call: _Call) -> None:
        server = self._server
        request = (
            parse_qsl(call.query.decode("latin-1"), keep_blank_values=True)
            if call.operation == "status"
            else call.body
        )
        try:
            status, body = await _answer(server.backend, server.observer, call.operation, request)
        finally:
            self._busy = False
            server.busy -= 1
            if server.closing and not server.busy:
                server.idle.set()
        if self._transport is None:
            return  # the client went away; the call's effect stands (ADD/DEL are idempotent)
        close = call.close or self._eof or server.closing
        transport.write(_response(status, body, close))
        if close:
            transport.close()
        else:
            self._next()

    def _hand_over(self, transport: asyncio.Transport) -> None:
        """aiohttp's protocol takes the connection over, with the bytes read so far."""
        manager = self._server.runner.server
        if manager is None:  # the runner was cleaned up: we are shutting down
            transport.close()
            return
        self._server.connections.discard(self)
        protocol = _AiohttpConnection(manager)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = bytes(self._buffer), bytearray()
        protocol.data_received(data)
        if self._eof:
            protocol.eof_received()


class _AiohttpConnection(web.RequestHandler):
    """aiohttp's protocol for the connections the short path hands over, with two changes: its
    answers to requests it cannot parse are ErrorResponse JSON (aiohttp's are plain text echoing the
    input), and a client that shuts down its side after a request still gets the answer (aiohttp
    would close the transport at once)."""

    def __init__(self, manager: web.Server) -> None:
        # no access log, as the AppRunner is told (aiohttp's annotation omits None, its code takes it)
        super().__init__(manager, loop=asyncio.get_running_loop(), access_log=None)  # type: ignore[arg-type]

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: an answer has begun, the connection is broken
            raise ConnectionError("an answer was being sent when the request failed")
        if status >= 500:
            log.error("CNI socket: %s %s failed", request.method, request.path, exc_info=exc)
        else:  # one line, not aiohttp's traceback: a client sending garbage must not flood the log
            log.debug("CNI socket: malformed request: %s", exc or message)
        if status >= 500:
            body = _error_body(
                wire.CODE_AGENT_INTERNAL, f"{request.method} {request.path}: see the agent log"
            )
        else:
            reason = (message or str(exc or "") or "bad request").strip().splitlines()[0]
            reason = reason.split(": b'", 1)[0].split(': b"', 1)[0][:200]  # without the input it quotes
            body = _error_body(wire.CODE_BAD_REQUEST, f"malformed HTTP request: {reason}")
        response = web.Response(body=_dumps(body), status=status, content_type="application/json")
        response.force_close()
        return response

    def eof_received(self) -> bool:  # type: ignore[override]  # aiohttp declares None: close at once
        self.close()  # answer what has arrived, then close
        return True


class CniSocket:
    """The bound CNI socket: short-path connections, and aiohttp's runner for the rest."""

    def __init__(self, runner: web.AppRunner, path: str, *, shutdown_timeout: float) -> None:
        app = runner.app
        observer = app[_OBSERVER]
        self.runner = runner
        self.path = path
        self.backend: CniBackend = app[_BACKEND]
        self.observer: RequestObserver | None = observer if callable(observer) else None
        self.connections: set[_FastConnection] = set()
        self.busy = 0  # connections answering a call
        self.closing = False
        self.shutdown_timeout = shutdown_timeout
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self.idle = asyncio.Event()  # set once closing and no call is in progress

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _FastConnection(self), self.path)
        os.chmod(self.path, 0o600)
        self._inode = os.lstat(self.path).st_ino

    async def stop_accepting(self) -> None:
        """No new connections from now on (the ones accepted are still served)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def close(self) -> None:
        """Stop accepting, let the calls in progress finish (up to ``shutdown_timeout``), close every
        connection, and remove the socket file if it is still the one we bound."""
        await self.stop_accepting()
        self.closing = True
        if not self.busy:
            self.idle.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.idle.wait(), self.shutdown_timeout)
        for connection in list(self.connections):
            if not connection.busy:
                connection.close()
        await self.runner.cleanup()
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode:
                os.unlink(self.path)


class SocketInUse(Exception):
    """Another live process answers on the socket path (one line, names the path)."""


def _prepare_socket_path(socket_path: str) -> None:
    path = Path(socket_path)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is subject to the umask
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"agent socket {socket_path}: exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(socket_path)
    except OSError:
        path.unlink(missing_ok=True)  # stale: nobody listens
    else:
        raise SocketInUse(f"agent socket {socket_path}: another process is listening on it")
    finally:
        probe.close()


async def serve(app: web.Application, socket_path: str, *, shutdown_timeout: float = 30.0) -> CniSocket:
    """Bind ``app`` on ``socket_path`` (0600, parent 0700 when we create it) and start serving.

    Raises SocketInUse when a live process already listens there.  Stop with ``shutdown(socket)``.
    """
    _prepare_socket_path(socket_path)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    served = CniSocket(runner, socket_path, shutdown_timeout=shutdown_timeout)
    try:
        await served.start()
    except BaseException:
        await served.close()
        raise
    return served


async def shutdown(served: CniSocket) -> None:
    """Stop accepting connections, let in-flight requests finish (up to the shutdown_timeout given to
    serve), then remove the socket file it bound."""
    await served.close()
