"""parse_bgp_config: defaults, every field, and one-line errors naming the field path."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp_speaker.config import BgpConfigError, parse_bgp_config
from bgp_speaker.passwords import read_passwords


def _raw(**top: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "asn": 64512,
        "nextHop": "172.16.13.11",
        "peers": [{"address": "172.16.13.1", "asn": 23000}],
    }
    raw.update(top)
    return raw


def _peer(**fields: Any) -> dict[str, Any]:
    return _raw(peers=[{"address": "172.16.13.1", "asn": 23000, **fields}])


def test_minimal_config_gets_the_defaults() -> None:
    cfg = parse_bgp_config(_raw(), source="agent.yaml")
    assert cfg.asn == 64512
    assert cfg.router_id == ipaddress.ip_address("172.16.13.11")
    assert cfg.next_hop_v4 == ipaddress.ip_address("172.16.13.11")
    assert cfg.next_hop_v6 is None
    assert cfg.advertise == "host"
    assert cfg.require_host_route is True
    assert cfg.withdraw_on_exit is False
    (peer,) = cfg.peers
    assert peer.hold_time == 90
    assert peer.graceful_restart == 120
    assert peer.port == 179
    assert peer.families == ("ipv4",)
    assert peer.local_address == ipaddress.ip_address("172.16.13.11")
    assert peer.key == "172.16.13.1"


def test_full_config() -> None:
    cfg = parse_bgp_config(
        {
            "asn": 4200000001,
            "routerId": "10.0.0.1",
            "nextHop": "172.16.13.11",
            "nextHopV6": "fd00:13::11",
            "advertise": "aggregate",
            "exportCIDRs": ["10.244.0.0/16", "fd00:244::/48"],
            "withdrawOnExit": True,
            "requireHostRoute": False,
            "reconcileInterval": 5,
            "runtimeDir": "/run/spiderbgp/node1",
            "peers": [
                {
                    "address": "fd00:13::1",
                    "asn": 23000,
                    "port": 1179,
                    "passwordFile": "/etc/spiderbgp/md5",
                    "holdTime": 0,
                    "multihop": 3,
                    "gracefulRestart": 0,
                    "families": ["ipv6", "ipv4 unicast"],
                    "communities": ["64512:100", "NO_EXPORT"],
                    "largeCommunities": ["4200000001:1:2"],
                    "localPref": 200,
                    "med": 0,
                    "maxPrefixes": 100,
                    "description": "tor-a rack 7",
                },
                {
                    "address": "172.16.13.2",
                    "asn": 4200000001,
                    "ttlSecurity": 1,
                    "localAddress": "172.16.13.12",
                },
            ],
        },
        source="agent.yaml",
    )
    a, b = cfg.peers
    assert a.local_address == ipaddress.ip_address("fd00:13::11")
    assert a.families == ("ipv6", "ipv4")
    assert a.communities == ("64512:100", "no-export")
    assert a.large_communities == ("4200000001:1:2",)
    assert (a.hold_time, a.multihop, a.max_prefixes, a.med, a.local_pref) == (0, 3, 100, 0, 200)
    assert b.families == ("ipv4", "ipv6")
    assert b.ttl_security == 1 and b.index == 1
    assert cfg.export_cidrs[1] == ipaddress.ip_network("fd00:244::/48")


def test_community_number_alone_is_refused() -> None:
    with pytest.raises(BgpConfigError) as err:
        parse_bgp_config(_peer(communities=[65535]), source="a.yaml")
    assert str(err.value) == (
        "a.yaml: bgp.peers[0].communities[0]: '65535' is not a community "
        "(ASN:VALUE, each 0..65535, or a well-known name)"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_peer(holdTime=2), "bgp.peers[0].holdTime: must be 0 or >= 3"),
        (_peer(holdtime=9), "bgp.peers[0].holdtime: unknown field (did you mean holdTime?)"),
        (_peer(holdTime="9"), "bgp.peers[0].holdTime: must be an integer, not '9'"),
        (_peer(asn=0), "bgp.peers[0].asn: must be between 1 and 4294967295, not 0"),
        (_raw(peers=[{"asn": 1}]), "bgp.peers[0].address: is required"),
        (
            _raw(peers=[{"address": "10.0.0.300", "asn": 1}]),
            "bgp.peers[0].address: '10.0.0.300' is not an IPv4 or IPv6 address",
        ),
        (_raw(peers=[]), "bgp.peers: at least one peer is required"),
        (_raw(peers={"a": 1}), "bgp.peers: must be a list, not dict"),
        (_raw(peers=["x"]), "bgp.peers[0]: must be a mapping, not str"),
        (_raw(asn=None), "bgp.asn: is required"),
        (_raw(nextHop=None), "bgp.nextHop: is required (the node's peering address, or auto)"),
        (
            _raw(nextHop="::1", routerId="1.1.1.1"),
            "bgp.nextHop: ::1 cannot be a next hop: it is unspecified, loopback or multicast",
        ),
        (_raw(nextHop="fd00::1"), "bgp.routerId: is required when nextHop is not IPv4"),
        (_raw(routerId="fd00::1"), "bgp.routerId: must be a non-zero IPv4 address, not fd00::1"),
        (_raw(nextHopV6="10.0.0.1"), "bgp.nextHopV6: 10.0.0.1 is not an IPv6 address"),
        (_raw(advertise="all"), "bgp.advertise: must be one of host, aggregate, pool, block, not 'all'"),
        (
            _raw(exportCIDRs=["10.244.1.1/16"]),
            "bgp.exportCIDRs[0]: '10.244.1.1/16' is not a CIDR (10.244.1.1/16 has host bits set)",
        ),
        (_raw(exportCIDRs="10.0.0.0/8"), "bgp.exportCIDRs: must be a list, not str"),
        (_raw(withdrawOnExit="yes"), "bgp.withdrawOnExit: must be true or false, not 'yes'"),
        (_raw(reconcileInterval=-1), "bgp.reconcileInterval: must be at least 0, not -1"),
        (_raw(runtimeDir="run/x"), "bgp.runtimeDir: must be an absolute path, not 'run/x'"),
        (_raw(peer=[]), "bgp.peer: unknown field (did you mean peers?)"),
        (
            _raw(runtimeDir="/run/my dir"),
            "bgp.runtimeDir: must not contain spaces or any of ;{}\"# (it is written into ExaBGP's config)",
        ),
        (
            _raw(runtimeDir="/" + "x" * 96),
            "bgp.runtimeDir: must be at most 96 bytes long (a unix socket lives in it)",
        ),
        (
            _peer(multihop=2, ttlSecurity=1),
            "bgp.peers[0].ttlSecurity: cannot be combined with multihop (choose one)",
        ),
        (_peer(gracefulRestart=5000), "bgp.peers[0].gracefulRestart: must be between 0 and 4095, not 5000"),
        (
            _peer(families=["ipv6"]),
            "bgp.peers[0].families[0]: ipv6 needs an ipv6 next hop (set bgp.nextHopV6)",
        ),
        (_peer(families=["ipv4", "ipv4"]), "bgp.peers[0].families[1]: ipv4 is listed twice"),
        (_peer(families=["l2vpn"]), "bgp.peers[0].families[0]: must be ipv4 or ipv6, not 'l2vpn'"),
        (
            _peer(communities=["70000:1"]),
            "bgp.peers[0].communities[0]: '70000:1' is not a community (ASN:VALUE, each 0..65535, or a well-known name)",
        ),
        (
            _peer(largeCommunities=["1:2"]),
            "bgp.peers[0].largeCommunities[0]: '1:2' is not a large community (GLOBAL:LOCAL1:LOCAL2, each 0..4294967295)",
        ),
        (
            _peer(localAddress="fd00::1"),
            "bgp.peers[0].localAddress: fd00::1 is not of the same family as the peer 172.16.13.1",
        ),
        (_peer(passwordFile="a\nb"), "bgp.peers[0].passwordFile: must not contain control characters"),
        (
            _peer(description='x"; md5-password y'),
            "bgp.peers[0].description: may only hold letters, digits, spaces and ._:/@+- (at most 80)",
        ),
        (_peer(maxPrefixes=0), "bgp.peers[0].maxPrefixes: must be between 1 and 10000000, not 0"),
        (
            _raw(peers=[{"address": "172.16.13.1", "asn": 1}, {"address": "172.16.13.1", "asn": 2}]),
            "bgp.peers[1].address: 172.16.13.1 is already bgp.peers[0]",
        ),
        (
            _raw(peers=[{"address": "172.16.13.11", "asn": 1}]),
            "bgp.peers[0].address: 172.16.13.11 is this node's own address",
        ),
        ([1, 2], "bgp: must be a mapping, not list"),
    ],
)
def test_errors_are_one_line_naming_the_field(raw: Any, message: str) -> None:
    with pytest.raises(BgpConfigError) as err:
        parse_bgp_config(raw, source="agent.yaml")
    assert str(err.value) == f"agent.yaml: {message}"
    assert "\n" not in str(err.value)


def test_passwords_come_from_files_and_never_show(tmp_path: Path) -> None:
    key = tmp_path / "md5"
    key.write_bytes(b"s3cret with spaces\n")
    key.chmod(0o600)  # a key file others can read is refused
    cfg = parse_bgp_config(_peer(passwordFile=str(key)), source="a.yaml")
    secrets = read_passwords(cfg)
    assert secrets["172.16.13.1"].value == b"s3cret with spaces"
    assert "s3cret" not in repr(secrets) and "s3cret" not in str(secrets["172.16.13.1"])
    assert "s3cret" not in repr(cfg)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read {path}: No such file or directory"),
        (b"\n", "{path} is empty"),
        (b"x" * 81, "the key in {path} is longer than 80 bytes"),
        (b"ab\x01c", "the key in {path} contains control characters"),
    ],
)
def test_password_file_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    key = tmp_path / "md5"
    if content is not None:
        key.write_bytes(content)
        key.chmod(0o600)
    cfg = parse_bgp_config(_peer(passwordFile=str(key)), source="a.yaml")
    with pytest.raises(BgpConfigError) as err:
        read_passwords(cfg)
    assert str(err.value) == "a.yaml: bgp.peers[0].passwordFile: " + message.format(path=key)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
peer_like = st.fixed_dictionaries(
    {"address": st.sampled_from(["172.16.13.1", "fd00::1", "x", 5]), "asn": json_values},
    optional={
        k: json_values for k in ("holdTime", "families", "communities", "multihop", "ttlSecurity", "port")
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "asn": st.one_of(st.just(64512), json_values),
            "nextHop": st.one_of(st.just("10.0.0.1"), json_values),
        },
        optional={
            "peers": st.lists(peer_like, max_size=3) | json_values,
            "advertise": json_values,
            "extra": json_values,
        },
    )
)
def test_any_document_gives_a_config_or_one_line_error(raw: dict[str, Any]) -> None:
    try:
        cfg = parse_bgp_config(raw, source="fuzz.yaml")
    except BgpConfigError as exc:
        text = str(exc)
        assert text.startswith("fuzz.yaml: bgp") and "\n" not in text
    else:
        assert cfg.peers and all(1 <= p.asn <= 2**32 - 1 for p in cfg.peers)


ROUTES = {
    ipaddress.ip_address("172.16.13.1"): ipaddress.ip_address("172.16.13.11"),
    ipaddress.ip_address("fd00:13::1"): ipaddress.ip_address("fd00:13::11"),
}


def _kernel(peer: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
    """A routing table as the resolver sees it: a source address for the peers it can reach."""
    return ROUTES.get(peer)


def test_next_hop_auto_is_the_address_towards_the_first_peer_of_its_family() -> None:
    v4 = parse_bgp_config(_raw(nextHop="auto"), source="agent.yaml", source_address=_kernel)
    assert v4.next_hop_v4 == v4.router_id == v4.peers[0].local_address == ipaddress.ip_address("172.16.13.11")
    both = [{"address": "172.16.13.1", "asn": 23000}, {"address": "fd00:13::1", "asn": 23000}]
    dual = parse_bgp_config(
        _raw(nextHop="auto", nextHopV6="auto", peers=both), source="agent.yaml", source_address=_kernel
    )
    assert (dual.next_hop_v4, dual.next_hop_v6) == (
        ipaddress.ip_address("172.16.13.11"),
        ipaddress.ip_address("fd00:13::11"),
    )
    # the first peer decides nextHop's family; an IPv6 next hop needs the router ID spelled out
    v6_first = parse_bgp_config(
        _raw(nextHop="auto", routerId="10.0.0.1", peers=both[::-1]),
        source="agent.yaml",
        source_address=_kernel,
    )
    assert (v6_first.next_hop_v4, v6_first.next_hop_v6) == (None, ipaddress.ip_address("fd00:13::11"))


@pytest.mark.parametrize(
    ("raw", "resolver", "message"),
    [
        (_raw(nextHop="auto"), None, "bgp.nextHop: auto needs the node's routing table"),
        (
            _raw(nextHop="auto", peers=[{"address": "10.9.9.9", "asn": 1}]),
            _kernel,
            "bgp.nextHop: auto: this node has no route to peer 10.9.9.9",
        ),
        (_raw(nextHopV6="auto"), _kernel, "bgp.nextHopV6: auto: there is no IPv6 peer to find"),
    ],
)
def test_next_hop_auto_errors_name_the_field(raw: dict[str, Any], resolver: Any, message: str) -> None:
    with pytest.raises(BgpConfigError) as err:
        parse_bgp_config(raw, source="agent.yaml", source_address=resolver)
    assert message in str(err.value)
