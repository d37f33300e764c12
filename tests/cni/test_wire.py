"""cni.wire and cni.wire_agent: every record survives a round trip between the side that writes it and
the side that reads it, and bad input is one ValueError naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni import wire, wire_agent, wire_rules

names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-."), min_size=1, max_size=20)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
ipconfigs = st.one_of(
    st.builds(lambda ip, p, gw, pool, nic: wire.IPConfig(address=f"{ip}/{p}", gateway=gw, pool=pool, nic=nic), v4, st.integers(0, 32), st.none() | v4, names, names),
    st.builds(lambda ip, p, gw, pool, nic: wire.IPConfig(address=f"{ip}/{p}", gateway=gw, pool=pool, nic=nic), v6, st.integers(0, 128), st.none() | v6, names, names),
)  # fmt: skip
routes = st.one_of(
    st.builds(lambda dst, gw, nic: wire.Route(if_name=nic, dst=dst, gw=gw), st.sampled_from(["0.0.0.0/0", "10.0.0.0/8"]), st.none() | v4, names),
    st.builds(lambda dst, gw, nic: wire.Route(if_name=nic, dst=dst, gw=gw), st.sampled_from(["::/0", "fd00::/64"]), st.none() | v6, names),
)  # fmt: skip


def read(cls: Any, body: object) -> object:
    """What the reading side makes of ``body``: the agent reads requests, the plugin responses."""
    if issubclass(cls, wire._Request):
        return wire_agent.read_request(cls, body)
    return cls.from_json(body)


ids = st.from_regex(r"\A[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,30}\Z")
labels = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z")
ifnames = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-._@"), min_size=1, max_size=15
).filter(lambda n: n not in (".", ".."))
requests = st.builds(
    wire.AddRequest, container_id=ids, if_name=ifnames, netns=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40), pod_namespace=labels,
    pod_name=labels, pod_uid=st.text(st.sampled_from("0123456789abcdef-"), max_size=36), default_ipv4_ippool=st.lists(labels, max_size=3),
    default_ipv6_ippool=st.lists(labels, max_size=3), clean_gateway=st.booleans(), network=ids, cni_version=st.sampled_from(wire.CNI_VERSIONS),
)  # fmt: skip


@given(
    st.lists(ipconfigs, min_size=1, max_size=4),
    st.lists(routes, max_size=3),
    st.none() | st.builds(wire.DNS, nameservers=st.lists(v4, max_size=2)),
)
def test_add_response_round_trip(
    ips: list[wire.IPConfig], rts: list[wire.Route], dns: wire.DNS | None
) -> None:
    response = wire.AddResponse(ips=ips, routes=rts, dns=dns)
    again = wire.AddResponse.from_json(wire_agent.add_response_json(response))
    assert again == response and hash(again) == hash(response)
    for ip in again.ips:
        assert ip.version == (6 if ":" in ip.address else 4)


@given(requests)
def test_requests_round_trip(request: wire.AddRequest) -> None:
    body = request.to_json()
    assert list(body) == ["apiVersion", *(key for _attr, key, _kind in wire.AddRequest.FIELDS)]
    assert wire_agent.read_request(wire.AddRequest, body) == request
    d = wire.DelRequest(
        container_id=request.container_id,
        if_name=request.if_name,
        network=request.network,
        pod_uid=request.pod_uid,
    )
    assert wire_agent.read_request(wire.DelRequest, d.to_json()) == d
    c = wire.CheckRequest(
        container_id=request.container_id,
        if_name=request.if_name,
        netns=request.netns,
        ips=["10.0.0.9/24", "fd00::9/64"],
        network=request.network,
        cni_version=request.cni_version,
    )
    assert wire_agent.read_request(wire.CheckRequest, c.to_json()) == c
    gc = wire.GcRequest(
        network=request.network,
        valid_attachments=[wire.Attachment(container_id=request.container_id, if_name=request.if_name)],
    )
    assert wire_agent.read_request(wire.GcRequest, gc.to_json()) == gc
    s = wire.StatusRequest(network=request.network, default_ipv4_ippool=request.default_ipv4_ippool)
    pairs = [tuple(kv.split("=", 1)) for kv in s.to_query().split("&")]
    from urllib.parse import unquote

    assert wire_agent.read_status_query((k, unquote(v)) for k, v in pairs) == s


@pytest.mark.parametrize(
    ("cls", "body", "message"),
    [
        (wire.AddRequest, {"containerID": "c"}, "AddRequest.ifName: missing"),
        (wire.AddRequest, "x", "AddRequest: expected a JSON object, got a string"),
        (wire.AddResponse, {"ips": []}, "AddResponse.ips: must hold at least one address"),
        (wire.AddResponse, {"ips": [{"address": "10.0.0.1/33", "nic": "e"}]}, "AddResponse.ips[0].address"),
        (
            wire.AddResponse,
            {"ips": [{"address": "10.0.0.1/24", "nic": "e", "version": 6}]},
            "AddResponse.ips[0].version",
        ),
        (
            wire.AddResponse,
            {"ips": [{"address": "10.0.0.1/24", "nic": "e", "gateway": "fd00::1"}]},
            "AddResponse.ips[0].gateway",
        ),
        (
            wire.AddResponse,
            {"ips": [{"address": "10.0.0.1/24", "nic": "e"}], "routes": [{"ifName": "e", "dst": "x"}]},
            "AddResponse.routes[0].dst",
        ),
        (
            wire.AddResponse,
            {
                "ips": [{"address": "10.0.0.1/24", "nic": "e"}],
                "routes": [{"ifName": "e", "dst": "::/0", "gw": "10.0.0.1"}],
            },
            "AddResponse.routes[0].gw",
        ),
        (wire.GcRequest, {"network": "n", "cniVersion": "1.1.0"}, "GcRequest.validAttachments: missing"),
        (
            wire.GcRequest,
            {"network": "n", "cniVersion": "1.1.0", "validAttachments": [{"containerID": "c", "ifname": 1}]},
            "GcRequest.validAttachments[0].ifname",
        ),
        (
            wire.CheckRequest,
            {"containerID": "c", "ifName": "e", "cniVersion": "1", "network": "n", "ips": ["10.0.0.1"]},
            "CheckRequest.ips[0]",
        ),
        (wire.ErrorResponse, {"code": "100", "msg": "m"}, "ErrorResponse.code"),
        (
            wire.DelRequest,
            {"containerID": "c", "ifName": "e", "cniVersion": "1", "network": "n", "apiVersion": "v2"},
            "DelRequest.apiVersion",
        ),
    ],
)
def test_validation_names_the_field(cls: Any, body: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        read(cls, body)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_records_are_immutable_values() -> None:
    a = wire.ErrorResponse(code=100, msg="m")
    with pytest.raises(AttributeError):
        a.code = 3
    assert a == wire.ErrorResponse(code=100, msg="m") != wire.ErrorResponse(code=101, msg="m")
    assert repr(a) == "ErrorResponse(code=100, details='', msg='m')"


ADD = {"containerID": "c1", "ifName": "eth0", "netns": "/run/netns/x", "podNamespace": "default", "podName": "web-0",
       "cniVersion": "1.0.0", "network": "podnet"}  # fmt: skip
GC = {
    "network": "podnet",
    "cniVersion": "1.1.0",
    "validAttachments": [{"containerID": "c1", "ifname": "eth0"}],
}


@pytest.mark.parametrize(
    ("cls", "body", "message"),
    [
        (wire.AddRequest, {**ADD, "containerID": "c\x001"}, "AddRequest.containerID: 'c\\x001' must start with a letter"),
        (wire.AddRequest, {**ADD, "containerID": "c\n1"}, "AddRequest.containerID:"),
        (wire.AddRequest, {**ADD, "containerID": "-c"}, "AddRequest.containerID:"),
        (wire.AddRequest, {**ADD, "containerID": "c" * 100_000}, "AddRequest.containerID: 'cccc"),
        (wire.AddRequest, {**ADD, "ifName": "e" * 1000}, "AddRequest.ifName: 'eeee"),
        (wire.AddRequest, {**ADD, "ifName": "../x"}, "AddRequest.ifName: '../x' contains '/'"),
        (wire.AddRequest, {**ADD, "ifName": ".."}, "AddRequest.ifName: '..' is not allowed"),
        (wire.AddRequest, {**ADD, "ifName": "eth 0"}, "AddRequest.ifName:"),
        (wire.AddRequest, {**ADD, "ifName": "eth\x000"}, "AddRequest.ifName:"),
        (wire.AddRequest, {**ADD, "cniVersion": "garbage"}, "AddRequest.cniVersion: 'garbage' is not one of 0.3.0"),
        (wire.AddRequest, {**ADD, "network": "pod net"}, "AddRequest.network:"),
        (wire.AddRequest, {**ADD, "podNamespace": "Default"}, "AddRequest.podNamespace:"),
        (wire.AddRequest, {**ADD, "podName": "web\n0"}, "AddRequest.podName:"),
        (wire.AddRequest, {**ADD, "podUID": "u" * 129}, "AddRequest.podUID:"),
        (wire.AddRequest, {**ADD, "netns": "/run/netns/x\x00"}, "AddRequest.netns:"),
        (wire.AddRequest, {**ADD, "netns": "/" * 4097}, "AddRequest.netns:"),
        (wire.AddRequest, {**ADD, "defaultIPv4IPPool": ["ok", "Bad Pool"]}, "AddRequest.defaultIPv4IPPool[1]:"),
        (wire.DelRequest, {**ADD, "containerID": "c/1"}, "DelRequest.containerID:"),
        (wire.DelRequest, {**ADD, "ifName": "x" * 16}, "DelRequest.ifName:"),
        (wire.DelRequest, {**ADD, "cniVersion": "2.0.0"}, "DelRequest.cniVersion:"),
        (wire.CheckRequest, {**ADD, "ips": [], "ifName": "a:b"}, "CheckRequest.ifName:"),
        (wire.GcRequest, {**GC, "network": "a\nb"}, "GcRequest.network:"),
        (wire.GcRequest, {**GC, "cniVersion": "x"}, "GcRequest.cniVersion:"),
        (wire.GcRequest, {**GC, "validAttachments": [{"containerID": "c 1", "ifname": "eth0"}]}, "GcRequest.validAttachments[0].containerID:"),
        (wire.GcRequest, {**GC, "validAttachments": [{"containerID": "c1", "ifname": "a/b"}]}, "GcRequest.validAttachments[0].ifname:"),
    ],
)  # fmt: skip
def test_request_fields_follow_the_plugins_rules(cls: Any, body: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        read(cls, body)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text and len(text) < 300, text


def test_status_query_fields_follow_the_same_rules() -> None:
    with pytest.raises(ValueError, match=r"^StatusRequest.cniVersion: 'x'"):
        wire_agent.read_status_query([("cniVersion", "x")])
    with pytest.raises(ValueError, match=r"^StatusRequest.defaultIPv4IPPool\[0\]"):
        wire_agent.read_status_query([("ipv4Pool", "a b")])
    assert wire_agent.read_status_query([("network", "podnet")]).network == "podnet"


def test_the_longest_valid_identifiers_pass() -> None:
    body = {
        **ADD,
        "containerID": "c" * wire_rules.MAX_ID_LENGTH,
        "ifName": "e" * 15,
        "podName": ".".join(["a" * 63] * 3) + ".b",
    }
    assert wire_agent.read_request(wire.AddRequest, body).container_id == "c" * wire_rules.MAX_ID_LENGTH
    with pytest.raises(ValueError, match="longer than 256"):
        wire_agent.read_request(
            wire.AddRequest, {**body, "containerID": "c" * (wire_rules.MAX_ID_LENGTH + 1)}
        )


def test_the_agents_answers_read_back_on_the_plugins_side() -> None:
    err = wire.ErrorResponse(code=100, msg="no IP available", details="pool p: exhausted")
    assert wire.ErrorResponse.from_json(wire_agent.error_response_json(err)) == err
    assert wire_agent.error_response_json(wire.ErrorResponse(code=7, msg="m")) == {
        "apiVersion": "v1",
        "code": 7,
        "msg": "m",
    }
    gc = wire_agent.GcResult(released=["10.0.0.7", "fd00::7"])
    assert wire_agent.gc_result_json(gc) == {"apiVersion": "v1", "released": ["10.0.0.7", "fd00::7"]}
    assert wire_agent.read_gc_result(wire_agent.gc_result_json(gc)) == gc
