"""The ExaBGP driver: one ExaBGP child process and the command channel to it.

``ExabgpProcess`` is one *generation*: it listens on a unix socket in the runtime dir, starts ExaBGP
(which starts our relay, which connects back, says ``hello <token>`` and hands over ExaBGP's two
process pipes as file descriptors), then writes commands straight into ExaBGP's API pipe and reads
every line ExaBGP writes on its own task so the pipe never fills, matches each ``done``/``error``
ack to the one command in flight (output of a ``show`` command comes before its ack), and hands
session events to a callback.

The generation is over when ExaBGP exits, its pipes close, the relay's connection closes (the relay
died), or ``stop()`` is called; ``closed`` is set at once in each case, and every command still
waiting fails with ExabgpGone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import secrets
import signal
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgp_speaker.commands import Ack, Output, ShutdownEvent, StateEvent, check_line, parse_line

__all__ = ["CommandResult", "Event", "ExabgpError", "ExabgpGone", "ExabgpProcess"]

LOG = logging.getLogger(__name__)

Event = StateEvent | ShutdownEvent
_PR_SET_PDEATHSIG = 1
READ_LIMIT = 4 * 1024 * 1024
# ExaBGP writes to its helper with blocking writes: a pipe of 1 MiB (64 KiB by default) absorbs a
# large ``show`` answer while the agent's event loop is busy, without stalling ExaBGP's reactor
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ExabgpError(RuntimeError):
    """ExaBGP could not be started (one line, with the tail of its log when there is one)."""


class ExabgpGone(ExabgpError):
    """The ExaBGP generation ended while a command was waiting for its ack."""


@dataclass
class CommandResult:
    command: str
    ok: bool = False
    output: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    result: CommandResult
    future: asyncio.Future[CommandResult]


def _pdeathsig_hook() -> Callable[[], None]:
    """A preexec function that asks the kernel to SIGTERM ExaBGP when the agent dies, so ExaBGP
    never outlives its agent.  libc is loaded here, in the parent: between fork and exec the child
    must only call the ready function (loading a library there can deadlock)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    sig = int(signal.SIGTERM)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return hook


class ExabgpProcess:
    def __init__(
        self,
        *,
        command: Sequence[str],
        config_path: Path,
        socket_path: Path,
        log_path: Path,
        env: Mapping[str, str],
        on_event: Callable[[Event], None],
        token: str | None = None,
    ) -> None:
        self.command = list(command)
        self.config_path = config_path
        self.socket_path = socket_path
        self.log_path = log_path
        self.env = dict(env)
        self.token = token or secrets.token_hex(8)
        self._on_event = on_event
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._sentinel: socket.socket | None = None  # the relay's connection; it closes when the relay dies
        self._pending: deque[_Pending] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()
        self.close_reason = ""

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    # ---- start -------------------------------------------------------------------------------

    async def _handshake(self, conn: socket.socket) -> tuple[int, int] | None:
        """Read the relay's hello and the two pipe descriptors it passes; None if it is not ours."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(conn.fileno(), readable)
        try:
            await asyncio.wait_for(fut, 5.0)
        except TimeoutError:
            return None
        finally:
            loop.remove_reader(conn.fileno())
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 256, 2)
        except OSError:
            return None
        if msg.decode("ascii", "replace").strip() != f"hello {self.token}" or len(fds) != 2:
            LOG.warning("ExaBGP relay: refused a connection with an unknown token")
            for fd in fds:
                os.close(fd)
            return None
        return fds[0], fds[1]

    async def _accept(self, listener: socket.socket) -> tuple[socket.socket, int, int]:
        """The first connection that says our token: (its socket, ExaBGP's output, ExaBGP's input)."""
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            got = await self._handshake(conn)
            if got is not None:
                return conn, got[0], got[1]
            conn.close()

    async def _open_pipes(self, out_fd: int, in_fd: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        for fd in (out_fd, in_fd):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
        reader = asyncio.StreamReader(limit=READ_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(out_fd, "rb", 0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(in_fd, "wb", 0)
        )
        return reader, asyncio.StreamWriter(transport, protocol, None, loop)

    async def start(self, *, timeout: float = 15.0) -> None:
        """Start ExaBGP and wait until its relay has handed over the pipes; ExabgpError if not."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.setblocking(False)
        accepted: asyncio.Task[tuple[socket.socket, int, int]] | None = None
        try:
            listener.bind(str(self.socket_path))
            os.chmod(self.socket_path, 0o600)
            listener.listen(4)
            accepted = asyncio.ensure_future(self._accept(listener))
            self._rotate_log()
            with open(self.log_path, "ab") as logf:
                os.chmod(self.log_path, 0o600)
                self._proc = await asyncio.create_subprocess_exec(
                    *self.command,
                    str(self.config_path),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self.env,
                    preexec_fn=_pdeathsig_hook(),
                    start_new_session=True,
                )
            exited: asyncio.Future[Any] = asyncio.ensure_future(self._proc.wait())
            try:
                done, _ = await asyncio.wait(
                    {accepted, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            except asyncio.CancelledError:  # the speaker stopped while this one was coming up
                exited.cancel()
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()  # no grace: it has not been told anything yet
                await asyncio.shield(self._proc.wait())
                raise
            exited.cancel()
            if accepted not in done:
                await self._kill()
                why = "exited" if exited in done else f"did not connect within {timeout:.0f}s"
                raise ExabgpError(f"ExaBGP {why}: {self.log_tail() or 'no output'}")
            conn, out_fd, in_fd = accepted.result()
        finally:
            if accepted is not None and not accepted.done():
                accepted.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await accepted
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        self._sentinel = conn
        reader, self._writer = await self._open_pipes(out_fd, in_fd)
        self._tasks = [
            asyncio.create_task(self._read(reader), name="exabgp-reader"),
            asyncio.create_task(self._watch_exit(), name="exabgp-exit"),
            asyncio.create_task(self._watch_relay(conn), name="exabgp-relay"),
        ]

    def _rotate_log(self) -> None:
        if self.log_path.exists() and self.log_path.stat().st_size > 0:
            os.replace(self.log_path, self.log_path.with_suffix(self.log_path.suffix + ".1"))

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return " | ".join(tail)

    # ---- the running generation -----------------------------------------------------------

    def _close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        while self._pending:
            p = self._pending.popleft()
            if not p.future.done():
                p.future.set_exception(ExabgpGone(f"ExaBGP went away ({reason})"))
        if self._writer is not None:
            self._writer.close()

    async def _watch_relay(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while await loop.sock_recv(conn, 64):
                pass
        self._close("the relay exited")

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        self._close(f"ExaBGP exited with status {code}")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                self._dispatch(raw.decode("utf-8", "replace"))
        except (ConnectionError, ValueError) as exc:  # ValueError: a line beyond READ_LIMIT
            self._close(f"ExaBGP's API pipe failed: {exc}")
            return
        self._close("ExaBGP closed its API pipe")

    def _dispatch(self, line: str) -> None:
        if not line.strip():
            return
        item = parse_line(line)
        if isinstance(item, Ack):
            if not self._pending:
                LOG.warning("ExaBGP sent an ack for no command")
                return
            p = self._pending.popleft()
            p.result.ok = item.ok
            if not p.future.done():
                p.future.set_result(p.result)
        elif isinstance(item, StateEvent | ShutdownEvent):
            self._on_event(item)
        elif isinstance(item, Output):
            if self._pending:
                self._pending[0].result.output.append(item.text)
            else:
                LOG.debug("ExaBGP output outside any command: %s", item.text[:200])

    async def send_many(self, commands: Sequence[str]) -> list[CommandResult]:
        """Send the commands one after the other, each once the previous one is acked.

        They are not pipelined on purpose: ExaBGP answers some errors (an unknown command, an EoR for
        a peer that is not established) at once, ahead of announcements still in its queue, so acks
        of pipelined commands could not be matched by order.  Each ack comes within one turn of
        ExaBGP's loop (see commands.NLRI_PER_LINE), and the next command wakes it at once."""
        return [await self.send(cmd) for cmd in commands]

    async def send(self, command: str) -> CommandResult:
        """Send one command and wait for its ack (and any output it produces)."""
        if self.closed.is_set() or self._writer is None:
            raise ExabgpGone(f"ExaBGP is not running ({self.close_reason or 'not started'})")
        check_line(command)
        fut: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(CommandResult(command), fut))
        self._writer.write(command.encode("ascii") + b"\n")
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            self._close(f"ExaBGP's API pipe failed: {exc}")
        return await fut

    # ---- stop ----------------------------------------------------------------------------------

    async def _kill(self, *, grace: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self, *, grace: float = 5.0) -> None:
        """SIGTERM ExaBGP (SIGKILL after ``grace``), and end the generation."""
        await self._kill(grace=grace)
        self._close("stopped")
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._sentinel is not None:  # once no task waits on it; the relay exits when it closes
            self._sentinel.close()
            self._sentinel = None

    def kill_now(self) -> None:
        """SIGKILL ExaBGP (tests and the restart path use it to model a crash)."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
