"""Hostile clients on the agent's CNI socket, against the real backend (IpamBackend over SQLite).

Whatever a client sends, the answer is the documented JSON ErrorResponse (docs/agent-api.md), one
line of details naming what is wrong, and nothing changes in the store.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from cni import wire
from tests.cni.conftest import Agent
from tests.cni.test_plugin_errors import state


def exchange(path: Path | str, data: bytes, *, half_close: bool = False, timeout: float = 10) -> bytes:
    """Send ``data`` on a new connection and read everything the agent answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def responses(raw: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """The HTTP responses in ``raw`` (each with a Content-Length body, JSON)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers["content-length"])
        assert headers["content-type"].startswith("application/json"), raw
        out.append((int(lines[0].split(" ")[1]), headers, json.loads(rest[:size])))
        raw = rest[size:]
    return out


def post(path: str, body: dict[str, Any] | bytes, *extra: str) -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "Host: agent", f"Content-Length: {len(payload)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def add_body(agent: Agent, **over: Any) -> dict[str, Any]:
    agent.cluster.pod("web-0")
    body = {"containerID": "c1", "ifName": "eth0", "netns": "/run/netns/x", "podNamespace": "default",
            "podName": "web-0", "cniVersion": "1.0.0", "network": "podnet"}  # fmt: skip
    body.update(over)
    return body


BAD_FIELDS = {
    "containerID with NUL": {"containerID": "c\x001"},
    "containerID with newline": {"containerID": "c\n1"},
    "containerID 100 KB": {"containerID": "c" * 100_000},
    "ifName of 1000 characters": {"ifName": "e" * 1000},
    "ifName ../x": {"ifName": "../x"},
    "cniVersion garbage": {"cniVersion": "garbage"},
    "network with a space": {"network": "pod net"},
    "podName with a newline": {"podName": "web\n0"},
}


@pytest.mark.parametrize("over", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
@pytest.mark.parametrize("path", [wire.PATH_ADD, wire.PATH_DEL, wire.PATH_CHECK])
def test_bad_request_fields_are_400_naming_the_field_and_write_nothing(
    agent: Agent, path: str, over: dict[str, Any]
) -> None:
    body = add_body(agent, **over, **({"ips": []} if path == wire.PATH_CHECK else {}))
    before = state(agent.store)
    [(status, _, answer)] = responses(exchange(agent.socket_path, post(path, body, "Connection: close")))
    kind = {wire.PATH_ADD: "AddRequest", wire.PATH_DEL: "DelRequest", wire.PATH_CHECK: "CheckRequest"}[path]
    assert status == 400 and answer["code"] == wire.CODE_BAD_REQUEST
    assert answer["details"].startswith(f"{kind}.{next(iter(over))}: ") and "\n" not in answer["details"]
    assert len(answer["details"]) < 300
    assert state(agent.store) == before and agent.events.added == []


def test_the_same_request_with_good_fields_is_served(agent: Agent) -> None:
    [(status, _, answer)] = responses(
        exchange(agent.socket_path, post(wire.PATH_ADD, add_body(agent), "Connection: close"))
    )
    assert status == 200 and answer["ips"][0]["address"] == "10.244.100.10/24"


def test_gc_attachments_follow_the_same_rules(agent: Agent) -> None:
    before = state(agent.store)
    body = {"network": "podnet", "cniVersion": "1.1.0", "validAttachments": [{"containerID": "c\n1", "ifname": "eth0"}]}  # fmt: skip
    [(status, _, answer)] = responses(
        exchange(agent.socket_path, post(wire.PATH_GC, body, "Connection: close"))
    )
    assert status == 400 and answer["details"].startswith("GcRequest.validAttachments[0].containerID: ")
    assert state(agent.store) == before


ADD_HEAD = b"POST /v1/cni/add HTTP/1.1\r\nHost: agent\r\n"
MALFORMED = {
    "garbage": (b"garbage\r\n\r\n", 400, "malformed HTTP request: Invalid method"),
    "binary": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "malformed HTTP request: "),
    "bad Content-Length": (ADD_HEAD + b"Content-Length: 1x\r\n\r\n{}", 400, "Invalid character in Content-Length"),
    "negative Content-Length": (ADD_HEAD + b"Content-Length: -1\r\n\r\n{}", 400, "Content-Length"),
    "duplicate Content-Length": (ADD_HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400, "Duplicate Content-Length"),
    "Content-Length with chunked": (ADD_HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
                                    "Transfer-Encoding can't be present with Content-Length"),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "the agent speaks HTTP/1.1"),
    "HTTP/3.0": (b"GET /healthz HTTP/3.0\r\n\r\n", 505, "Invalid HTTP version"),
    "unknown method": (b"FOO /v1/cni/add HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 501, "method 'FOO' is not implemented"),
    "lowercase method": (b"post /v1/cni/add HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 501, "method 'post'"),
    "known method, wrong path": (b"PUT /v1/cni/add HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", 405, "PUT /v1/cni/add: Method Not Allowed"),
    "NUL in a header": (ADD_HEAD + b"X: a\x00b\r\nContent-Length: 2\r\n\r\n{}", 400, "Invalid header value char"),
    "bare LF": (b"POST /v1/cni/add HTTP/1.1\nContent-Length: 2\n\n{}", 400, "malformed HTTP request: "),
    "head over 16 KiB": (ADD_HEAD + b"X: " + b"y" * 20_000 + b"\r\n\r\n", 431, "head is longer than 16384 bytes"),
    "no Host header, served by aiohttp": (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "Missing 'Host' header"),
}  # fmt: skip


@pytest.mark.parametrize(("data", "status", "needle"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_http_gets_the_documented_json_error(
    agent: Agent, data: bytes, status: int, needle: str
) -> None:
    before = state(agent.store)
    answers = responses(exchange(agent.socket_path, data))
    [(got, _, body)] = answers  # then the agent closes the connection
    assert got == status and needle in body["details"], body
    assert body["code"] == (wire.CODE_BAD_REQUEST if status < 500 or status in (501, 505) else 104)
    assert body["apiVersion"] == "v1" and body["msg"] and "\n" not in body["details"]
    assert (
        b"garbage" not in json.dumps(body).encode() and len(body["details"]) < 300
    )  # the input is not echoed
    assert state(agent.store) == before


def test_malformed_http_after_a_request_aiohttp_served_is_json_too(agent: Agent) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(agent.socket_path))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):
            first += s.recv(65536)
        s.sendall(b"garbage\r\n\r\n")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    [(status, _, body)] = responses(first)
    assert status == 200 and body == {"apiVersion": "v1", "status": "ok"}
    [(status, _, body)] = responses(rest)
    assert status == 400 and body["code"] == wire.CODE_BAD_REQUEST
    assert body["details"].startswith("malformed HTTP request: ") and "garbage" not in body["details"]


HALF_CLOSED = {
    "incomplete head": (ADD_HEAD, 400, "incomplete HTTP request"),
    "incomplete body": (ADD_HEAD + b"Content-Length: 100\r\n\r\n{", 400, "incomplete HTTP request"),
    "a CNI call": (b"", 200, ""),
    "a probe aiohttp answers": (b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 200, ""),
}


@pytest.mark.parametrize(("data", "status", "needle"), HALF_CLOSED.values(), ids=HALF_CLOSED.keys())
def test_half_closed_requests_are_answered(agent: Agent, data: bytes, status: int, needle: str) -> None:
    data = data or post(wire.PATH_ADD, add_body(agent))
    [(got, _, body)] = responses(exchange(agent.socket_path, data, half_close=True))
    assert got == status and needle in body.get("details", ""), body
    assert exchange(agent.socket_path, b"", half_close=True) == b""  # nothing sent: nothing answered
