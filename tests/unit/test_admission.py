"""Admission: Spiderpool's webhook mutation and validation rules, one rejected write at a time."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from ipam.admission import admit, pool_status, validate_metadata
from ipam.errors import Invalid
from ipam.model import LABEL_IPPOOL_CIDR, LABEL_OWNER_SUBNET, LABEL_SUBNET_CIDR, IPPool
from ipam.records import Obj

API = "spiderpool.spidernet.io/v2beta1"


def sp(name: str = "p1", **spec: Any) -> Obj:
    return {"apiVersion": API, "kind": "SpiderIPPool", "metadata": {"name": name}, "spec": spec}


def ss(name: str = "s1", **spec: Any) -> Obj:
    return {
        "apiVersion": API,
        "kind": "SpiderSubnet",
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "spec": spec,
    }


def sr(name: str = "r1", **spec: Any) -> Obj:
    return {"apiVersion": API, "kind": "SpiderReservedIP", "metadata": {"name": name}, "spec": spec}


SEED = sp("seed", subnet="10.244.0.0/16", ips=["10.244.100.0-10.244.200.1"], gateway="10.244.0.1")


def rejected(obj: Obj, **kw: Any) -> Invalid:
    """Admit ``obj`` expecting a rejection; check the error is one line and nothing was changed."""
    before = copy.deepcopy(obj)
    kw.setdefault("old", None)
    kw.setdefault("existing", [])
    with pytest.raises(Invalid) as err:
        admit(obj, **kw)
    assert obj == before
    line = str(err.value)
    assert "\n" not in line and line.startswith(f'{obj["kind"]} "')
    return err.value


# ---------------------------------------------------------------------------------------------- mutation


def test_pool_mutation() -> None:
    obj = sp(
        "p1",
        subnet="10.0.0.0/16",
        ips=["10.0.0.20-10.0.0.30", "10.0.0.10", "10.0.0.11-10.0.0.19"],
        excludeIPs=["10.0.0.25", "10.0.0.24"],
    )
    out = admit(obj, old=None, existing=[])
    assert out["spec"]["ipVersion"] == 4
    assert out["spec"]["ips"] == ["10.0.0.10-10.0.0.30"]
    assert out["spec"]["excludeIPs"] == ["10.0.0.24-10.0.0.25"]
    assert out["spec"]["default"] is False and out["spec"]["disable"] is False
    assert out["metadata"]["labels"][LABEL_IPPOOL_CIDR] == "10-0-0-0-16"
    assert obj["spec"]["ips"][0] == "10.0.0.20-10.0.0.30"  # input untouched
    assert admit(out, old=None, existing=[]) == out


def test_pool_mutation_ipv6_and_explicit_values_kept() -> None:
    out = admit(
        sp("p6", subnet="fd00:10::/64", ips=["FD00:10::0A", "fd00:10::b"], default=True, disable=True),
        old=None,
        existing=[],
    )
    assert out["spec"]["ipVersion"] == 6
    assert out["spec"]["ips"] == ["fd00:10::a-fd00:10::b"]
    assert out["spec"]["default"] is True and out["spec"]["disable"] is True
    assert out["metadata"]["labels"][LABEL_IPPOOL_CIDR] == "fd00-10---64"


def test_seed_pool_status() -> None:
    out = admit(SEED, old=None, existing=[])
    assert pool_status(IPPool.from_obj(out), 3) == {"totalIPCount": 25602, "allocatedIPCount": 3}
    huge = admit(
        sp("big", subnet="fd00::/48", ips=["fd00::-fd00:0:0:ffff:ffff:ffff:ffff:ffff"]), old=None, existing=[]
    )
    assert pool_status(IPPool.from_obj(huge), 0)["totalIPCount"] == 9223372036854775807


def test_pool_inherits_from_subnet_of_same_cidr() -> None:
    subnet = admit(
        ss(
            "s1",
            subnet="10.6.0.0/16",
            ips=["10.6.168.100-10.6.168.200"],
            gateway="10.6.0.1",
            routes=[{"dst": "172.16.0.0/12", "gw": "10.6.0.2"}],
        ),
        old=None,
        existing=[],
    )
    out = admit(sp("p1", subnet="10.6.0.0/16", ips=["10.6.168.101"]), old=None, existing=[], subnets=[subnet])
    assert out["spec"]["gateway"] == "10.6.0.1"
    assert out["spec"]["routes"] == [{"dst": "172.16.0.0/12", "gw": "10.6.0.2"}]
    assert out["metadata"]["labels"][LABEL_OWNER_SUBNET] == "s1"
    (ref,) = out["metadata"]["ownerReferences"]
    assert (
        ref["kind"] == "SpiderSubnet" and ref["name"] == "s1" and ref["uid"] == "uid-s1" and ref["controller"]
    )
    assert admit(out, old=None, existing=[], subnets=[subnet]) == out
    # an explicit empty routes list is kept, an explicit gateway wins
    own = admit(
        sp("p2", subnet="10.6.0.0/16", ips=["10.6.168.102"], gateway="10.6.0.3", routes=[]),
        old=None,
        existing=[],
        subnets=[subnet],
    )
    assert own["spec"]["gateway"] == "10.6.0.3" and own["spec"]["routes"] == []
    err = rejected(sp("p3", subnet="10.6.0.0/16", ips=["10.6.1.1"]), subnets=[subnet])
    assert err.field == "spec.ips" and "SpiderSubnet s1" in err.reason


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({}, "spec.subnet", "is required"),
        ({"subnet": "10.0.5.0/16"}, "spec.subnet", "10.0.5.0/16 is not a canonical CIDR (use 10.0.0.0/16)"),
        ({"subnet": "fd00::1/64"}, "spec.subnet", "not a canonical CIDR"),
        ({"subnet": "10.0.0.0/16", "ipVersion": 6}, "spec.ipVersion", "does not match"),
        (
            {"subnet": "10.0.0.0/16", "ips": ["10.1.0.5"]},
            "spec.ips",
            "10.1.0.5 is outside subnet 10.0.0.0/16",
        ),
        (
            {"subnet": "10.0.0.0/16", "ips": ["10.0.255.250-10.1.0.5"]},
            "spec.ips",
            "10.1.0.0 is outside subnet",
        ),
        ({"subnet": "10.0.0.0/16", "excludeIPs": ["10.2.0.1"]}, "spec.excludeIPs", "outside subnet"),
        ({"subnet": "10.0.0.0/16", "ips": ["10.0.0.1", "fd00::1"]}, "spec.ips[1]", '"fd00::1" is not IPv4'),
        ({"subnet": "10.0.0.0/16", "gateway": "10.9.0.1"}, "spec.gateway", "outside subnet"),
        (
            {"subnet": "10.0.0.0/16", "ips": ["10.0.0.1-10.0.0.9"], "gateway": "10.0.0.1"},
            "spec.gateway",
            "excludeIPs",
        ),
        (
            {"subnet": "10.0.0.0/16", "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]},
            "spec.routes[0].dst",
            "please specify spec.gateway",
        ),
        (
            {"subnet": "fd00::/64", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
            "spec.routes[0].dst",
            "please specify spec.gateway",
        ),
        (
            {
                "subnet": "10.0.0.0/16",
                "routes": [
                    {"dst": "172.16.0.0/12", "gw": "10.0.0.1"},
                    {"dst": "172.16.0.0/12", "gw": "10.0.0.2"},
                ],
            },
            "spec.routes[1].dst",
            "duplicates spec.routes[0].dst",
        ),
        (
            {"subnet": "10.0.0.0/16", "routes": [{"dst": "172.16.0.0/12", "gw": "10.9.0.1"}]},
            "spec.routes[0].gw",
            "outside",
        ),
        (
            {"subnet": "10.0.0.0/16", "routes": [{"dst": "fd00::/64", "gw": "10.0.0.1"}]},
            "spec.routes[0].dst",
            "IPv4",
        ),
        ({"subnet": "10.0.0.0/16", "podAffinity": {}}, "spec.podAffinity", "empty podAffinity is invalid"),
    ],
)
def test_pool_rules(spec: dict[str, Any], field: str, reason: str) -> None:
    err = rejected(sp("bad", **spec))
    assert err.field == field and reason in err.reason


def test_gateway_inside_ips_is_fine_when_excluded() -> None:
    out = admit(
        sp("p", subnet="10.0.0.0/16", ips=["10.0.0.1-10.0.0.9"], excludeIPs=["10.0.0.1"], gateway="10.0.0.1"),
        old=None,
        existing=[],
    )
    assert out["spec"]["gateway"] == "10.0.0.1"


@pytest.mark.parametrize("name", ["", "Upper", "under_score", "-lead", "trail-", "a" * 254, "a..b"])
def test_bad_names(name: str) -> None:
    err = rejected(sp(name, subnet="10.0.0.0/16"))
    assert err.field == "metadata.name"


def test_good_names() -> None:
    for name in ("a", "pool-1", "v4.pool.1", "a" * 253):
        admit(sp(name, subnet="10.0.0.0/16"), old=None, existing=[])


def test_no_overlap_with_pools_of_the_same_subnet() -> None:
    seed = admit(SEED, old=None, existing=[])
    err = rejected(
        sp("other", subnet="10.244.0.0/16", ips=["10.244.150.0", "10.244.200.0-10.244.200.9"]),
        existing=[seed],
    )
    assert err.field == "spec.ips"
    assert (
        err.reason == "overlaps with SpiderIPPool seed in IP ranges [10.244.150.0 10.244.200.0-10.244.200.1]"
    )
    # excluding the overlap makes it fine; so does a disjoint range; the same subnet is allowed
    admit(
        sp("other", subnet="10.244.0.0/16", ips=["10.244.150.0"], excludeIPs=["10.244.150.0"]),
        old=None,
        existing=[seed],
    )
    admit(sp("other", subnet="10.244.0.0/16", ips=["10.244.201.0"]), old=None, existing=[seed])


def test_no_overlap_of_different_subnets_of_a_family() -> None:
    seed = admit(SEED, old=None, existing=[])
    err = rejected(sp("small", subnet="10.244.5.0/24"), existing=[seed])
    assert err.field == "spec.subnet" and "SpiderIPPool seed" in err.reason
    err = rejected(sp("big", subnet="10.0.0.0/8"), existing=[seed])
    assert err.field == "spec.subnet"
    admit(sp("next", subnet="10.245.0.0/16"), old=None, existing=[seed])
    admit(sp("v6", subnet="fd00::/64", ips=["fd00::1"]), old=None, existing=[seed])


def test_update_skips_own_stored_version_and_keeps_immutables() -> None:
    seed = admit(SEED, old=None, existing=[])
    grown = copy.deepcopy(seed)
    grown["spec"]["ips"] = ["10.244.100.0-10.244.210.0"]
    out = admit(grown, old=seed, existing=[seed])
    assert out["spec"]["ips"] == ["10.244.100.0-10.244.210.0"]
    moved = copy.deepcopy(seed)
    moved["spec"]["subnet"] = "10.245.0.0/16"
    moved["spec"]["ips"] = []
    moved["spec"]["gateway"] = "10.245.0.1"
    err = rejected(moved, old=seed, existing=[seed])
    assert err.field == "spec.subnet" and "is not changeable" in err.reason


def test_update_cannot_remove_or_exclude_an_ip_in_use() -> None:
    seed = admit(SEED, old=None, existing=[])
    in_use = {"10.244.100.5": "default/web-1"}
    excl = copy.deepcopy(seed)
    excl["spec"]["excludeIPs"] = ["10.244.100.5"]
    err = rejected(excl, old=seed, existing=[seed], in_use=in_use)
    assert err.field == "spec.excludeIPs"
    assert "remove an IP address 10.244.100.5 that is being used by Pod default/web-1" in err.reason
    shrunk = copy.deepcopy(seed)
    shrunk["spec"]["ips"] = ["10.244.101.0-10.244.200.1"]
    err = rejected(shrunk, old=seed, existing=[seed], in_use=["10.244.100.5"])
    assert err.field == "spec.ips" and "10.244.100.5" in err.reason
    # excluding a free address is fine
    excl["spec"]["excludeIPs"] = ["10.244.100.6"]
    admit(excl, old=seed, existing=[seed], in_use=in_use)


# ---------------------------------------------------------------------------------------------- SpiderSubnet


def test_subnet_mutation_and_rules() -> None:
    out = admit(
        ss("s1", subnet="10.6.0.0/16", ips=["10.6.0.20", "10.6.0.10-10.6.0.19"]), old=None, existing=[]
    )
    assert out["spec"]["ipVersion"] == 4 and out["spec"]["ips"] == ["10.6.0.10-10.6.0.20"]
    assert out["metadata"]["labels"][LABEL_SUBNET_CIDR] == "10-6-0-0-16"
    assert admit(out, old=None, existing=[out]) == out
    assert rejected(ss("s2", subnet="10.6.0.0/16"), existing=[out]).field == "spec.subnet"  # identical CIDR
    assert rejected(ss("s2", subnet="10.6.1.0/24"), existing=[out]).field == "spec.subnet"
    assert rejected(ss("s2", subnet="10.6.1.0/16")).field == "spec.subnet"
    assert rejected(ss("s2", subnet="10.7.0.0/16", ips=["10.8.0.1"])).field == "spec.ips"
    pool = admit(sp("p", subnet="10.7.0.0/24"), old=None, existing=[])
    err = rejected(ss("s2", subnet="10.7.0.0/16"), pools=[pool])
    assert err.field == "spec.subnet" and "SpiderIPPool p" in err.reason
    admit(ss("s2", subnet="10.7.0.0/24"), old=None, existing=[out], pools=[pool])  # the pools' own CIDR
    shrunk = copy.deepcopy(out)
    shrunk["spec"]["ips"] = ["10.6.0.10"]
    err = rejected(shrunk, old=out, existing=[out], in_use={"10.6.0.15": "p7"})
    assert "being used by SpiderIPPool p7" in err.reason
    renet = copy.deepcopy(out)
    renet["spec"]["subnet"] = "10.6.0.0/17"
    assert rejected(renet, old=out, existing=[out]).field == "spec.subnet"


# ---------------------------------------------------------------------------------------------- SpiderReservedIP


def test_reserved_ip() -> None:
    out = admit(sr("r1", ips=["10.0.0.9", "10.0.0.5-10.0.0.8"]), old=None, existing=[])
    assert out["spec"] == {"ips": ["10.0.0.5-10.0.0.9"], "ipVersion": 4}
    assert admit(out, old=None, existing=[]) == out
    out6 = admit(sr("r6", ips=["fd00::5"]), old=None, existing=[])
    assert out6["spec"]["ipVersion"] == 6
    assert rejected(sr("r2", ips=["10.0.0.1", "fd00::1"])).field == "spec.ips[1]"
    assert rejected(sr("r2", ipVersion=6, ips=["10.0.0.1"])).field == "spec.ipVersion"
    assert rejected(sr("r2")).field == "spec.ips"
    changed = copy.deepcopy(out)
    changed["spec"] = {"ips": ["fd00::1"]}
    err = rejected(changed, old=out)
    assert err.field == "spec.ipVersion" and "not changeable" in err.reason


def test_other_kinds_pass_through() -> None:
    pod: Obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "d"}}
    assert admit(pod, old=None, existing=[]) == pod


# ---------------------------------------------------------------------------------------------- properties

offsets = st.integers(0, 40)
range_items = st.lists(
    st.tuples(offsets, st.integers(0, 6)).map(
        lambda t: f"10.9.0.{t[0]}" if t[1] == 0 else f"10.9.0.{t[0]}-10.9.0.{t[0] + t[1]}"
    ),
    max_size=4,
)
pool_specs = st.fixed_dictionaries(
    {"subnet": st.sampled_from(["10.9.0.0/26", "10.9.0.0/24", "10.9.0.32/27", "10.9.0.16/24"])},
    optional={
        "ips": range_items,
        "excludeIPs": range_items,
        "gateway": offsets.map(lambda o: f"10.9.0.{o}"),
        "routes": st.lists(
            st.fixed_dictionaries(
                {
                    "dst": st.sampled_from(["172.16.0.0/12", "192.168.0.0/16", "0.0.0.0/0"]),
                    "gw": offsets.map(lambda o: f"10.9.0.{o}"),
                }
            ),
            max_size=2,
        ),
        "default": st.booleans(),
    },
)


@given(pool_specs, st.lists(pool_specs, max_size=2))
def test_admission_is_idempotent_and_rejections_name_a_field(
    spec: dict[str, Any], others_raw: list[dict[str, Any]]
) -> None:
    existing: list[Obj] = []
    for i, other_spec in enumerate(others_raw):
        with contextlib.suppress(Invalid):
            existing.append(admit(sp(f"o{i}", **other_spec), old=None, existing=existing))
    obj = sp("p", **spec)
    before = copy.deepcopy(obj)
    try:
        out = admit(obj, old=None, existing=existing)
    except Invalid as err:
        event(f"rejected: {err.field}")
        assert obj == before
        assert err.field.startswith("spec.") and err.kind == "SpiderIPPool" and err.name == "p"
        assert str(err) == f'SpiderIPPool "p": {err.field}: {err.reason}'
        return
    event(f"accepted beside {len(existing)} pools")
    assert admit(out, old=None, existing=existing) == out
    pool = IPPool.from_obj(out)
    for other_obj in existing:
        other = IPPool.from_obj(other_obj)
        if other.subnet == pool.subnet:
            assert not pool.usable.overlaps(other.usable)
        else:
            assert not (
                pool.subnet_interval[0] <= other.subnet_interval[1]
                and other.subnet_interval[0] <= pool.subnet_interval[1]
            )


# ------------------------------------------------------------------------ IPv4 addresses in IPv6 pools


@pytest.mark.parametrize(
    ("subnet", "ips", "reason"),
    [
        ("::a32:0/120", ["::a32:a"], "::10.50.0.10 is an IPv4-compatible IPv6 address (::/96)"),
        (
            "::ffff:a32:0/120",
            ["::ffff:a32:1-::ffff:a32:5"],
            "::ffff:10.50.0.1 is an IPv4-mapped IPv6 address",
        ),
        ("::/64", ["::1:0:0-::1:0:ff", "::ff"], "::ff is an IPv4-compatible IPv6 address"),
    ],
)
def test_ipv6_pools_may_not_hand_out_ipv4_addresses(subnet: str, ips: list[str], reason: str) -> None:
    for make in (sp, ss):
        err = rejected(make(subnet=subnet, ips=ips))
        assert err.field == "spec.ips" and reason in err.reason


def test_an_ipv6_pool_beside_those_ranges_is_fine() -> None:
    ok = admit(sp(subnet="::/64", ips=["::1:0:0-::1:0:ff"]), old=None, existing=[])
    assert ok["spec"]["ips"] == ["::1:0:0-::1:0:ff"]
    # excluding the IPv4-compatible part makes the pool acceptable
    ok = admit(sp(subnet="::/64", ips=["::ff", "::1:0:0"], excludeIPs=["::ff"]), old=None, existing=[])
    assert ok["spec"]["excludeIPs"] == ["::ff"]


# ------------------------------------------------------------------------ metadata, as the API server


@pytest.mark.parametrize(
    ("kind", "name", "ok"),
    [
        ("Pod", "web-0.a", True),
        ("Pod", "Web", False),
        ("Namespace", "team-a", True),
        ("Namespace", "team.a", False),
        ("Service", "web", True),
        ("Service", "0web", False),
        ("ClusterRole", "system:controller:x", True),
        ("ClusterRole", "a/b", False),
        ("RoleBinding", "..", False),
    ],
)
def test_names_follow_each_kinds_rule(kind: str, name: str, ok: bool) -> None:
    obj = {"metadata": {"name": name}}
    if ok:
        validate_metadata(kind, False, obj)
    else:
        with pytest.raises(Invalid) as err:
            validate_metadata(kind, False, obj)
        assert err.value.field == "metadata.name"


# ---------------------------------------------------------------------------------------- block size


def _block_pool(size: str | None, subnet: str = "10.0.0.0/24") -> Obj:
    obj = sp(
        "bp",
        subnet=subnet,
        ips=["fd00::1-fd00::ff" if ":" in subnet else "10.0.0.1-10.0.0.200"],
    )
    if size is not None:
        obj["metadata"]["annotations"] = {"spiderbgp.io/block-size": size}
    return obj


@pytest.mark.parametrize(
    ("subnet", "size", "reason"),
    [
        ("10.0.0.0/24", "20", "/20 must be between the subnet's /24 and /32 for IPv4"),
        ("10.0.0.0/24", "x26", '\'x26\' is not a prefix length (e.g. "26") or "none"'),
        ("10.0.0.0/24", "None", '\'None\' is not a prefix length (e.g. "26") or "none"'),
        (
            "fd00::/64",
            "129",
            "/129 must be between /116 and /128 for IPv6 (a block is one object holding "
            "its records: at most 4,096 addresses)",
        ),
        (
            "10.0.0.0/16",
            "19",
            "/19 must be between /20 and /32 for IPv4 (a block is one object holding "
            "its records: at most 4,096 addresses)",
        ),
        (
            "fd00::/64",
            "64",
            "/64 must be between /116 and /128 for IPv6 (a block is one object holding "
            "its records: at most 4,096 addresses)",
        ),
    ],
)
def test_block_size_out_of_range_is_refused(subnet: str, size: str, reason: str) -> None:
    err = rejected(_block_pool(size, subnet))
    assert str(err) == f'SpiderIPPool "bp": metadata.annotations.spiderbgp.io/block-size: {reason}'


@pytest.mark.parametrize(
    ("subnet", "size"), [("10.0.0.0/16", "20"), ("10.0.0.0/24", "24"), ("fd00::/64", "116")]
)
def test_the_shortest_block_size_is_accepted(subnet: str, size: str) -> None:
    assert admit(_block_pool(size, subnet), old=None, existing=[])["metadata"]["annotations"] == {
        "spiderbgp.io/block-size": size
    }


def test_block_size_is_accepted_and_fixed_while_the_pool_holds_allocations() -> None:
    stored = admit(_block_pool("26"), old=None, existing=[])
    assert stored["metadata"]["annotations"]["spiderbgp.io/block-size"] == "26"
    assert admit(_block_pool("122", "fd00::/64"), old=None, existing=[])["spec"]["ipVersion"] == 6
    for new in ("27", None, "none"):
        err = rejected(_block_pool(new), old=stored, existing=[stored], in_use=["10.0.0.1"])
        assert "not changeable while the pool holds allocations (1 IPs in use)" in str(err)
        admit(_block_pool(new), old=stored, existing=[stored], in_use=[])
    plain = admit(_block_pool(None), old=None, existing=[])
    rejected(_block_pool("26"), old=plain, existing=[plain], in_use=["10.0.0.1"])


def test_none_keeps_a_pool_plain_and_is_the_same_setting_as_no_annotation() -> None:
    """The opt-out from the agent's default: "none" and no annotation are both a plain pool, so one
    becomes the other while the pool holds allocations; "none" -> a size is a change like any other."""
    opted_out = admit(_block_pool("none"), old=None, existing=[])
    assert opted_out["metadata"]["annotations"] == {"spiderbgp.io/block-size": "none"}
    plain = admit(_block_pool(None), old=None, existing=[])
    used = ["10.0.0.1"]
    assert (
        "annotations"
        not in admit(_block_pool(None), old=opted_out, existing=[opted_out], in_use=used)["metadata"]
    )
    admit(_block_pool("none"), old=plain, existing=[plain], in_use=used)
    err = rejected(_block_pool("26"), old=opted_out, existing=[opted_out], in_use=used)
    assert str(err) == (
        'SpiderIPPool "bp": metadata.annotations.spiderbgp.io/block-size: not changeable while the pool '
        "holds allocations (1 IPs in use)"
    )
    assert admit(_block_pool("26"), old=opted_out, existing=[opted_out], in_use=[])["metadata"][
        "annotations"
    ] == {"spiderbgp.io/block-size": "26"}
    # the same size written another way is no change
    sized = admit(_block_pool("26"), old=None, existing=[])
    admit(_block_pool("026"), old=sized, existing=[sized], in_use=used)


def sib(name: str = "bp-10-0-0-0-26", **spec: Any) -> Obj:
    return {
        "apiVersion": "spiderbgp.io/v1alpha1",
        "kind": "SpiderIPBlock",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_block_admission_checks_spec_and_keeps_pool_and_cidr() -> None:
    good = sib(pool="bp", cidr="10.0.0.0/26", node="node1")
    assert admit(good, old=None, existing=[]) == good
    cases = [
        (sib(pool="bp", cidr="10.0.0.0/26"), "spec.node: must be a non-empty string"),
        (
            sib(pool="bp", cidr="10.0.0.5/26", node="n"),
            "spec.cidr: 10.0.0.5/26 is not canonical (write 10.0.0.0/26)",
        ),
        (
            sib(pool="bp", cidr="FD00::/122", node="n"),
            "spec.cidr: FD00::/122 is not canonical (write fd00::/122)",
        ),
        (sib(pool="bp", cidr="10.0.0/26", node="n"), "spec.cidr: "),
        (sib(pool="bp", cidr="10.0.0.64/26", node="n"), "spec.cidr: is not changeable"),
        (sib(pool="other", cidr="10.0.0.0/26", node="n"), "spec.pool: is not changeable"),
    ]
    for obj, reason in cases:
        err = rejected(obj, old=good if "changeable" in reason else None)
        assert str(err).startswith(f'SpiderIPBlock "bp-10-0-0-0-26": {reason}'), str(err)
    moved = sib(pool="bp", cidr="10.0.0.0/26", node="node2")  # the node may change (a hand-over)
    assert admit(moved, old=good, existing=[good])["spec"]["node"] == "node2"


def test_block_size_is_fixed_while_blocks_of_the_pool_remain() -> None:
    stored = admit(_block_pool("26"), old=None, existing=[])
    remaining = [
        sib(pool="bp", cidr="10.0.0.0/26", node="n1"),
        sib("x", pool="other", cidr="10.1.0.0/26", node="n1"),
    ]
    err = rejected(_block_pool("28"), old=stored, existing=[stored], blocks=remaining)
    assert "not changeable while 1 SpiderIPBlocks of the pool remain" in str(err)
    err = rejected(_block_pool("none"), old=stored, existing=[stored], blocks=remaining)
    assert "not changeable while 1 SpiderIPBlocks of the pool remain" in str(err)
    admit(_block_pool("28"), old=stored, existing=[stored], blocks=remaining[1:])
