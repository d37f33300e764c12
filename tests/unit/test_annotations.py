"""Parsing of the ipam.spidernet.io/* pod and namespace annotations."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam import annotations as an
from ipam.annotations import AnnotationError, AnnotationRoute, IPNumber, NicPools, SubnetChoice
from ipam.errors import Invalid

POD = "default/web-0"


def test_ippool_both_families() -> None:
    got = an.parse_ippool('{"ipv4":["p1","p2"],"ipv6":["p6"]}', pod=POD)
    assert got == an.IPPoolAnnotation(ipv4=("p1", "p2"), ipv6=("p6",))


def test_ippool_omitted_family_is_empty() -> None:
    assert an.parse_ippool('{"ipv4":["p1"]}', pod=POD).ipv6 == ()
    assert an.parse_ippool('{"ipv4":["p1"],"ipv6":null}', pod=POD).ipv6 == ()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "invalid JSON"),
        ('["p1"]', "expected a JSON object"),
        ('{"ipv4":"p1"}', "ipv4: expected a list of names"),
        ('{"ipv4":[1]}', "ipv4: expected a name, got 1"),
        ('{"ipv4":[""]}', "ipv4: empty name"),
    ],
)
def test_ippool_errors_name_pod_and_key(text: str, fragment: str) -> None:
    with pytest.raises(AnnotationError) as info:
        an.parse_ippool(text, pod=POD)
    message = str(info.value)
    assert message.startswith('Pod "default/web-0": metadata.annotations[ipam.spidernet.io/ippool]: ')
    assert fragment in message
    assert "\n" not in message
    assert isinstance(info.value, Invalid)


def test_ippools_named() -> None:
    text = json.dumps(
        [
            {"interface": "eth0", "ipv4": ["p1"], "ipv6": ["p6"], "cleangateway": True},
            {"interface": "net1", "ipv4": ["p2"], "cleangateway": False},
        ]
    )
    got = an.parse_ippools(text, pod=POD, nic="net1")
    assert got.named
    assert got.items == (
        NicPools("eth0", ("p1",), ("p6",), True),
        NicPools("net1", ("p2",), (), False),
    )


def test_ippools_unnamed_by_index() -> None:
    got = an.parse_ippools('[{"ipv4":["a"]},{"ipv4":["b"]}]', pod=POD, nic="eth0")
    assert not got.named
    assert [i.ipv4 for i in got.items] == [("a",), ("b",)]
    assert got.items[0].clean_gateway is False


@pytest.mark.parametrize(
    ("text", "nic", "fragment"),
    [
        ("[]", "eth0", "at least one item"),
        ('{"interface":"eth0"}', "eth0", "expected a JSON list"),
        ('[{"interface":"eth0","ipv4":["a"]},{"ipv4":["b"]}]', "eth0", "[1].interface: either every item"),
        ('[{"interface":"eth0"},{"interface":"eth0"}]', "eth0", "[1].interface: duplicate interface eth0"),
        (
            '[{"interface":"eth0"},{"interface":"net1"}]',
            "net2",
            "interface net2 of this CNI call is not listed",
        ),
        ('[{"interface":"eth0","cleangateway":"yes"}]', "eth0", "[0].cleangateway: expected true or false"),
        ('[{"interface":5}]', "eth0", "[0].interface: expected a string"),
        ("[7]", "eth0", "[0]: expected a JSON object"),
    ],
)
def test_ippools_errors(text: str, nic: str, fragment: str) -> None:
    with pytest.raises(AnnotationError) as info:
        an.parse_ippools(text, pod=POD, nic=nic)
    assert "metadata.annotations[ipam.spidernet.io/ippools]" in str(info.value)
    assert fragment in str(info.value)


def test_subnet_single_defaults_to_eth0_and_first_name() -> None:
    got = an.parse_subnet('{"ipv4":["s1","s2"],"ipv6":["s6"]}', pod=POD)
    assert got.items == (SubnetChoice("eth0", "s1", "s6"),)
    assert got.for_nic("eth0") == SubnetChoice("eth0", "s1", "s6")
    assert got.for_nic("net1") is None
    assert got.key == an.ANNO_SUBNET


def test_subnets_multi() -> None:
    got = an.parse_subnets('[{"interface":"eth0","ipv4":["s1"]},{"interface":"net1","ipv6":["s2"]}]', pod=POD)
    assert got.items == (SubnetChoice("eth0", "s1", None), SubnetChoice("net1", None, "s2"))


@pytest.mark.parametrize(
    ("parse", "text", "fragment"),
    [
        (an.parse_subnet, "{}", "name at least one SpiderSubnet"),
        (an.parse_subnet, '{"ipv4":["s*"]}', "wildcards are not allowed"),
        (
            an.parse_subnets,
            '[{"interface":"eth0","ipv4":["s"]},{"interface":"eth0","ipv4":["t"]}]',
            "duplicate",
        ),
        (
            an.parse_subnets,
            '[{"interface":"eth0","ipv4":["s"]},{"interface":"net1","ipv4":["s"]}]',
            "[1].ipv4: SpiderSubnet s is used by two interfaces",
        ),
        (an.parse_subnets, '[{"ipv4":["s"]}]', "[0].interface: every item must name its interface"),
        (an.parse_subnets, '[{"interface":"eth0"}]', "[0].ipv4/ipv6: name at least one"),
    ],
)
def test_subnet_errors(parse: object, text: str, fragment: str) -> None:
    assert callable(parse)
    with pytest.raises(AnnotationError) as info:
        parse(text, pod=POD)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", IPNumber(False, 2)),
        ("+2", IPNumber(True, 2)),
        ("0", IPNumber(False, 0)),
        ("+0", IPNumber(True, 0)),
    ],
)
def test_ip_number(text: str, expected: IPNumber) -> None:
    assert an.parse_ip_number(text, pod=POD) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["", "-1", "++1", "1+", "+", " 1", "1.5", "٣", "1_000", "+-1", "9" * 20])
def test_ip_number_rejects(text: str) -> None:
    with pytest.raises(AnnotationError, match=r"ippool-ip-number"):
        an.parse_ip_number(text, pod=POD)


def test_ip_number_desired() -> None:
    assert IPNumber(True, 2).desired(3) == 5
    assert IPNumber(False, 2).desired(3) == 2


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("T", True), ("1", True), ("False", False), ("0", False)]
)
def test_reclaim(text: str, value: bool) -> None:
    assert an.parse_reclaim(text, pod=POD) is value


def test_reclaim_rejects() -> None:
    with pytest.raises(AnnotationError, match=r"ippool-reclaim\]: expected \"true\" or \"false\""):
        an.parse_reclaim("yes", pod=POD)


def test_routes() -> None:
    got = an.parse_routes(
        '[{"dst":"10.0.0.0/16","gw":"192.168.1.1"},{"dst":"fd00::/64","gw":"fd01::1"}]', pod=POD
    )
    assert got == (
        AnnotationRoute("10.0.0.0/16", "192.168.1.1", 4),
        AnnotationRoute("fd00::/64", "fd01::1", 6),
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            '[{"dst":"10.0.0.5/16","gw":"192.168.1.1"}]',
            "[0].dst: 10.0.0.5/16 has host bits set (did you mean 10.0.0.0/16?)",
        ),
        ('[{"dst":"10.0.0.0","gw":"192.168.1.1"}]', '[0].dst: "10.0.0.0" is not a CIDR'),
        ('[{"dst":"10.0.0.0/16","gw":"x"}]', '[0].gw: "x" is not an IP address'),
        ('[{"dst":"10.0.0.0/16","gw":"fd00::1"}]', "is IPv6 but dst 10.0.0.0/16 is IPv4"),
        ('[{"dst":"10.0.0.0/16"}]', '[0].gw: "" is not an IP address'),
        ('{"dst":"10.0.0.0/16"}', "expected a JSON list"),
    ],
)
def test_routes_errors(text: str, fragment: str) -> None:
    with pytest.raises(AnnotationError) as info:
        an.parse_routes(text, pod=POD)
    assert fragment in str(info.value)


def test_namespace_defaults() -> None:
    got = an.parse_namespace_defaults("team", {an.ANNO_NS_DEFAULT_V4: '["a","b*"]'})
    assert got == an.NamespaceDefaults(ipv4=("a", "b*"), ipv6=())
    assert not got.empty
    assert an.parse_namespace_defaults("team", {}).empty


def test_namespace_defaults_error_names_namespace() -> None:
    with pytest.raises(AnnotationError) as info:
        an.parse_namespace_defaults("team", {an.ANNO_NS_DEFAULT_V6: "pool6"})
    assert str(info.value).startswith(
        'Namespace "team": metadata.annotations[ipam.spidernet.io/default-ipv6-ippool]: invalid JSON'
    )


def test_pod_annotations_all() -> None:
    got = an.parse_pod_annotations(
        POD,
        {
            an.ANNO_IPPOOL: '{"ipv4":["a"]}',
            an.ANNO_SUBNET: '{"ipv4":["s"]}',
            an.ANNO_SUBNETS: '[{"interface":"net1","ipv4":["t"]}]',
            an.ANNO_IP_NUMBER: "+3",
            an.ANNO_RECLAIM: "false",
            an.ANNO_ROUTES: "[]",
            "other": "x",
        },
    )
    assert got.ippool == an.IPPoolAnnotation(("a",), ())
    assert got.ippools is None
    assert got.subnets is not None and got.subnets.key == an.ANNO_SUBNETS  # subnets wins over subnet
    assert got.ip_number == IPNumber(True, 3)
    assert got.reclaim is False
    assert got.routes == ()


def test_pod_annotations_defaults() -> None:
    got = an.parse_pod_annotations(POD, {})
    assert got == an.PodIPAMAnnotations(None, None, None, None, True, ())


_PARSERS = [
    an.parse_ippool,
    an.parse_subnet,
    an.parse_subnets,
    an.parse_ip_number,
    an.parse_reclaim,
    an.parse_routes,
]

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_keyed = st.fixed_dictionaries(
    {},
    optional={
        "interface": _json_values,
        "ipv4": _json_values | st.lists(st.text(max_size=6), max_size=3),
        "ipv6": _json_values | st.lists(st.text(max_size=6), max_size=3),
        "cleangateway": _json_values,
        "dst": st.text(max_size=20) | _json_values,
        "gw": st.text(max_size=20) | _json_values,
    },
)
_texts = st.text(max_size=60) | _json_values.map(json.dumps) | st.lists(_keyed, max_size=3).map(json.dumps)


@settings(max_examples=300, deadline=None)
@given(text=_texts | _keyed.map(json.dumps))
def test_arbitrary_text_raises_only_annotation_error(text: str) -> None:
    for parse in _PARSERS:
        try:
            parse(text, pod=POD)
        except AnnotationError as err:
            assert "\n" not in str(err)
    with contextlib.suppress(AnnotationError):
        an.parse_ippools(text, pod=POD, nic="eth0")
    for key in (an.ANNO_NS_DEFAULT_V4, an.ANNO_NS_DEFAULT_V6):
        with contextlib.suppress(AnnotationError):
            an.parse_namespace_defaults("ns", {key: text})


def test_deep_nesting_is_a_clean_error() -> None:
    with pytest.raises(AnnotationError, match="invalid JSON"):
        an.parse_ippool("[" * 100_000, pod=POD)
