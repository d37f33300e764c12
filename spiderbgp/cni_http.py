"""The short path's HTTP: ``parse_call`` takes a complete, well-formed HTTP/1.1 CNI call (a ``POST``
with a Content-Length body, or the ``GET`` of STATUS) from the bytes a connection has read, parsed by
llhttp (``httptools``), and tells apart a request not all there yet (``_Partial``), one to refuse
with a JSON ErrorResponse (``Refusal``) and one the short path leaves to aiohttp (None).
"""

from __future__ import annotations

from typing import Any

import httptools

from cni import wire
from spiderbgp.cni_app import _CALLS, _dumps, _error_body

_ROUTES = {(m.encode(), p.encode()): op for op, (m, p) in _CALLS.items()}
_MAX_HEAD = 16 * 1024  # a head longer than this, or not complete by then, goes to aiohttp
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
            409: b"Conflict", 413: b"Payload Too Large", 422: b"Unprocessable Entity", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 503: b"Service Unavailable",
            505: b"HTTP Version Not Supported"}  # fmt: skip


class _Partial:
    """A request not all there yet: ``needed`` is the size it will have once complete (0 while its
    head is incomplete)."""

    __slots__ = ("needed",)

    def __init__(self, needed: int) -> None:
        self.needed = needed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Partial) and other.needed == self.needed

    def __repr__(self) -> str:
        return f"_Partial({self.needed})"


_HEAD_INCOMPLETE = _Partial(0)


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
    if reason in ("Pause on PRI/Upgrade", "Invalid HTTP version"):
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


def parse_call(data: bytes | bytearray) -> _Call | _Partial | Refusal | None:
    """The CNI call at the start of ``data``; a ``_Partial`` when more bytes may make it one; a
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
            return _HEAD_INCOMPLETE
        return Refusal(431, f"malformed HTTP request: the head is longer than {_MAX_HEAD} bytes")
    # llhttp accepted the request with CRLF line ends and a Content-Length: it ends that many bytes
    # after the blank line that ends its head, where the next request on the connection starts
    if not request.complete:
        return _Partial(data.find(b"\r\n\r\n") + 4 + request.content_length)
    body = b"".join(request.body)
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
