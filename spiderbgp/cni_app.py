"""The agent's CNI calls: a request read by the wire schema (``cni.wire_agent``), answered by the
backend, the answer (or an ``ErrorResponse`` carrying a CNI error code) as JSON; and the aiohttp
application that serves them on connections the short path (``spiderbgp.cni_endpoint``) hands over.

A bad body is a 400 naming the field; a backend failure never leaks a traceback (nor its message)
into the response.  ``_answer`` is the one function both paths answer a call with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from cni import wire, wire_agent

LOG = logging.getLogger(__name__)

# (operation, CNI code or 0 for success, seconds): the agent wires this to its Prometheus metrics.
RequestObserver = Callable[[str, int, float], None]


@dataclass(frozen=True)
class SocketLimits:
    """Bounds on the socket's clients.  At ``max_connections`` (lowered to half the process's
    descriptor limit) a new connection closes the connection idle longest, or is turned away with a
    503 when none is idle.  A connection with no request in progress closes after ``idle_timeout``; a
    request's head must arrive within ``header_timeout`` of its first byte and its body within
    ``body_timeout`` of its head (else 408), however slowly the bytes trickle in."""

    max_connections: int = 512
    idle_timeout: float = 60.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0


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

    async def gc(self, request: wire.GcRequest) -> wire_agent.GcResult: ...

    async def status(self, request: wire.StatusRequest) -> None: ...

    async def healthy(self) -> bool: ...

    async def ready(self) -> bool: ...


_BACKEND = web.AppKey("backend", CniBackend)
_OBSERVER = web.AppKey("observer", object)  # RequestObserver | None (AppKey needs a runtime type)
_BODY_TIMEOUT = web.AppKey("body_timeout", float)  # SocketLimits.body_timeout, set by serve()

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
    return wire_agent.error_response_json(body)


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
            return wire_agent.add_response_json(
                await backend.add(wire_agent.read_request(wire.AddRequest, payload))
            )
        if operation == "del":
            await backend.delete(wire_agent.read_request(wire.DelRequest, payload))
            return _OK
        if operation == "check":
            await backend.check(wire_agent.read_request(wire.CheckRequest, payload))
            return _OK
        if operation == "gc":
            return wire_agent.gc_result_json(
                await backend.gc(wire_agent.read_request(wire.GcRequest, payload))
            )
        await backend.status(wire_agent.read_status_query(payload))  # type: ignore[arg-type]
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
        LOG.exception("CNI %s failed", operation)
        return 500, _error_body(code, f"{operation}: {type(err).__name__} (see the agent log)")
    finally:
        if observer is not None:
            observer(operation, code, time.perf_counter() - started)


# -- the aiohttp application (every connection the short path hands over) ----------------------------


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > wire.MAX_BODY_BYTES:
        raise _BadRequest(f"request body: {request.content_length} bytes is over {wire.MAX_BODY_BYTES}", 413)
    timeout = request.app.get(_BODY_TIMEOUT, SocketLimits.body_timeout)
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except web.HTTPRequestEntityTooLarge:
        raise _BadRequest(f"request body: over {wire.MAX_BODY_BYTES} bytes", 413) from None
    except TimeoutError:
        raise _BadRequest(f"request timeout: the body did not arrive within {timeout:g}s", 408) from None


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
            LOG.exception("%s probe failed", name)
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
