"""SpiderSubnet ownership at admission (Spiderpool's pool webhook mutation) and the pure adoption step
the subnet controller shares with it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ipam.admission import admit, adopt, is_owned_by, owner_subnet
from ipam.errors import Invalid
from ipam.kinds import SPIDER_API
from ipam.model import LABEL_OWNER_SUBNET, IPPool, Subnet
from ipam.records import Obj

GW = "10.6.0.1"
ROUTES = [{"dst": "172.16.0.0/12", "gw": "10.6.0.2"}]


def sp(name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": SPIDER_API,
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.168.101"], **spec},
    }


def ss(name: str = "s1", uid: str = "uid-s1", terminating: bool = False, **spec: Any) -> Obj:
    meta: dict[str, Any] = {"name": name, "uid": uid, "resourceVersion": "7"}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    obj = {
        "apiVersion": SPIDER_API,
        "kind": "SpiderSubnet",
        "metadata": meta,
        "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.168.100-10.6.168.200"], **spec},
    }
    return admit(obj, old=None, existing=[])


SUBNET = ss(gateway=GW, routes=ROUTES)


def refs(obj: Obj) -> list[dict[str, Any]]:
    return list(obj["metadata"].get("ownerReferences") or [])


def test_create_gets_controller_ref_label_gateway_and_routes() -> None:
    out = admit(sp("p1"), old=None, existing=[], subnets=[SUBNET])
    assert refs(out) == [
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderSubnet",
            "name": "s1",
            "uid": "uid-s1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert out["metadata"]["labels"][LABEL_OWNER_SUBNET] == "s1"
    assert out["spec"]["gateway"] == GW and out["spec"]["routes"] == ROUTES
    assert is_owned_by(out, Subnet.from_obj(SUBNET))


@pytest.mark.parametrize(
    ("spec", "gateway", "routes"),
    [
        ({"gateway": "10.6.0.3"}, "10.6.0.3", ROUTES),  # an explicit gateway wins
        ({"routes": []}, GW, []),  # an explicit empty list is kept, nil inherits
        (
            {"routes": [{"dst": "192.168.0.0/16", "gw": "10.6.0.9"}]},
            GW,
            [{"dst": "192.168.0.0/16", "gw": "10.6.0.9"}],
        ),
        ({"gateway": None, "routes": None}, GW, ROUTES),
    ],
)
def test_inheritance_only_fills_what_is_unset(spec: dict[str, Any], gateway: str, routes: list[Any]) -> None:
    out = admit(sp("p1", **spec), old=None, existing=[], subnets=[SUBNET])
    assert out["spec"]["gateway"] == gateway and out["spec"]["routes"] == routes


def test_subnet_without_gateway_or_routes_adds_none() -> None:
    out = admit(sp("p1"), old=None, existing=[], subnets=[ss()])
    assert "gateway" not in out["spec"] and "routes" not in out["spec"]
    assert out["metadata"]["labels"][LABEL_OWNER_SUBNET] == "s1"


def test_no_subnet_of_the_cidr_no_owner() -> None:
    other = ss("s2", uid="uid-s2", subnet="10.7.0.0/16", ips=["10.7.0.10"])
    out = admit(sp("p1"), old=None, existing=[], subnets=[other])
    assert refs(out) == [] and LABEL_OWNER_SUBNET not in out["metadata"]["labels"]
    assert "gateway" not in out["spec"]


def test_terminating_subnet_takes_no_new_pool_and_keeps_its_own() -> None:
    dying = ss(terminating=True, gateway=GW)
    fresh = admit(sp("p1"), old=None, existing=[], subnets=[dying])
    assert refs(fresh) == [] and "gateway" not in fresh["spec"]
    assert owner_subnet(IPPool.from_obj(fresh), [dying]) is None
    owned = admit(sp("p2"), old=None, existing=[], subnets=[SUBNET])
    again = admit(owned, old=owned, existing=[], subnets=[dying])
    assert refs(again) == refs(owned)  # its pools keep the reference the cascade follows


def test_a_recreated_subnet_replaces_the_stale_reference() -> None:
    old = admit(sp("p1"), old=None, existing=[], subnets=[SUBNET])
    other_owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "u-cm"}
    old["metadata"]["ownerReferences"].append(other_owner)
    new_subnet = ss(uid="uid-s1-second")
    out = admit(old, old=old, existing=[], subnets=[new_subnet])
    subnet_refs = [r for r in refs(out) if r["kind"] == "SpiderSubnet"]
    assert [r["uid"] for r in subnet_refs] == ["uid-s1-second"]
    assert other_owner in refs(out)


def test_foreign_controller_is_one_line_error() -> None:
    pool = sp("p1")
    pool["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-web", "controller": True}
    ]
    with pytest.raises(Invalid) as info:
        admit(pool, old=None, existing=[], subnets=[SUBNET])
    err = info.value
    assert err.field == "metadata.ownerReferences"
    assert str(err) == (
        'SpiderIPPool "p1": metadata.ownerReferences: is controlled by Deployment web, but a pool of the '
        "CIDR 10.6.0.0/16 must be controlled by SpiderSubnet s1"
    )
    assert "\n" not in str(err)


def test_inherited_gateway_inside_the_pool_names_the_subnet() -> None:
    subnet = ss(gateway="10.6.168.150", excludeIPs=["10.6.168.150"])
    with pytest.raises(Invalid) as info:
        admit(sp("p1", ips=["10.6.168.140-10.6.168.160"]), old=None, existing=[], subnets=[subnet])
    assert info.value.field == "spec.gateway"
    assert "inherited from SpiderSubnet s1" in info.value.reason
    # excluded, it is fine
    out = admit(
        sp("p1", ips=["10.6.168.140-10.6.168.160"], excludeIPs=["10.6.168.150"]),
        old=None,
        existing=[],
        subnets=[subnet],
    )
    assert out["spec"]["gateway"] == "10.6.168.150"


def test_pool_outside_the_subnet_ips_is_refused() -> None:
    with pytest.raises(Invalid) as info:
        admit(sp("p1", ips=["10.6.1.1"]), old=None, existing=[], subnets=[SUBNET])
    assert info.value.field == "spec.ips" and "SpiderSubnet s1" in info.value.reason


def test_adopt_is_pure_and_idempotent() -> None:
    pool = admit(sp("p1"), old=None, existing=[], subnets=[])
    before = copy.deepcopy(pool)
    owner = Subnet.from_obj(SUBNET)
    assert not is_owned_by(pool, owner)
    adopted = adopt(pool, owner)
    assert pool == before
    assert is_owned_by(adopted, owner)
    assert adopted["spec"]["gateway"] == GW and adopted["spec"]["routes"] == ROUTES
    assert adopt(adopted, owner) == adopted
    # admission of the adopted pool changes nothing more
    assert admit(adopted, old=adopted, existing=[], subnets=[SUBNET]) == adopted


def test_owned_needs_both_label_and_reference() -> None:
    owner = Subnet.from_obj(SUBNET)
    adopted = adopt(admit(sp("p1"), old=None, existing=[]), owner)
    no_label = copy.deepcopy(adopted)
    del no_label["metadata"]["labels"][LABEL_OWNER_SUBNET]
    assert not is_owned_by(no_label, owner)
    other_uid = copy.deepcopy(adopted)
    other_uid["metadata"]["ownerReferences"][0]["uid"] = "uid-old"
    assert not is_owned_by(other_uid, owner)
