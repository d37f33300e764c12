"""The lab's pod workload: ONE HTTP server process per node that serves every pod of that node.

A real cluster runs one nginx per pod; a lab on 2 cores cannot start a Python interpreter per pod
(a few hundred fill the machine).  So each node runs ``python -m lab.podserver --control PATH``
inside the node's network namespace, and the controller tells it, over a Unix socket, which pods
to serve.  For each pod it creates listening sockets while the thread is switched into the pod's
network namespace (``setns``) and switches back: a socket stays bound to the namespace it was
created in, so one asyncio loop serves thousands of pods, each on its own pod IP, port 80, over
IPv4 and IPv6.

HTTP: ``GET /`` answers the pod's name (what ``lab.probe`` expects), ``GET /healthz`` answers 200,
or 503 while the pod is set not ready (for readiness-probe tests).

Use from the controller::

    server = NodePodServer.start(node_netns, run_dir / "node1" / "pods.sock", sandbox=sandbox)
    client = NodePodServer.connect(run_dir / "node1" / "pods.sock")
    client.add("nginx-abc12", "/var/run/netns/sbgp-3f9a-nginx-abc12")   # returns once both listeners are bound
    client.set_ready("nginx-abc12", False)
    client.remove("nginx-abc12")

Call ``remove(pod)`` BEFORE deleting the pod's namespace: an open socket keeps its network namespace
alive, and with it the pod's veth and the node's host route towards the pod.

The control protocol is one JSON object per line each way: ``{"op": "add", "pod": ..., "netns":
..., "port": 80}`` is answered ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "<one
line naming the pod and field>"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httptools
from pyroute2 import netns as pyroute2_netns

from lab.netns import Netns, ProcRef, Sandbox, ip_netns_exec, kill_procs

__all__ = [
    "POD_PORT",
    "NodePodServer",
    "PodServerClient",
    "PodServerError",
    "main",
]

POD_PORT = 80
_REPO_ROOT = Path(__file__).resolve().parent.parent
_LISTEN_BACKLOG = 128


class PodServerError(RuntimeError):
    """A pod-server request failed; the message is one line naming the pod and the field."""


# ---- the server side -------------------------------------------------------------------------


def _response(status: int, reason: str, body: bytes, *, head: bool = False) -> bytes:
    header = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return header if head else header + body


def answer(pod: str, ready: bool, method: str, path: str) -> bytes:
    """The whole HTTP response of a pod to one request (pure: the tests check it directly)."""
    if method not in ("GET", "HEAD"):
        return _response(405, "Method Not Allowed", b"method not allowed\n")
    head = method == "HEAD"
    if path.split("?", 1)[0] == "/healthz":
        if ready:
            return _response(200, "OK", b"ok\n", head=head)
        return _response(503, "Service Unavailable", b"not ready\n", head=head)
    return _response(200, "OK", f"{pod}\n".encode(), head=head)


@dataclass
class _Pod:
    name: str
    netns: tuple[int, int]  # (st_dev, st_ino) of the namespace: a path can name a re-created one
    port: int
    ready: bool = True
    servers: list[asyncio.Server] = field(default_factory=list)
    conns: set[asyncio.Transport] = field(default_factory=set)


class _PodHttp(asyncio.Protocol):
    """One HTTP/1.1 connection to one pod: parse with llhttp, answer, close."""

    def __init__(self, pod: _Pod) -> None:
        self.pod = pod
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pod.conns.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.pod.conns.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(_response(400, "Bad Request", b"bad request\n"))

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        path = self.url.decode("utf-8", "replace") or "/"
        self._send(answer(self.pod.name, self.pod.ready, method, path))

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()


def _listener(family: socket.AddressFamily, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class NodePods:
    """The pods one node serves.  ``home_fd`` is an open fd of the node's own network namespace,
    where the thread returns after creating each pod's listeners."""

    def __init__(self, home_fd: int) -> None:
        self.home_fd = home_fd
        self.pods: dict[str, _Pod] = {}

    def _bind_in(self, pod: str, netns_path: str, port: int) -> tuple[tuple[int, int], list[socket.socket]]:
        """(the namespace's identity, its listeners): both families on ``port`` inside it."""
        try:
            ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise PodServerError(f"pod {pod}: netns {netns_path}: {exc.strerror}") from None
        try:
            st = os.fstat(ns_fd)
            identity = (st.st_dev, st.st_ino)
            old = self.pods.get(pod)
            if old is not None and old.netns == identity and old.port == port:
                return identity, []  # served already
            try:
                pyroute2_netns.setns(ns_fd, flags=0)
            except OSError as exc:
                raise PodServerError(
                    f"pod {pod}: netns {netns_path}: not a network namespace ({exc})"
                ) from None
            socks: list[socket.socket] = []
            try:
                for family in (socket.AF_INET, socket.AF_INET6):
                    socks.append(_listener(family, port))
            except OSError as exc:
                for s in socks:
                    s.close()
                raise PodServerError(f"pod {pod}: port {port}: {exc.strerror}") from None
            finally:
                pyroute2_netns.setns(self.home_fd, flags=0)  # must not fail: the loop lives here
        finally:
            os.close(ns_fd)
        return identity, socks

    async def add(self, pod: str, netns_path: str, port: int) -> None:
        identity, socks = self._bind_in(pod, netns_path, port)
        if not socks:
            return
        if pod in self.pods:  # the sandbox was re-created (maybe under the same path): the new one only
            self.remove(pod)
        entry = _Pod(pod, identity, port)
        loop = asyncio.get_running_loop()
        try:
            for sock in socks:
                entry.servers.append(await loop.create_server(lambda: _PodHttp(entry), sock=sock))
        except BaseException:
            for server in entry.servers:
                server.close()
            for sock in socks:
                sock.close()
            raise
        self.pods[pod] = entry

    def remove(self, pod: str) -> bool:
        entry = self.pods.pop(pod, None)
        if entry is None:
            return False
        for server in entry.servers:
            server.close()
        for conn in list(entry.conns):
            conn.abort()
        return True

    def set_ready(self, pod: str, ready: bool) -> None:
        entry = self.pods.get(pod)
        if entry is None:
            raise PodServerError(f"pod {pod}: not served on this node")
        entry.ready = ready

    def names(self) -> list[str]:
        return sorted(self.pods)

    def close(self) -> None:
        for pod in list(self.pods):
            self.remove(pod)


def _field(req: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = req.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise PodServerError(f"{what}: field {key!r} must be a {kind.__name__}, got {value!r}")
    return value


async def handle_request(node: NodePods, req: Any) -> Any:
    """Carry out one control request; raises PodServerError with a one-line message."""
    if not isinstance(req, dict):
        raise PodServerError("request: must be a JSON object")
    op = req.get("op")
    if op == "pods":
        return node.names()
    pod = _field(req, "pod", str, f"request {op!r}")
    if not pod:
        raise PodServerError(f"request {op!r}: field 'pod' must not be empty")
    if op == "add":
        netns_path = _field(req, "netns", str, f"pod {pod}")
        port = _field(req, "port", int, f"pod {pod}")
        if not 0 < port < 65536:
            raise PodServerError(f"pod {pod}: field 'port' must be 1..65535, got {port}")
        await node.add(pod, netns_path, port)
        return None
    if op == "remove":
        return node.remove(pod)
    if op == "set_ready":
        node.set_ready(pod, _field(req, "ready", bool, f"pod {pod}"))
        return None
    raise PodServerError(f"request: unknown op {op!r} (add, remove, set_ready, pods)")


async def _serve_control(node: NodePods, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            try:
                result = await handle_request(node, json.loads(line))
                reply: dict[str, Any] = {"ok": True, "result": result}
            except json.JSONDecodeError as exc:
                reply = {"ok": False, "error": f"request: invalid JSON: {exc.msg}"}
            except PodServerError as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _raise_fd_limit() -> None:
    """Two listeners per pod and their connections: take the hard limit of open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(control_path: Path, *, ready: Callable[[], None] = lambda: None) -> None:
    """Serve pods until SIGTERM/SIGINT; ``ready`` is called once the control socket listens."""
    _raise_fd_limit()
    home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    node = NodePods(home_fd)
    control_path.unlink(missing_ok=True)
    control = await asyncio.start_unix_server(
        lambda r, w: _serve_control(node, r, w), path=str(control_path), limit=1 << 20
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready()
    try:
        await stop.wait()
    finally:
        control.close()
        node.close()
        control_path.unlink(missing_ok=True)
        os.close(home_fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.podserver")
    parser.add_argument("--control", required=True, type=Path, help="Unix socket the controller talks to")
    args = parser.parse_args(argv)

    def ready() -> None:
        print("ready", flush=True)

    asyncio.run(serve(args.control, ready=ready))
    return 0


# ---- the controller side ---------------------------------------------------------------------


class PodServerClient:
    """A connection to one node's pod server (thread-safe: one request at a time)."""

    def __init__(self, control_path: Path, *, timeout: float = 30.0) -> None:
        self.control_path = Path(control_path)
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.control_path))
        except OSError as exc:
            self._sock.close()
            raise PodServerError(f"pod server {self.control_path}: {exc.strerror or exc}") from None
        self._file = self._sock.makefile("rb")

    def _call(self, op: str, **args: Any) -> Any:
        with self._lock:
            try:
                self._sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                line = self._file.readline()
            except OSError as exc:
                raise PodServerError(f"pod server {self.control_path}: {op}: {exc.strerror or exc}") from None
        if not line:
            raise PodServerError(f"pod server {self.control_path}: {op}: connection closed by the server")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise PodServerError(str(reply.get("error")))
        return reply.get("result")

    def add(self, pod: str, netns_path: str, port: int = POD_PORT) -> None:
        """Serve ``pod`` inside the namespace at ``netns_path``; returns once it listens (IPv4 and
        IPv6).  Adding a pod again is a no-op for the same namespace and port; another namespace
        (also a re-created one under the same path) or port replaces its listeners."""
        self._call("add", pod=pod, netns=netns_path, port=port)

    def remove(self, pod: str) -> bool:
        """Stop serving ``pod`` (its listeners and open connections close); False if it was not served."""
        return bool(self._call("remove", pod=pod))

    def set_ready(self, pod: str, ready: bool) -> None:
        """``GET /healthz`` of ``pod`` answers 200 when ready, 503 when not."""
        self._call("set_ready", pod=pod, ready=ready)

    def pods(self) -> list[str]:
        return [str(p) for p in self._call("pods")]

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> PodServerClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class NodePodServer:
    """A running pod-server process of one node."""

    proc: ProcRef
    control_path: Path
    netns: Netns

    @classmethod
    def start(
        cls,
        node_netns: Netns,
        control_path: Path,
        *,
        sandbox: Sandbox | None = None,
        env: Mapping[str, str] | None = None,
        log: IO[Any] | int = subprocess.DEVNULL,
    ) -> NodePodServer:
        """Start the node's server inside ``node_netns`` and return once its control socket listens.

        With ``sandbox`` the process is registered there for cleanup; otherwise the caller owns
        ``.proc``.  ``env`` is the process environment (the lab's); stderr goes to ``log``."""
        base = dict(os.environ if env is None else env)
        base["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), base.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "lab.podserver", "--control", str(control_path)]
        Path(control_path).parent.mkdir(parents=True, exist_ok=True)
        proc: subprocess.Popen[bytes]
        if sandbox is not None:
            proc = sandbox.popen(
                node_netns, argv, stdout=subprocess.PIPE, stderr=log, env=base, cwd=_REPO_ROOT
            )
        else:
            proc = subprocess.Popen(
                ip_netns_exec(node_netns, argv),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=base,
                cwd=_REPO_ROOT,
                start_new_session=True,
            )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        proc.stdout.close()
        if line != "ready":
            code = proc.wait(timeout=5)
            raise PodServerError(f"pod server of {node_netns}: did not start (exit {code})")
        return cls(ProcRef.of(proc.pid), Path(control_path), node_netns)

    @staticmethod
    def connect(control_path: Path, *, timeout: float = 30.0) -> PodServerClient:
        return PodServerClient(control_path, timeout=timeout)

    def stop(self, *, grace: float = 3.0) -> None:
        kill_procs([self.proc], grace=grace)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.proc.pid, os.WNOHANG)


if __name__ == "__main__":
    sys.exit(main())
