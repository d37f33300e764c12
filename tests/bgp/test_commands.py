"""The ExaBGP API protocol: command lines we send and the lines ExaBGP writes back (verbatim samples
from /work/shared/reference/lab-notes.md §10)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgp_speaker.commands import (
    Ack,
    AdjRibRoute,
    CommandError,
    OtherEvent,
    Output,
    RouteAttributes,
    ShutdownEvent,
    StateEvent,
    announce_commands,
    check_line,
    eor_command,
    parse_adj_rib_line,
    parse_line,
    withdraw_commands,
)

N = ipaddress.ip_network
NH = ipaddress.ip_address("172.16.13.11")


def test_announce_is_batched_per_peer_with_all_attributes() -> None:
    attrs = RouteAttributes(
        next_hop=NH,
        communities=("64512:100", "no-export"),
        large_communities=("1:2:3",),
        local_pref=200,
        med=5,
    )
    prefixes = [N(f"10.244.1.{i}/32") for i in range(5)]
    lines = announce_commands("172.16.13.1", attrs, prefixes, per_line=2)
    assert lines == [
        "neighbor 172.16.13.1 announce attributes next-hop 172.16.13.11 origin igp local-preference 200 med 5 "
        "community [ 64512:100 no-export ] large-community [ 1:2:3 ] nlri 10.244.1.0/32 10.244.1.1/32",
        "neighbor 172.16.13.1 announce attributes next-hop 172.16.13.11 origin igp local-preference 200 med 5 "
        "community [ 64512:100 no-export ] large-community [ 1:2:3 ] nlri 10.244.1.2/32 10.244.1.3/32",
        "neighbor 172.16.13.1 announce attributes next-hop 172.16.13.11 origin igp local-preference 200 med 5 "
        "community [ 64512:100 no-export ] large-community [ 1:2:3 ] nlri 10.244.1.4/32",
    ]
    assert withdraw_commands("172.16.13.1", attrs, prefixes[:1]) == [
        "neighbor 172.16.13.1 withdraw attributes next-hop 172.16.13.11 nlri 10.244.1.0/32"
    ]
    assert eor_command("fd00::1", "ipv6") == "neighbor fd00::1 announce eor ipv6 unicast"


def test_family_mismatch_is_refused() -> None:
    with pytest.raises(CommandError):
        announce_commands("172.16.13.1", RouteAttributes(next_hop=NH), [N("fd00::1/128")])


@given(st.text(min_size=1, max_size=40))
def test_no_line_with_a_control_character_or_non_ascii_ever_passes(text: str) -> None:
    line = f"announce route 10.0.0.1/32 next-hop 10.0.0.2 community [ {text} ]"
    if all(" " <= c <= "~" for c in text):
        assert check_line(line) == line
    else:
        with pytest.raises(CommandError):
            check_line(line)


def test_a_value_cannot_split_one_command_into_two() -> None:
    attrs = RouteAttributes(next_hop=NH, communities=("1:1\nshutdown",))
    with pytest.raises(CommandError):
        announce_commands("172.16.13.1", attrs, [N("10.0.0.1/32")])


STATE_UP = (
    '{ "exabgp": "5.0.0", "time": 1795697221.463289, "host" : "vm", "pid" : 26052, "ppid" : 25962, '
    '"counter": 6, "type": "state", "neighbor": { "address": { "local": "172.16.13.11", "peer": '
    '"172.16.13.1" }, "asn": { "local": 64512, "peer": 23000 }, "router-id": "172.16.13.11" , "state": "up" } }'
)
STATE_DOWN = (
    '{ "exabgp": "5.0.0", "time": 1795697225.2259097, "host" : "vm", "pid" : 26052, "ppid" : 25962, '
    '"counter": 7, "type": "state", "neighbor": { "address": { "local": "172.16.13.11", "peer": '
    '"172.16.13.1" }, "asn": { "local": 64512, "peer": 23000 }, "router-id": "172.16.13.11" , '
    '"state": "down", "reason": "notification received (6,4)" } }'
)
SHUTDOWN = (
    '{ "exabgp": "5.0.0", "time": 1795697234.528755, "host" : "vm", "pid" : 26052, "ppid" : 25962, '
    '"type": "notification", "notification": "shutdown" }'
)


def test_parse_acks_events_and_output() -> None:
    assert parse_line("done\n") == Ack(ok=True)
    assert parse_line("error") == Ack(ok=False)
    assert parse_line('{ "answer": "done", "message": "command completed" }') == Ack(ok=True)
    assert parse_line('{"answer": "shutdown", "message": "exbgp exited"}') == ShutdownEvent()
    up = parse_line(STATE_UP)
    assert up == StateEvent(
        peer="172.16.13.1", state="up", time=1795697221.463289, local="172.16.13.11", peer_as=23000
    )
    down = parse_line(STATE_DOWN)
    assert isinstance(down, StateEvent) and down.reason == "notification received (6,4)"
    assert parse_line(SHUTDOWN) == ShutdownEvent()
    assert parse_line('{ "exabgp": "5.0.0", "type": "update", "neighbor": {} }') == OtherEvent("update")
    assert parse_line("neighbor 172.16.13.1 down - closing connection") == StateEvent(
        peer="172.16.13.1", state="down", reason="closing connection"
    )
    assert parse_line("shutdown 26052 25962") == ShutdownEvent()
    assert parse_line("exabgp 5.0.15") == Output("exabgp 5.0.15")
    listing = '[{"state": "up", "peer": {"address": "172.16.13.1"}}]'
    assert parse_line(listing) == Output(listing)


def test_parse_adj_rib_out_v2_and_v1() -> None:
    v2 = (
        '{"peer": {"address": "172.16.13.1"}, "route": {"nlri": {"prefix": "10.244.2.9/32", "nexthop": '
        '"172.16.13.21", "family": {"afi": "ipv4", "safi": "unicast"}}, "attributes": {"local-preference": 200, '
        '"community": ["64512:100"]}}}'
    )
    (r,) = parse_adj_rib_line(v2)
    assert (r.peer, r.prefix, r.next_hop) == (
        "172.16.13.1",
        N("10.244.2.9/32"),
        ipaddress.ip_address("172.16.13.21"),
    )
    assert r.attributes["community"] == ["64512:100"]
    assert json.loads(json.dumps(r.as_dict()))["nextHop"] == "172.16.13.21"
    assert AdjRibRoute.from_dict(json.loads(json.dumps(r.as_dict()))) == r
    v1 = '{"172.16.13.1": {"routes": [{"prefix": "10.244.1.0/32", "family": "ipv4 unicast"}]}}'
    (r1,) = parse_adj_rib_line(v1)
    assert (r1.peer, r1.prefix, r1.next_hop) == ("172.16.13.1", N("10.244.1.0/32"), None)
    assert parse_adj_rib_line("not json") == []
    assert parse_adj_rib_line('{"peer": {"address": "x"}, "route": {"nlri": {"prefix": "bad"}}}') == []


@given(st.text(max_size=200))
def test_any_line_from_exabgp_is_classified_without_raising(line: str) -> None:
    parse_line(line)
    parse_adj_rib_line(line)
