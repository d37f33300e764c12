"""The agent's CNI endpoint: HTTP/1.1 + JSON over a unix socket (aiohttp), schema in ``cni.wire``.

``make_app(backend)`` builds the application; ``serve(app, socket_path)`` binds it (parent directory
created 0700, a stale socket removed, the socket chmod 0600); ``shutdown(runner)`` stops accepting
and lets in-flight requests finish.  Every answer is JSON: the ``cni.wire`` response of the call, or
an ``ErrorResponse`` carrying a CNI error code (the plugin prints that code to the runtime).  A bad
body is a 400 naming the field; a backend failure never leaks a traceback into the response.
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
from typing import Any, Protocol, TypeVar

from aiohttp import web

from cni import wire

__all__ = [
    "BackendError",
    "CniBackend",
    "RequestObserver",
    "make_app",
    "serve",
    "shutdown",
]

log = logging.getLogger(__name__)

# (operation, CNI code or 0 for success, seconds): the agent wires this to its Prometheus metrics.
RequestObserver = Callable[[str, int, float], None]

_T = TypeVar("_T")
_A = TypeVar("_A")


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


def _error(http_status: int, code: int, details: str = "", msg: str = "") -> web.Response:
    body = wire.ErrorResponse(code=code, msg=msg or wire.ERROR_MESSAGES.get(code, "error"), details=details)
    return web.json_response(body.to_json(), status=http_status)


class _BadRequest(Exception):
    def __init__(self, details: str, http_status: int = 400) -> None:
        super().__init__(details)
        self.details, self.http_status = details, http_status


async def _json_body(request: web.Request) -> object:
    if request.content_length is not None and request.content_length > wire.MAX_BODY_BYTES:
        raise _BadRequest(f"request body: {request.content_length} bytes is over {wire.MAX_BODY_BYTES}", 413)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _BadRequest(f"request body: over {wire.MAX_BODY_BYTES} bytes", 413) from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise _BadRequest(f"request body: not JSON ({str(err)[:120]})") from None


def _parse(parse: Callable[[_A], _T], body: _A) -> _T:
    try:
        return parse(body)
    except ValueError as err:
        raise _BadRequest(str(err)) from None


async def _run(
    request: web.Request, operation: str, call: Callable[[], Awaitable[dict[str, Any]]]
) -> web.Response:
    observer = request.app[_OBSERVER]
    started = time.perf_counter()
    code = 0
    try:
        try:
            return web.json_response(await call())
        except _BadRequest as err:
            code = wire.CODE_BAD_REQUEST
            return _error(err.http_status, code, err.details)
        except BackendError as err:
            code = err.code
            return _error(err.http_status, err.code, err.details, err.msg)
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Exception as err:
            code = wire.CODE_AGENT_INTERNAL
            log.exception("CNI %s failed", operation)
            return _error(500, code, f"{operation}: {type(err).__name__} (see the agent log)")
    finally:
        if callable(observer):
            observer(operation, code, time.perf_counter() - started)


async def _add(request: web.Request) -> web.Response:
    async def call() -> dict[str, Any]:
        parsed = _parse(wire.AddRequest.from_json, await _json_body(request))
        return (await request.app[_BACKEND].add(parsed)).to_json()

    return await _run(request, "add", call)


async def _del(request: web.Request) -> web.Response:
    async def call() -> dict[str, Any]:
        parsed = _parse(wire.DelRequest.from_json, await _json_body(request))
        await request.app[_BACKEND].delete(parsed)
        return {"apiVersion": wire.API_VERSION}

    return await _run(request, "del", call)


async def _check(request: web.Request) -> web.Response:
    async def call() -> dict[str, Any]:
        parsed = _parse(wire.CheckRequest.from_json, await _json_body(request))
        await request.app[_BACKEND].check(parsed)
        return {"apiVersion": wire.API_VERSION}

    return await _run(request, "check", call)


async def _gc(request: web.Request) -> web.Response:
    async def call() -> dict[str, Any]:
        parsed = _parse(wire.GcRequest.from_json, await _json_body(request))
        return (await request.app[_BACKEND].gc(parsed)).to_json()

    return await _run(request, "gc", call)


async def _status(request: web.Request) -> web.Response:
    async def call() -> dict[str, Any]:
        parsed = _parse(wire.StatusRequest.from_query, list(request.query.items()))
        await request.app[_BACKEND].status(parsed)
        return {"apiVersion": wire.API_VERSION, "status": "ok"}

    return await _run(request, "status", call)


def _probe(name: str, attr: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        backend = request.app[_BACKEND]
        try:
            ok = await getattr(backend, attr)()
        except Exception:
            log.exception("%s probe failed", name)
            ok = False
        if ok:
            return web.json_response({"apiVersion": wire.API_VERSION, "status": "ok"})
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
    app.router.add_post(wire.PATH_ADD, _add)
    app.router.add_post(wire.PATH_DEL, _del)
    app.router.add_post(wire.PATH_CHECK, _check)
    app.router.add_post(wire.PATH_GC, _gc)
    app.router.add_get(wire.PATH_STATUS, _status)
    app.router.add_get(wire.PATH_HEALTHZ, _probe("healthy", "healthy"))
    app.router.add_get(wire.PATH_READYZ, _probe("ready", "ready"))
    return app


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


async def serve(app: web.Application, socket_path: str, *, shutdown_timeout: float = 30.0) -> web.AppRunner:
    """Bind ``app`` on ``socket_path`` (0600, parent 0700 when we create it) and start serving.

    Raises SocketInUse when a live process already listens there.  Stop with ``shutdown(runner)``.
    """
    _prepare_socket_path(socket_path)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.UnixSite(runner, socket_path)
    try:
        await site.start()
        os.chmod(socket_path, 0o600)
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def shutdown(runner: web.AppRunner) -> None:
    """Stop accepting connections, let in-flight requests finish (up to the runner's
    shutdown_timeout), then remove the socket files it bound."""
    paths = [site.name for site in runner.sites if isinstance(site, web.UnixSite)]
    await runner.cleanup()
    for name in paths:
        path = name.partition("://unix:")[2].removesuffix(":")
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
