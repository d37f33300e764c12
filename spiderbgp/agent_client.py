"""Talking to the local agent over its unix socket, for `spiderbgp bgp status | routes`."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from ipam.errors import IpamError

__all__ = ["AgentClient", "AgentUnreachable", "render_bgp_routes", "render_bgp_status"]


class AgentUnreachable(IpamError):
    """The agent's socket did not answer: one line naming the socket."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()  # no agent there: do not leak the descriptor
            raise
        self.sock = sock


class AgentClient:
    def __init__(self, socket_path: str, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def get_json(self, path: str) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise AgentUnreachable(
                f"agent socket {self.socket_path}: {reason} (is the agent running?)"
            ) from None
        finally:
            conn.close()
        try:
            data = json.loads(body)
        except ValueError:
            raise AgentUnreachable(f"agent socket {self.socket_path}: answer to {path} is not JSON") from None
        if response.status >= 400:
            detail = data.get("details") or data.get("msg") if isinstance(data, dict) else data
            raise AgentUnreachable(
                f"agent socket {self.socket_path}: {path}: HTTP {response.status}: {detail}"
            )
        return data


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """calicoctl's boxed table."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(row: Sequence[str]) -> str:
        return "|" + "|".join(f" {str(c).ljust(w)} " for c, w in zip(row, widths, strict=True)) + "|"

    return "\n".join([line, fmt(headers), line, *[fmt(r) for r in rows], line])


def render_bgp_status(data: Mapping[str, Any]) -> str:
    peers = list(data.get("peers") or [])
    out = []
    for family, title in ((4, "IPv4 BGP status"), (6, "IPv6 BGP status")):
        rows = [
            [
                str(p.get("peerAddress", "")),
                str(p.get("peerType", "")),
                str(p.get("state", "")),
                str(p.get("since") or ""),
                str(p.get("info", "")),
            ]
            for p in peers
            if (":" in str(p.get("peerAddress", ""))) == (family == 6)
        ]
        out.append(title)
        if rows:
            out.append(_table(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], rows))
        else:
            out.append(f"No IPv{family} peers found.")
        out.append("")
    if data.get("note"):
        out.insert(0, str(data["note"]))
    if data.get("exabgpPipename"):
        out.append(f"ExaBGP directly: exabgp cli --pipename {data['exabgpPipename']} show adj-rib out")
    return "\n".join(out).rstrip()


def _age(seconds: object) -> str:
    """kubectl's AGE: 45s, 3m12s, 2h5m, 3d4h ("" when unknown)."""
    if not isinstance(seconds, int | float):
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def render_bgp_routes(data: Mapping[str, Any], *, wide: bool = False) -> str:
    """The announced routes (``wide``: with each prefix's age), then what flap damping suppresses."""
    routes = list(data.get("routes") or [])
    out: list[str] = []
    if routes:
        kinds = any("kind" in r for r in routes)  # advertise: block: block or borrowed address
        headers = ["PEER", "PREFIX", *(["KIND"] if kinds else []), "NEXT HOP", *(["AGE"] if wide else [])]
        rows = [
            [
                str(r.get("peer", "")),
                str(r.get("prefix", "")),
                *([str(r.get("kind") or "")] if kinds else []),
                str(r.get("nextHop") or ""),
                *([_age(r.get("ageSeconds"))] if wide else []),
            ]
            for r in routes
        ]
        out.append(_table(headers, rows))
    else:
        out.append(str(data.get("note") or "No routes announced."))
    suppressed = list(data.get("suppressed") or [])
    if suppressed:
        rows = [
            [
                str(s.get("prefix", "")),
                str(s.get("penalty", "")),
                str(s.get("withdrawals", "")),
                str(s.get("until", "")),
                "yes" if s.get("held") else "no",
            ]
            for s in suppressed
        ]
        out.append("Suppressed by flap damping:")
        out.append(_table(["PREFIX", "PENALTY", "WITHDRAWALS", "UNTIL", "POD WAITING"], rows))
    return "\n".join(out)
