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
