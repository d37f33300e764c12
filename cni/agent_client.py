"""The plugin's side of the socket: one HTTP/1.1 exchange with the node agent, written and read by
hand (``http.client`` alone would cost ~20 ms of start-up: email parsing and ssl), and its log.
Part of the installed plugin program (``spiderbgp.plugin_package`` puts the modules of ``cni/`` one
after the other in one file): stdlib only, no import that the interpreter does not already have at
start-up, no top-level name another module of the program binds otherwise.
"""

from __future__ import annotations

import posix  # the C module behind os: importing os would cost a millisecond of start-up

from cni.fastjson import c_module, json_dumps, json_loads
from cni.netconf import LOG_LEVELS, PluginError
from cni.wire import (
    CODE_PROTOCOL,
    CODE_TRY_AGAIN,
    MAX_BODY_BYTES,
    ErrorResponse,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO


class Log:
    """Plain lines to stderr or ``log_file_path`` (never stdout: that is the runtime's)."""

    def __init__(self, stderr: TextIO, level: str = "info", path: str = "") -> None:
        self._stderr, self._level, self._path = stderr, LOG_LEVELS.get(level, 20), path

    def configure(self, level: str, path: str) -> None:
        self._level, self._path = LOG_LEVELS.get(level, 20), path

    def log(self, level: str, message: str) -> None:
        if LOG_LEVELS[level] < self._level:
            return
        import time

        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {level.upper()} spiderpool[{posix.getpid()}]: {message}\n"
        )
        try:
            if self._path:
                with open(self._path, "a", encoding="utf-8") as f:
                    f.write(line)
            else:
                self._stderr.write(line)
                self._stderr.flush()
        except OSError:
            pass  # logging must never turn a result into a failure


class Transport:
    """One HTTP/1.1 request per call over the agent's unix socket (``Connection: close``).

    Before connecting it refuses a path that is not a socket, that group or others may write, or
    (when we run as root) that root does not own: anyone able to answer there decides pod IPs.
    Failures to reach the agent raise PluginError(``unreachable_code``).
    """

    def __init__(self, socket_path: str, timeout: float, unreachable_code: int = CODE_TRY_AGAIN) -> None:
        self.socket_path, self.timeout, self.unreachable_code = socket_path, timeout, unreachable_code

    def _unreachable(self, problem: str) -> PluginError:
        return PluginError(self.unreachable_code, f"agent socket {self.socket_path}: {problem}")

    def check_socket(self) -> None:
        try:
            st = posix.stat(self.socket_path)
        except FileNotFoundError:
            raise self._unreachable("does not exist (is the spiderbgp agent running?)") from None
        except OSError as err:
            raise self._unreachable(f"cannot stat: {err.strerror}") from None
        if st.st_mode & 0o170000 != 0o140000:
            raise self._unreachable("is not a unix socket")
        if st.st_mode & 0o022:
            raise self._unreachable(
                f"mode {st.st_mode & 0o777:04o} lets group or others write to it (expected 0600)"
            )
        if posix.geteuid() == 0 and st.st_uid != 0:
            raise self._unreachable(f"is owned by uid {st.st_uid}, not root")

    def request(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        """Send one request; return (HTTP status, decoded JSON body or None)."""
        import time

        _socket = c_module("_socket")
        self.check_socket()
        payload = b"" if body is None else json_dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: spiderbgp\r\nUser-Agent: spiderpool-cni\r\nAccept: application/json\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        deadline = time.monotonic() + self.timeout
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        chunks: list[bytes] = []
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            sock.sendall(head.encode("latin-1") + b"\r\n" + payload)
            size, complete = 0, -1
            while size != complete:  # to EOF, or to the end of a Content-Length body (no wait for the close)
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if complete < 0:
                    complete = response_length(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                if size > 4 * MAX_BODY_BYTES:
                    raise PluginError(
                        CODE_PROTOCOL,
                        f"agent socket {self.socket_path}: answer larger than {4 * MAX_BODY_BYTES} bytes",
                    )
        except TimeoutError:
            raise self._unreachable(f"no answer within {self.timeout:g}s") from None
        except OSError as err:
            raise self._unreachable(f"cannot talk to the agent: {err.strerror or err}") from None
        finally:
            sock.close()
        if not chunks:
            # closed without a byte (the agent stopped or died after reading the request): ADD is
            # idempotent, so the runtime should simply try again
            raise self._unreachable("closed the connection without answering")
        return parse_http_response(b"".join(chunks), self.socket_path)


def response_length(data: bytes) -> int:
    """The length of the whole response that ``data`` begins, when its head is complete and gives a
    Content-Length (and no Transfer-Encoding); else -1 (read to the end of the connection)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return -1
    length = -1
    for line in data[:end].lower().split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip()
        if name == b"transfer-encoding":
            return -1
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit():
                return -1
            length = int(value)
    return end + 4 + length if length >= 0 else -1


def parse_http_response(data: bytes, where: str) -> tuple[int, object]:
    """Status and JSON body of a complete HTTP/1.1 response (Content-Length, chunked, or to EOF)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if (
        not sep
        or len(status_line) < 2
        or not status_line[0].startswith("HTTP/1.")
        or not status_line[1].isdigit()
    ):
        raise PluginError(CODE_PROTOCOL, f"agent socket {where}: not an HTTP/1.1 response: {lines[0][:60]!r}")
    status = int(status_line[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body, where)
    elif headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        if len(body) < length:
            raise PluginError(
                CODE_PROTOCOL, f"agent socket {where}: answer cut short ({len(body)} of {length} bytes)"
            )
        body = body[:length]
    if not body.strip():
        return status, None
    try:
        return status, json_loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        if status >= 500:
            return status, None  # e.g. a proxy's or aiohttp's own text page: the status decides
        raise PluginError(
            CODE_PROTOCOL, f"agent socket {where}: HTTP {status} with a body that is not JSON"
        ) from None


def _dechunk(body: bytes, where: str) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        size_text = body[pos:end].split(b";")[0].strip() if end >= 0 else b""
        try:
            size = int(size_text, 16)
        except ValueError:
            raise PluginError(CODE_PROTOCOL, f"agent socket {where}: bad chunked encoding") from None
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


def agent_error(status: int, body: object, where: str) -> PluginError:
    """Map a non-2xx answer to a CNI error: the agent's ErrorResponse code, else 11 for 5xx."""
    if body is not None:
        try:
            err = ErrorResponse.from_json(body)
        except ValueError:
            pass
        else:
            return PluginError(err.code, err.details or err.msg, err.msg)
    if status >= 500:
        return PluginError(
            CODE_TRY_AGAIN, f"agent socket {where}: agent answered HTTP {status} (busy or failing)"
        )
    return PluginError(
        CODE_PROTOCOL, f"agent socket {where}: agent answered HTTP {status} without an error object"
    )
