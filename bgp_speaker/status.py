"""Peer session state from ExaBGP's neighbor-changes events, and the ``calicoctl node status``-style table.

ExaBGP reports ``connected`` (TCP up, OPEN not yet exchanged), ``up`` (Established) and ``down``
(with a reason).  Like BIRD's ``show protocols`` as calicoctl prints it, STATE is ``up`` only when
Established and ``start`` while the speaker keeps trying; INFO says where it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bgp_speaker.commands import AdjRibRoute, StateEvent

__all__ = ["PeerStatus", "apply_event", "format_routes_table", "format_status_table", "initial_status"]


@dataclass(frozen=True)
class PeerStatus:
    address: str
    peer_type: str  # "eBGP" or "iBGP"
    state: str  # "up", "start" or "down" (ExaBGP not running)
    since: dt.datetime | None
    info: str
    established: bool = False
    prefixes: int = 0  # prefixes the agent has announced to this peer

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PeerStatus:
        """The inverse of as_dict (the CLI formats what the agent sent as JSON)."""
        since = data.get("since")
        return cls(
            address=str(data["peerAddress"]),
            peer_type=str(data["peerType"]),
            state=str(data["state"]),
            since=dt.datetime.fromisoformat(since) if isinstance(since, str) else None,
            info=str(data.get("info", "")),
            established=bool(data.get("established", False)),
            prefixes=int(data.get("prefixes", 0)),
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "peerAddress": self.address,
            "peerType": self.peer_type,
            "state": self.state,
            "since": None if self.since is None else self.since.isoformat(timespec="seconds"),
            "info": self.info,
            "established": self.established,
            "prefixes": self.prefixes,
        }


def initial_status(address: str, *, local_as: int, peer_as: int, now: dt.datetime) -> PeerStatus:
    return PeerStatus(
        address=address,
        peer_type="iBGP" if local_as == peer_as else "eBGP",
        state="start",
        since=now,
        info="Idle",
    )


def apply_event(status: PeerStatus, event: StateEvent, *, now: dt.datetime) -> PeerStatus:
    """The status after one neighbor-changes event for this peer."""
    if event.state == "up":
        return replace(status, state="up", since=now, info="Established", established=True)
    if event.state == "connected":
        if status.established:
            return status
        return replace(status, state="start", info="OpenSent")
    if event.state == "down":
        reason = event.reason or "session closed"
        since = now if status.established or status.since is None else status.since
        return replace(status, state="start", since=since, info=f"Active ({reason})", established=False)
    return status


def format_status_table(peers: Sequence[PeerStatus], *, running: bool = True) -> str:
    """A text table like ``calicoctl node status`` prints (PEER ADDRESS, PEER TYPE, STATE, SINCE, INFO)."""
    rows = [
        (
            p.address,
            p.peer_type,
            p.state,
            "" if p.since is None else p.since.astimezone().strftime("%H:%M:%S"),
            p.info,
        )
        for p in peers
    ]
    head = (
        "spiderbgp BGP speaker (ExaBGP) is running." if running else "spiderbgp BGP speaker is NOT running."
    )
    table = _table(("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"), rows)
    return "\n".join([head, "", "BGP peers:", *table]) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True)) + "|"

    return [rule, line(header), rule, *(line(r) for r in rows), rule]


def format_routes_table(routes: Sequence[AdjRibRoute]) -> str:
    """What ExaBGP announces (its adj-rib-out): PEER, PREFIX, NEXT HOP, COMMUNITIES."""
    rows = [
        (
            r.peer,
            str(r.prefix),
            "" if r.next_hop is None else str(r.next_hop),
            " ".join(
                str(c) for c in [*r.attributes.get("community", ()), *r.attributes.get("large-community", ())]
            ),
        )
        for r in sorted(
            routes,
            key=lambda x: (x.peer, x.prefix.version, int(x.prefix.network_address), x.prefix.prefixlen),
        )
    ]
    return "\n".join(_table(("PEER", "PREFIX", "NEXT HOP", "COMMUNITIES"), rows)) + "\n"
