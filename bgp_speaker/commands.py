"""The ExaBGP process-API protocol as pure functions: command lines we send, lines we read back.

Commands are one line each, batched (``announce attributes ... nlri P1 P2 ...``), addressed to one
peer (``neighbor <ip> ...``), and checked before they leave: printable ASCII only, so no value can
split one command into several.  ExaBGP answers every command with ``done`` or ``error`` (plain text
even with ``encoder json``; the ``{"answer": ...}`` form is accepted too); output of a ``show``
command comes before its ack; session events (``"type": "state"``) may arrive at any time.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bgp_speaker.config import Family, IPAddress, IPNetwork, PeerConfig

__all__ = [
    "MAX_LINE",
    "NLRI_PER_LINE",
    "SHOW_ADJ_RIB_OUT",
    "Ack",
    "AdjRibRoute",
    "CommandError",
    "OtherEvent",
    "Output",
    "RouteAttributes",
    "ShutdownEvent",
    "StateEvent",
    "announce_commands",
    "attributes_for",
    "check_line",
    "eor_command",
    "parse_adj_rib_line",
    "parse_line",
    "withdraw_commands",
]

MAX_LINE = 512 * 1024  # ExaBGP refuses lines over 1 MiB; stay well below
# ExaBGP runs an API command as a generator that yields once per prefix, and its reactor advances
# such generators by at most 50 steps per loop turn (reactor/asynchronous.py, ASYNC.LIMIT); a turn
# with no new input ends in a poll that sleeps for its idle tick.  A line of 500 prefixes therefore
# took 10 ticks, and 2,000 prefixes 40 (0.4 s at ExaBGP's default tick, 2 s at ours).  A line of 49
# prefixes is injected and acked within one turn (49 steps + the ack), and the next line, sent on
# the ack, wakes ExaBGP at once: a bulk announce no longer depends on the tick at all.
NLRI_PER_LINE = 49
SHOW_ADJ_RIB_OUT = "show adj-rib out json"


class CommandError(ValueError):
    """A command line that must not be sent (control characters, too long, empty)."""


@dataclass(frozen=True)
class RouteAttributes:
    """The path attributes of every route announced to one peer in one family."""

    next_hop: IPAddress
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    local_pref: int | None = None
    med: int | None = None

    def render(self) -> str:
        parts = [f"next-hop {self.next_hop}", "origin igp"]
        if self.local_pref is not None:
            parts.append(f"local-preference {self.local_pref}")
        if self.med is not None:
            parts.append(f"med {self.med}")
        if self.communities:
            parts.append(f"community [ {' '.join(self.communities)} ]")
        if self.large_communities:
            parts.append(f"large-community [ {' '.join(self.large_communities)} ]")
        return " ".join(parts)


def attributes_for(peer: PeerConfig, next_hop: IPAddress) -> RouteAttributes:
    return RouteAttributes(
        next_hop=next_hop,
        communities=peer.communities,
        large_communities=peer.large_communities,
        local_pref=peer.local_pref,
        med=peer.med,
    )


def check_line(line: str) -> str:
    """Return ``line`` if it is safe to send as one command; raise CommandError otherwise."""
    if not line.strip():
        raise CommandError("empty command")
    if len(line) > MAX_LINE:
        raise CommandError(f"command of {len(line)} characters exceeds {MAX_LINE}")
    bad = next((c for c in line if not " " <= c <= "~"), None)
    if bad is not None:
        raise CommandError(f"command contains the character {bad!r} (only printable ASCII is allowed)")
    return line


def _chunks(items: Sequence[IPNetwork], size: int) -> Iterable[Sequence[IPNetwork]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _family_check(attrs: RouteAttributes, prefixes: Sequence[IPNetwork]) -> None:
    for p in prefixes:
        if p.version != attrs.next_hop.version:
            raise CommandError(f"{p} and next hop {attrs.next_hop} are of different families")


def announce_commands(
    peer: str, attrs: RouteAttributes, prefixes: Sequence[IPNetwork], *, per_line: int = NLRI_PER_LINE
) -> list[str]:
    """``neighbor <peer> announce attributes <attrs> nlri <p> ...`` lines, ``per_line`` prefixes each."""
    _family_check(attrs, prefixes)
    head = f"neighbor {ipaddress.ip_address(peer)} announce attributes {attrs.render()} nlri"
    return [check_line(f"{head} {' '.join(map(str, chunk))}") for chunk in _chunks(prefixes, per_line)]


def withdraw_commands(
    peer: str, attrs: RouteAttributes, prefixes: Sequence[IPNetwork], *, per_line: int = NLRI_PER_LINE
) -> list[str]:
    """``neighbor <peer> withdraw attributes next-hop <nh> nlri <p> ...`` lines."""
    _family_check(attrs, prefixes)
    head = f"neighbor {ipaddress.ip_address(peer)} withdraw attributes next-hop {attrs.next_hop} nlri"
    return [check_line(f"{head} {' '.join(map(str, chunk))}") for chunk in _chunks(prefixes, per_line)]


def eor_command(peer: str, family: Family) -> str:
    return check_line(f"neighbor {ipaddress.ip_address(peer)} announce eor {family} unicast")


# ---- what ExaBGP writes back ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    ok: bool


@dataclass(frozen=True)
class StateEvent:
    """A neighbor-changes event: state is ``connected``, ``up`` or ``down``."""

    peer: str
    state: str
    reason: str = ""
    time: float = 0.0
    local: str = ""
    peer_as: int | None = None


@dataclass(frozen=True)
class ShutdownEvent:
    """ExaBGP itself is stopping."""


@dataclass(frozen=True)
class OtherEvent:
    """Another JSON event (update, notification, ...): not used, but not command output either."""

    type: str


@dataclass(frozen=True)
class Output:
    """A line that belongs to the answer of the command in flight (e.g. a ``show`` line)."""

    text: str


Line = Ack | StateEvent | ShutdownEvent | OtherEvent | Output


def _state_from_json(obj: Mapping[str, Any]) -> StateEvent | None:
    nb = obj.get("neighbor")
    if not isinstance(nb, Mapping):
        return None
    addr = nb.get("address")
    asn = nb.get("asn")
    peer = addr.get("peer") if isinstance(addr, Mapping) else None
    state = nb.get("state")
    if not isinstance(peer, str) or not isinstance(state, str):
        return None
    local = addr.get("local") if isinstance(addr, Mapping) else ""
    peer_as = asn.get("peer") if isinstance(asn, Mapping) else None
    when = obj.get("time")
    return StateEvent(
        peer=peer,
        state=state,
        reason=str(nb.get("reason", "")),
        time=float(when) if isinstance(when, int | float) else 0.0,
        local=str(local or ""),
        peer_as=peer_as if isinstance(peer_as, int) else None,
    )


def parse_line(line: str) -> Line:
    """Classify one line ExaBGP wrote to the helper (JSON or text encoder)."""
    text = line.strip()
    if text in ("done", "error"):
        return Ack(ok=text == "done")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return Output(text)
        if isinstance(obj, Mapping):
            answer = obj.get("answer")
            if isinstance(answer, str) and set(obj) <= {"answer", "message"}:
                if answer == "shutdown":
                    return ShutdownEvent()
                return Ack(ok=answer == "done")
            kind = obj.get("type")
            if "exabgp" in obj and isinstance(kind, str):
                if kind == "state":
                    return _state_from_json(obj) or OtherEvent(kind)
                if kind == "notification" and obj.get("notification") == "shutdown":
                    return ShutdownEvent()
                return OtherEvent(kind)
        return Output(text)
    words = text.split()
    if len(words) >= 3 and words[0] == "neighbor" and words[2] in ("up", "connected", "down"):
        reason = text.split(" - ", 1)[1] if words[2] == "down" and " - " in text else ""
        return StateEvent(peer=words[1], state=words[2], reason=reason)
    if len(words) == 3 and words[0] == "shutdown" and words[1].isdigit():
        return ShutdownEvent()
    return Output(text)


@dataclass(frozen=True)
class AdjRibRoute:
    """One route of ExaBGP's adj-rib-out, as ``show adj-rib out json`` (format v2) prints it."""

    peer: str
    prefix: IPNetwork
    next_hop: IPAddress | None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdjRibRoute:
        """The inverse of as_dict."""
        hop = data.get("nextHop")
        attrs = data.get("attributes")
        return cls(
            peer=str(data["peer"]),
            prefix=ipaddress.ip_network(str(data["prefix"])),
            next_hop=ipaddress.ip_address(hop) if isinstance(hop, str) else None,
            attributes=dict(attrs) if isinstance(attrs, Mapping) else {},
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "prefix": str(self.prefix),
            "nextHop": None if self.next_hop is None else str(self.next_hop),
            "attributes": dict(self.attributes),
        }


def parse_adj_rib_line(text: str) -> list[AdjRibRoute]:
    """The routes on one output line of ``show adj-rib out json`` (v2, or v1 without next hops)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(obj, Mapping):
        return []
    out: list[AdjRibRoute] = []
    peer = obj.get("peer")
    route = obj.get("route")
    if isinstance(peer, Mapping) and isinstance(route, Mapping):  # v2
        nlri = route.get("nlri")
        if isinstance(nlri, Mapping) and isinstance(peer.get("address"), str):
            try:
                prefix = ipaddress.ip_network(str(nlri.get("prefix")), strict=False)
            except ValueError:
                return []
            nh = nlri.get("nexthop")
            try:
                next_hop = ipaddress.ip_address(nh) if isinstance(nh, str) else None
            except ValueError:
                next_hop = None
            attrs = route.get("attributes")
            out.append(
                AdjRibRoute(
                    peer=str(peer["address"]),
                    prefix=prefix,
                    next_hop=next_hop,
                    attributes=dict(attrs) if isinstance(attrs, Mapping) else {},
                )
            )
        return out
    for address, body in obj.items():  # v1: {"<peer>": {"routes": [{"prefix": ...}]}}
        routes = body.get("routes") if isinstance(body, Mapping) else None
        for r in routes or ():
            try:
                out.append(AdjRibRoute(str(address), ipaddress.ip_network(str(r["prefix"])), None))
            except (KeyError, TypeError, ValueError):
                continue
    return out
