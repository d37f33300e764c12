"""Peer session state from ExaBGP's neighbor-changes events, and the ``calicoctl node status``-style table.

ExaBGP reports ``connected`` (TCP up, OPEN not yet exchanged), ``up`` (Established) and ``down``
(with a reason).  Like BIRD's ``show protocols`` as calicoctl prints it, STATE is ``up`` only when
Established and ``start`` while the speaker keeps trying; INFO says where it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace

from bgp_speaker.commands import StateEvent

__all__ = ["PeerStatus", "apply_event", "format_status_table", "initial_status"]


@dataclass(frozen=True)
class PeerStatus:
    address: str
    peer_type: str  # "eBGP" or "iBGP"
    state: str  # "up", "start" or "down" (ExaBGP not running)
    since: dt.datetime | None
    info: str
    established: bool = False
    prefixes: int = 0  # prefixes the agent has announced to this peer

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


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def format_status_table(peers: Sequence[PeerStatus], *, running: bool = True) -> str:
    """A text table like ``calicoctl node status`` prints (PEER ADDRESS, PEER TYPE, STATE, SINCE, INFO)."""
    header = ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO")
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
    widths = [max(len(h), *(len(_cell(r[i])) for r in rows)) for i, h in enumerate(header)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True)) + "|"

    out = [
        "spiderbgp BGP speaker (ExaBGP) is running." if running else "spiderbgp BGP speaker is NOT running.",
        "",
        "BGP peers:",
        rule,
        line(header),
        rule,
    ]
    out.extend(line(r) for r in rows)
    out.append(rule)
    return "\n".join(out) + "\n"
