"""The v2beta1 object model: parsing, status string formats, selectors and endpoints."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.errors import Invalid
from ipam.model import (
    ANNOTATION_CONTAINER_ID,
    Endpoint,
    IPPool,
    NicAllocation,
    PoolIPAllocation,
    PreAllocation,
    ReservedIP,
    Route,
    Subnet,
    decode_allocated_ips,
    decode_controlled_pools,
    encode_allocated_ips,
    encode_controlled_pools,
    reserved_set,
)
from ipam.ranges import IntervalSet, ip_to_int
from ipam.selectors import LabelSelector, SelectorError

API = "spiderpool.spidernet.io/v2beta1"


def pool_obj(name: str = "p1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "SpiderIPPool", "metadata": {"name": name}, "spec": spec}


# ---------------------------------------------------------------------------------------------- IPPool


def test_pool_from_obj_full() -> None:
    obj = pool_obj(
        "seed",
        subnet="10.244.0.0/16",
        ips=["10.244.100.0-10.244.200.1"],
        excludeIPs=["10.244.100.0", "10.244.200.1"],
        gateway="10.244.0.1",
        routes=[{"dst": "172.16.0.0/12", "gw": "10.244.0.2"}],
        podAffinity={"matchLabels": {"app": "web"}},
        namespaceName=["default"],
        nodeName=["node1"],
        multusName=["kube-system/macvlan"],
        default=True,
    )
    obj["metadata"].update(
        resourceVersion="42",
        uid="u-1",
        labels={"a": "b"},
        deletionTimestamp="2024-01-01T00:00:00Z",
    )
    pool = IPPool.from_obj(obj)
    assert pool.name == "seed" and pool.resource_version == "42" and pool.uid == "u-1"
    assert pool.ip_version == 4 and pool.prefix_len == 16
    assert pool.ips.size == 25602 and pool.usable.size == 25600
    assert pool.gateway == "10.244.0.1"
    assert pool.routes == (Route("172.16.0.0/12", "10.244.0.2"),)
    assert pool.pod_affinity is not None and pool.pod_affinity.matches({"app": "web"})
    assert pool.namespace_name == ("default",) and pool.node_name == ("node1",)
    assert pool.multus_name == ("kube-system/macvlan",)
    assert pool.default and not pool.disable and pool.terminating
    assert pool.labels == {"a": "b"}
    assert pool.cidr_label == "10-244-0-0-16"


def test_pool_ipv6_and_defaults() -> None:
    pool = IPPool.from_obj(pool_obj(subnet="fd00:10::/64", ips=["fd00:10::1-fd00:10::ffff:ffff:ffff:ffff"]))
    assert pool.ip_version == 6 and pool.prefix_len == 64
    assert pool.usable.size == 2**64 - 1
    assert not pool.default and not pool.disable and not pool.terminating
    assert pool.gateway is None and pool.routes == () and pool.pod_affinity is None


def test_pool_empty_ips_means_nothing_usable() -> None:
    assert IPPool.from_obj(pool_obj(subnet="10.0.0.0/24")).usable.size == 0


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({}, "spec.subnet", "is required"),
        ({"subnet": "10.0.0.0"}, "spec.subnet", "missing"),
        ({"subnet": 5}, "spec.subnet", "not a string"),
        ({"subnet": "10.0.0.0/24", "ipVersion": 6}, "spec.ipVersion", "does not match"),
        ({"subnet": "10.0.0.0/24", "ipVersion": "4"}, "spec.ipVersion", "not 4 or 6"),
        ({"subnet": "10.0.0.0/24", "ipVersion": True}, "spec.ipVersion", "not 4 or 6"),
        ({"subnet": "10.0.0.0/24", "ips": ["10.0.0.1", "fd00::1"]}, "spec.ips[1]", "is not IPv4"),
        ({"subnet": "10.0.0.0/24", "ips": "10.0.0.1"}, "spec.ips", "must be a list"),
        (
            {"subnet": "10.0.0.0/24", "excludeIPs": ["10.0.0.9-10.0.0.1"]},
            "spec.excludeIPs[0]",
            "starts after",
        ),
        ({"subnet": "10.0.0.0/24", "gateway": "fd00::1"}, "spec.gateway", "not an IPv4"),
        (
            {"subnet": "10.0.0.0/24", "routes": [{"dst": "fd00::/64", "gw": "10.0.0.1"}]},
            "spec.routes[0].dst",
            "IPv4",
        ),
        ({"subnet": "10.0.0.0/24", "routes": [{"dst": "10.1.0.0/16"}]}, "spec.routes[0].gw", "is required"),
        ({"subnet": "10.0.0.0/24", "default": "yes"}, "spec.default", "not a boolean"),
        ({"subnet": "10.0.0.0/24", "nodeName": "n1"}, "spec.nodeName", "list of strings"),
        (
            {"subnet": "10.0.0.0/24", "podAffinity": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.podAffinity.matchExpressions[0].values",
            "non-empty",
        ),
    ],
)
def test_pool_parse_errors_name_the_field(spec: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(Invalid) as err:
        IPPool.from_obj(pool_obj("bad", **spec))
    assert err.value.field == field
    assert reason in err.value.reason
    assert str(err.value).startswith(f'SpiderIPPool "bad": {field}: ')
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- Subnet, ReservedIP


def test_subnet_with_controlled_pools() -> None:
    controlled = {
        "auto4-nginx-eth0-9a2b3": {
            "ips": ["10.6.168.101-10.6.168.103"],
            "application": "apps_v1_Deployment_default_nginx",
        },
        "manual-pool": {"ips": ["10.6.168.120-10.6.168.125"]},
    }
    obj: dict[str, Any] = {
        "kind": "SpiderSubnet",
        "metadata": {"name": "s1", "uid": "su"},
        "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.168.101-10.6.168.200"], "gateway": "10.6.0.1"},
        "status": {"controlledIPPools": json.dumps(controlled)},
    }
    s = Subnet.from_obj(obj)
    assert s.ip_version == 4 and s.usable.size == 100 and s.uid == "su" and s.gateway == "10.6.0.1"
    assert s.controlled_pools == {
        "auto4-nginx-eth0-9a2b3": PreAllocation(
            ("10.6.168.101-10.6.168.103",), "apps_v1_Deployment_default_nginx"
        ),
        "manual-pool": PreAllocation(("10.6.168.120-10.6.168.125",), None),
    }
    assert decode_controlled_pools(encode_controlled_pools(s.controlled_pools)) == s.controlled_pools
    assert encode_controlled_pools({}) is None
    obj["status"]["controlledIPPools"] = "{oops"
    with pytest.raises(Invalid, match=r'SpiderSubnet "s1": status.controlledIPPools: not valid JSON'):
        Subnet.from_obj(obj)


def test_reserved_ip_family_from_first_ip_and_reserved_set() -> None:
    r4 = ReservedIP.from_obj(
        {"kind": "SpiderReservedIP", "metadata": {"name": "r4"}, "spec": {"ips": ["10.0.0.5"]}}
    )
    r6 = ReservedIP.from_obj(
        {"kind": "SpiderReservedIP", "metadata": {"name": "r6"}, "spec": {"ips": ["fd00::5"]}}
    )
    r4b = ReservedIP.from_obj(
        {"kind": "SpiderReservedIP", "metadata": {"name": "r4b"}, "spec": {"ips": ["10.0.0.6-10.0.0.9"]}}
    )
    gone = ReservedIP.from_obj(
        {
            "kind": "SpiderReservedIP",
            "metadata": {"name": "gone", "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"ips": ["10.0.0.100"]},
        }
    )
    assert (r4.ip_version, r6.ip_version) == (4, 6)
    assert reserved_set([r4, r6, r4b, gone], 4).to_strings(4) == ["10.0.0.5-10.0.0.9"]
    assert reserved_set([r4, r6, r4b, gone], 6).to_strings(6) == ["fd00::5"]
    with pytest.raises(Invalid) as err:
        ReservedIP.from_obj(
            {"kind": "SpiderReservedIP", "metadata": {"name": "m"}, "spec": {"ips": ["10.0.0.1", "fd00::1"]}}
        )
    assert err.value.field == "spec.ips[1]"


# ---------------------------------------------------------------------------------------------- status strings


def test_allocated_ips_format_is_spiderpools() -> None:
    records = {
        "172.18.40.11": PoolIPAllocation("default/app-2", "u2"),
        "172.18.40.10": PoolIPAllocation("default/app-1", "u1"),
    }
    text = encode_allocated_ips(records)
    assert text == (
        '{"172.18.40.10":{"pod":"default/app-1","podUid":"u1"},'
        '"172.18.40.11":{"pod":"default/app-2","podUid":"u2"}}'
    )
    assert decode_allocated_ips(text) == records
    assert encode_allocated_ips({}) is None
    assert decode_allocated_ips(None) == {} and decode_allocated_ips("") == {}
    for bad in (
        "[]",
        "{",
        '{"10.0.0.1": {"pod": 1, "podUid": "u"}}',
        '{"nope": {"pod": "a/b", "podUid": "u"}}',
    ):
        with pytest.raises(ValueError):
            decode_allocated_ips(bad)


@given(
    st.dictionaries(
        st.integers(0, 2**32 - 1).map(lambda i: f"{i >> 24}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"),
        st.builds(PoolIPAllocation, st.text(max_size=12), st.text(max_size=12)),
        max_size=8,
    )
)
def test_allocated_ips_round_trip(records: dict[str, PoolIPAllocation]) -> None:
    assert decode_allocated_ips(encode_allocated_ips(records)) == records


# ---------------------------------------------------------------------------------------------- selectors


def test_selector_semantics() -> None:
    sel = LabelSelector.parse(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        },
        "spec.podAffinity",
    )
    good = {"app": "web", "tier": "a", "team": "x"}
    assert sel.matches(good)
    assert sel.matches({**good, "env": "dev"})
    assert not sel.matches({**good, "env": "prod"})
    assert not sel.matches({**good, "legacy": "1"})
    assert not sel.matches({**good, "tier": "c"})
    assert not sel.matches({"app": "web", "tier": "a"})
    assert not sel.matches({**good, "app": "db"})
    assert LabelSelector.parse(sel.to_obj(), "f") == sel
    empty = LabelSelector.parse({}, "f")
    assert empty.is_empty and empty.matches({}) and empty.matches({"any": "thing"})


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ([], "sel"),
        ({"matchLabels": ["a"]}, "sel.matchLabels"),
        ({"matchLabels": {"a": 1}}, "sel.matchLabels.a"),
        ({"matchExpressions": [{"key": "a", "operator": "Has"}]}, "sel.matchExpressions[0].operator"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "sel.matchExpressions[0].key"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "sel.matchExpressions[0].values",
        ),
        ({"matchLabel": {}}, "sel.matchLabel"),
    ],
)
def test_selector_errors_name_the_field(obj: object, field: str) -> None:
    with pytest.raises(SelectorError) as err:
        LabelSelector.parse(obj, "sel")
    assert err.value.field == field


# ---------------------------------------------------------------------------------------------- endpoint

ENDPOINT_OBJ: dict[str, Any] = {
    "apiVersion": API,
    "kind": "SpiderEndpoint",
    "metadata": {
        "name": "web-0",
        "namespace": "default",
        "resourceVersion": "7",
        "annotations": {ANNOTATION_CONTAINER_ID: "c0ffee", "other": "x"},
        "finalizers": ["spiderpool.spidernet.io"],
    },
    "status": {
        "current": {
            "uid": "e7b50a38",
            "node": "dc-test02",
            "ips": [
                {
                    "interface": "eth0",
                    "ipv4": "172.31.199.193/20",
                    "ipv4Pool": "worker-172",
                    "ipv4Gateway": "172.31.207.253",
                    "ipv6": "fd00::5/64",
                    "ipv6Pool": "worker-v6",
                    "cleanGateway": False,
                    "routes": [{"dst": "10.0.0.0/8", "gw": "172.31.207.254"}],
                    "vlan": 0,
                }
            ],
        },
        "ownerControllerType": "StatefulSet",
        "ownerControllerName": "web",
    },
}


def test_endpoint_round_trip() -> None:
    ep = Endpoint.from_obj(ENDPOINT_OBJ)
    assert (
        ep.namespace == "default" and ep.name == "web-0" and ep.uid == "e7b50a38" and ep.node == "dc-test02"
    )
    assert ep.container_id == "c0ffee" and ep.annotations == {"other": "x"}
    assert ep.owner_controller_type == "StatefulSet" and ep.owner_controller_name == "web"
    nic = ep.nic("eth0")
    assert nic == NicAllocation(
        interface="eth0",
        ipv4="172.31.199.193/20",
        ipv6="fd00::5/64",
        ipv4_pool="worker-172",
        ipv6_pool="worker-v6",
        ipv4_gateway="172.31.207.253",
        routes=(Route("10.0.0.0/8", "172.31.207.254"),),
    )
    assert ep.nic("net1") is None
    assert ep.to_obj() == ENDPOINT_OBJ
    assert Endpoint.from_obj(ep.to_obj()) == ep


def test_endpoint_errors() -> None:
    bad = json.loads(json.dumps(ENDPOINT_OBJ))
    bad["status"]["current"]["ips"][0]["vlan"] = 5000
    with pytest.raises(Invalid) as err:
        Endpoint.from_obj(bad)
    assert str(err.value).startswith('SpiderEndpoint "default/web-0": status.current.ips[0].vlan:')


def test_interval_set_in_model_is_exact() -> None:
    pool = IPPool.from_obj(
        pool_obj(subnet="10.0.0.0/8", ips=["10.0.0.0-10.255.255.255"], excludeIPs=["10.0.0.0"])
    )
    assert pool.usable == IntervalSet(((ip_to_int("10.0.0.1", 4), ip_to_int("10.255.255.255", 4)),))
