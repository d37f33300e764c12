"""The agent's CNI endpoint: HTTP/1.1 + JSON over a unix socket (schema ``cni.wire``).  This module
holds the connections, the listening socket and its limits; ``spiderbgp.cni_app`` the calls and the
aiohttp application, ``spiderbgp.cni_http`` the short path's HTTP parsing.

``serve(make_app(backend), socket_path)`` binds the socket (``spiderbgp.unix_socket`` prepares its
path; the socket is chmod 0600) and returns a ``CniSocket``; ``shutdown(socket)`` stops accepting,
lets in-flight requests finish and removes the socket file.

The CNI calls themselves take a short path: a connection starts on ``_FastConnection``, which answers
a well-formed ``POST`` of a CNI call with a Content-Length body (and ``GET`` of STATUS) by itself, with
the same code the application's handlers run (``_answer``).  Anything else on a connection (another
path, chunked or oversized bodies, ``Expect``, HTTP/1.0, anything it does not parse) hands the
connection, bytes read so far included, to aiohttp's own protocol for the application, which then
serves it to its end.  aiohttp's per-connection and per-request machinery (a request object, a stream
reader, a writer, a task per connection, timers) cost more than the IPAM call for an ADD, and the
plugin opens a new connection for every call.

``CniSocket`` accepts connections itself, within ``SocketLimits``: a bounded number of connections
(the idlest closed to make room), idle, head and body deadlines enforced by a sweeper task, and a
rate-limited warning instead of a traceback per failed accept when descriptors run out.  Requests
that are not well-formed HTTP/1.1 get the same JSON ErrorResponse on both paths.

Why this module is past ~600 lines: the short path's connection and the socket that bounds it share
the per-connection deadlines and the busy/idle bookkeeping, which split across two modules would be
state read and written from both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import stat
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from cni import wire
from spiderbgp.cni_app import (
    _BACKEND,
    _BODY_TIMEOUT,
    _OBSERVER,
    BackendError,
    CniBackend,
    RequestObserver,
    SocketLimits,
    _answer,
    _dumps,
    _error_body,
    make_app,
)
from spiderbgp.cni_http import _MAX_HEAD, Refusal, _Call, _response, parse_call
from spiderbgp.unix_socket import SocketInUse, prepare_socket_path

__all__ = [
    "BackendError",
    "CniBackend",
    "CniSocket",
    "RequestObserver",
    "SocketInUse",
    "SocketLimits",
    "make_app",
    "serve",
    "shutdown",
]

LOG = logging.getLogger(__name__)

_MAX_PENDING = wire.MAX_BODY_BYTES + _MAX_HEAD  # bytes read ahead while a call is answered
_LINGER = 2.0  # seconds a refused connection is read on (and dropped) before it is closed
_BACKLOG = 128
_ACCEPT_PAUSE = 0.1  # seconds the socket is not accepted from after running out of descriptors
_LOG_INTERVAL = 10.0  # at most one accept-error line this often
# a connection's phases: what its deadline bounds
_IDLE, _HEAD, _BODY, _BUSY, _REFUSED, _CLOSED = range(6)


class _FastConnection(asyncio.Protocol):
    """A connection on the short path until a request it does not answer arrives.

    Its phase (idle, head or body arriving, a call being answered, refused) comes with a deadline
    that the socket's sweeper enforces: set when the phase begins, not moved by bytes arriving, so a
    client cannot keep a request open by trickling it in.
    """

    def __init__(self, server: CniSocket) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False  # a call is being answered: later bytes wait in the buffer
        self._eof = False
        self._task: asyncio.Task[None] | None = None
        self._phase = _IDLE
        self._deadline = 0.0  # loop time by which the phase must end
        self.since = 0.0  # loop time the phase began
        self._needed = 0  # phase body: the size the request will have
        self._write_paused = False  # the client does not read our answers: take no further request
        self._scanned = 0  # phase head: bytes searched for the blank line that ends the head

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def idle(self) -> bool:
        return self._phase == _IDLE

    def itself(self) -> _FastConnection:
        """The protocol factory of its own transport."""
        return self

    def accepted(self) -> None:
        """Counted, and idle, from the moment it is accepted (its transport comes a loop turn later)."""
        self._server.connections.add(self)
        self._enter(_IDLE)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._phase == _CLOSED or self._server.closing:  # closed (for a newer one) before it started
            self._server.connections.discard(self)
            transport.close()
            return
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        self._phase = _CLOSED

    def data_received(self, data: bytes) -> None:
        if self._phase >= _REFUSED:
            return  # refused: what follows is read only so that the answer is not lost to a reset
        self._buffer += data
        if not self._busy:
            self._next()
        elif len(self._buffer) > _MAX_PENDING and self._transport is not None:
            self._transport.pause_reading()  # a client that sends on without reading our answers

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._busy and self._phase < _REFUSED:
            self._next()

    def eof_received(self) -> bool:
        self._eof = True
        if self._busy:
            return True  # keep the transport open to answer the call in progress
        if self._buffer and self._phase < _REFUSED:
            self._next()  # a request cut short by the client's shutdown is refused; the rest answered
            return True
        return False

    def close(self) -> None:
        """Close now (a client that does not read what we wrote is cut off)."""
        self._server.connections.discard(self)
        self._phase = _CLOSED
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def expire(self, now: float) -> None:
        """The sweeper's call: end a phase that has outlived its deadline."""
        if now < self._deadline or self._transport is None:
            return
        limits = self._server.limits
        if self._phase == _HEAD:
            self.refuse(
                Refusal(408, f"request timeout: the head did not arrive within {limits.header_timeout:g}s")
            )
        elif self._phase == _BODY:
            self.refuse(
                Refusal(408, f"request timeout: the body did not arrive within {limits.body_timeout:g}s")
            )
        elif self._phase in (_IDLE, _REFUSED):
            self.close()

    def _enter(self, phase: int) -> None:
        self._phase = phase
        limits = self._server.limits
        self.since = now = self._server.loop.time()
        if phase == _IDLE:
            self._deadline = now + limits.idle_timeout
        elif phase == _HEAD:
            self._deadline = now + limits.header_timeout
        elif phase == _BODY:
            self._deadline = now + limits.body_timeout
        elif phase == _REFUSED:
            self._deadline = now + _LINGER
        else:
            self._deadline = float("inf")

    def _next(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._write_paused:
            # answers pile up unread (pipelined requests, never a read): read and answer no more
            # until the client takes them; meanwhile the connection counts as idle (its deadline)
            if transport.is_reading():
                transport.pause_reading()
            if self._phase != _IDLE:
                self._enter(_IDLE)
            return
        if not transport.is_reading():
            transport.resume_reading()
        if not self._buffer:
            if self._eof:
                transport.close()
            elif self._phase != _IDLE:
                self._enter(_IDLE)
            return
        if self._server.closing:
            transport.close()
            return
        if not self._eof and self._cannot_be_complete():
            return
        call = parse_call(self._buffer)
        if call is None:
            self._hand_over(transport)
        elif isinstance(call, _Call):
            del self._buffer[: call.size]
            self._busy = True
            self._server.busy += 1
            self._enter(_BUSY)
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
        elif call.needed == 0:
            if self._phase != _HEAD:
                self._enter(_HEAD)
            self._scanned = len(self._buffer)
        elif self._phase != _BODY:
            self._enter(_BODY)
            self._needed = call.needed

    def _cannot_be_complete(self) -> bool:
        """Whether the request being read is still short of the blank line that ends its head, or of
        the size its Content-Length gives: then it is not parsed again (parsing the whole buffer on
        every chunk costs quadratic time in a request trickled in a byte at a time)."""
        size = len(self._buffer)
        if self._phase == _BODY:
            return size < self._needed
        if self._phase != _HEAD or size > _MAX_HEAD:
            return False
        if self._buffer.find(b"\r\n\r\n", max(self._scanned - 3, 0)) >= 0:
            return False
        self._scanned = size
        return True

    def refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal`` and close.  Unless the client has shut down its side, the answer ends
        with our shutdown and what the client still sends is read and dropped for up to _LINGER
        seconds: closing a unix socket with unread bytes resets it, and the answer would be lost."""
        transport = self._transport
        if transport is None or self._phase >= _REFUSED:
            return
        LOG.debug("CNI socket: %s: %s", refusal.status, refusal.details)
        self._buffer.clear()
        transport.write(refusal.response())
        if self._eof:
            self.close()
            return
        transport.write_eof()
        self._enter(_REFUSED)
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
        self._phase = _CLOSED
        protocol = _AiohttpConnection(manager, self._server)
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
    would close the transport at once).  Counted among the socket's connections; idle ones close
    after the idle timeout (aiohttp's keep-alive timeout)."""

    def __init__(self, manager: web.Server, server: CniSocket) -> None:
        # no access log, as the AppRunner is told (aiohttp's annotation omits None, its code takes it)
        super().__init__(
            manager,
            loop=server.loop,
            access_log=None,  # type: ignore[arg-type]
            keepalive_timeout=server.limits.idle_timeout,
            lingering_time=_LINGER,  # an unread body after the answer: read and dropped this long
        )
        self._cni_socket = server
        server.handed_over += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._cni_socket.handed_over -= 1

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
            LOG.error("CNI socket: %s %s failed", request.method, request.path, exc_info=exc)
        else:  # one line, not aiohttp's traceback: a client sending garbage must not flood the log
            LOG.debug("CNI socket: malformed request: %s", exc or message)
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
        # waiting for a next request (aiohttp's own test of idleness, as in its keep-alive expiry):
        # nothing to answer, close now; else answer what has arrived, then close
        waiter = getattr(self, "_waiter", None)
        if waiter is not None and not waiter.done():
            self.force_close()
            return False
        self.close()
        return True


class _RateLimitedLog:
    """At most one warning per ``interval`` seconds; the next one says how many were left out."""

    def __init__(self, interval: float, emit: Callable[[str], None]) -> None:
        self.interval = interval
        self.emit = emit
        self.next_at = float("-inf")
        self.left_out = 0

    def warn(self, now: float, message: str) -> None:
        if now < self.next_at:
            self.left_out += 1
            return
        if self.left_out:
            message += f" ({self.left_out} more in the last {self.interval:g}s)"
        self.emit(message)
        self.left_out = 0
        self.next_at = now + self.interval


class CniSocket:
    """The bound CNI socket: its own accept loop (bounded connections, descriptor exhaustion handled
    without a traceback per attempt), short-path connections, and aiohttp's runner for the rest."""

    def __init__(
        self,
        runner: web.AppRunner,
        path: str,
        *,
        shutdown_timeout: float,
        limits: SocketLimits,
        max_connections: int,
    ) -> None:
        app = runner.app
        observer = app[_OBSERVER]
        self.runner = runner
        self.path = path
        self.backend: CniBackend = app[_BACKEND]
        self.observer: RequestObserver | None = observer if callable(observer) else None
        self.loop = asyncio.get_running_loop()
        self.limits = limits
        self.max_connections = max_connections
        self.connections: set[_FastConnection] = set()
        self.handed_over = 0  # connections aiohttp serves
        self.turned_away = 0  # connections closed at once because every slot was busy
        self.busy = 0  # connections answering a call
        self.closing = False
        self.shutdown_timeout = shutdown_timeout
        self._listener: socket.socket | None = None
        self._starting: dict[asyncio.Task[Any], tuple[_FastConnection, socket.socket]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._accept_log = _RateLimitedLog(
            _LOG_INTERVAL, lambda message: LOG.warning("CNI socket: %s", message)
        )
        self._inode: int | None = None
        self.idle = asyncio.Event()  # set once closing and no call is in progress
        self._full = _response(
            503,
            _error_body(
                wire.CODE_TRY_AGAIN,
                f"agent socket: {max_connections} connections open (the limit), none of them idle",
            ),
            True,
        )

    @property
    def open_connections(self) -> int:
        return len(self.connections) + self.handed_over

    async def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            os.chmod(self.path, 0o600)
            self._inode = os.lstat(self.path).st_ino
            listener.listen(_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.loop.add_reader(listener.fileno(), self._accept)
        self._sweeper = self.loop.create_task(self._sweep())

    def _accept(self) -> None:
        listener = self._listener
        for _ in range(_BACKLOG):
            if listener is None or self._listener is not listener:
                return
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._accept_failed(listener, err)
                return
            conn.setblocking(False)
            full = self.open_connections >= self.max_connections
            if full and not self._close_idlest():
                self._turn_away(conn)
                continue
            connection = _FastConnection(self)
            connection.accepted()
            task = self.loop.create_task(self.loop.connect_accepted_socket(connection.itself, conn))
            self._starting[task] = (connection, conn)
            task.add_done_callback(self._started)
            if full:
                # the closed connection's descriptor is released in the next loop turn: accept
                # no more before, or a burst of new connections would run out of descriptors
                return

    def _started(self, task: asyncio.Task[Any]) -> None:
        connection, conn = self._starting.pop(task)
        failure = "cancelled" if task.cancelled() else task.exception()
        if failure is not None:
            LOG.debug("CNI socket: a connection failed to start: %s", failure)
            self.connections.discard(connection)
            conn.close()

    def _close_idlest(self) -> bool:
        """Close the connection idle longest, if there is one."""
        idlest = min((c for c in self.connections if c.idle), key=lambda c: c.since, default=None)
        if idlest is None:
            return False
        idlest.close()
        return True

    def _turn_away(self, conn: socket.socket) -> None:
        self.turned_away += 1
        with contextlib.suppress(OSError):
            conn.send(self._full)
        conn.close()
        self._accept_log.warn(
            self.loop.time(),
            f"{self.open_connections} connections open (the limit) and none idle: turning new ones away",
        )

    def _accept_failed(self, listener: socket.socket, err: OSError) -> None:
        if err.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            LOG.debug("CNI socket: accept: %s", err)  # that one connection is gone (ECONNABORTED, ...)
            return
        # out of descriptors (or memory): free one if a connection is idle, and leave the pending
        # connections in the backlog for a moment instead of failing on them in a loop
        freed = self._close_idlest()
        self.loop.remove_reader(listener.fileno())
        self.loop.call_later(_ACCEPT_PAUSE, self._resume_accepting, listener)
        self._accept_log.warn(
            self.loop.time(),
            f"cannot accept a connection: {err.strerror} ({self.open_connections} open"
            f"{', closed the one idle longest' if freed else ''}; accepting again in {_ACCEPT_PAUSE:g}s)",
        )

    def _resume_accepting(self, listener: socket.socket) -> None:
        if self._listener is listener:
            self.loop.add_reader(listener.fileno(), self._accept)

    async def _sweep(self) -> None:
        limits = self.limits
        tick = min(max(min(limits.idle_timeout, limits.header_timeout, limits.body_timeout) / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            for connection in list(self.connections):
                connection.expire(now)

    async def stop_accepting(self) -> None:
        """No new connections from now on (the ones accepted are still served)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            self.loop.remove_reader(listener.fileno())
            listener.close()

    async def close(self) -> None:
        """Stop accepting, let the calls in progress finish (up to ``shutdown_timeout``), close every
        connection, and remove the socket file if it is still the one we bound."""
        await self.stop_accepting()
        self.closing = True
        if not self.busy:
            self.idle.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.idle.wait(), self.shutdown_timeout)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for connection in list(self.connections):
            if not connection.busy:
                connection.close()
        await self.runner.cleanup()
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode:
                os.unlink(self.path)


async def serve(
    app: web.Application,
    socket_path: str,
    *,
    shutdown_timeout: float = 30.0,
    limits: SocketLimits | None = None,
) -> CniSocket:
    """Bind ``app`` on ``socket_path`` (0600, parent 0700 when we create it) and start serving within
    ``limits`` (``SocketLimits()`` by default).

    Raises SocketInUse when a live process already listens there.  Stop with ``shutdown(socket)``.
    """
    limits = limits or SocketLimits()
    # half the descriptors at most: the store, ExaBGP's pipes and the TCP listeners need the rest
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    max_connections = (
        limits.max_connections
        if soft == resource.RLIM_INFINITY
        else min(limits.max_connections, max(soft // 2, 1))
    )
    prepare_socket_path(socket_path)
    app[_BODY_TIMEOUT] = limits.body_timeout
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    served = CniSocket(
        runner, socket_path, shutdown_timeout=shutdown_timeout, limits=limits, max_connections=max_connections
    )
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
