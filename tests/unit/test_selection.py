"""Candidate-pool selection (rules, wildcards, filters, stable sort), result routes, failure text, and
the top-controller resolution selection relies on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam import annotations as an
from ipam import autopool as ap
from ipam.errors import AllocationError, NotFound
from ipam.model import IPPool
from ipam.records import Obj
from ipam.selection import (
    FamilyCandidates,
    NicRoute,
    Selection,
    Skip,
    candidates,
    describe_failure,
    multus_network_for,
    response_routes,
)
from ipam.workload import OwnerRef, PodInfo, TopController, resolve_top_controller

ORPHAN = TopController("v1", "Pod", "default", "p", "pod-uid")
DEPLOY = TopController("apps/v1", "Deployment", "default", "web", "8a7f3c1e-0b2d-4e5f-9a8b-a5bd3c9e7f10")


def pool(name: str, family: int = 4, **spec: Any) -> IPPool:
    meta: dict[str, Any] = {"name": name}
    if "labels" in spec:
        meta["labels"] = spec.pop("labels")
    if spec.pop("terminating", False):
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    base: dict[str, Any] = (
        {"subnet": "10.0.0.0/16", "ips": ["10.0.0.10-10.0.0.20"], "gateway": "10.0.0.1"}
        if family == 4
        else {"subnet": "fd00::/64", "ips": ["fd00::10-fd00::20"], "gateway": "fd00::1"}
    )
    base.update(spec)
    return IPPool.from_obj({"metadata": meta, "spec": base})


def make_pod(annotations: dict[str, str] | None = None, **kw: Any) -> PodInfo:
    args: dict[str, Any] = {
        "namespace": "default",
        "name": "p",
        "uid": "pod-uid",
        "node_name": "worker1",
        "labels": {"app": "web"},
        "annotations": annotations or {},
    }
    args.update(kw)
    return PodInfo(**args)


def select(pod: PodInfo, pools: list[IPPool], nic: str = "eth0", **kw: Any) -> Selection:
    args: dict[str, Any] = {
        "namespace_annotations": {},
        "namespace_labels": {"team": "a"},
        "node_labels": {"zone": "z1"},
        "cni_default_v4": (),
        "cni_default_v6": (),
        "pools": pools,
        "top_controller": ORPHAN,
        "enable_v6": False,
    }
    args.update(kw)
    return candidates(pod, nic, **args)


def v4_pools(selection: Selection, nic: str = "eth0") -> tuple[str, ...]:
    got = selection.nic(nic)
    assert got is not None
    fam = got.family(4)
    assert fam is not None
    return fam.pools


IPPOOL = an.ANNO_IPPOOL


# ---- rule priority


ALL = [pool("a"), pool("b"), pool("c"), pool("d", default=True), pool("e")]


def test_ippools_beats_ippool() -> None:
    pod = make_pod({an.ANNO_IPPOOLS: '[{"interface":"eth0","ipv4":["a"]}]', IPPOOL: '{"ipv4":["b"]}'})
    sel = select(pod, ALL)
    assert sel.source == "ippools" and v4_pools(sel) == ("a",)


def test_ippool_beats_namespace() -> None:
    pod = make_pod({IPPOOL: '{"ipv4":["b"]}'})
    sel = select(pod, ALL, namespace_annotations={an.ANNO_NS_DEFAULT_V4: '["c"]'})
    assert sel.source == "ippool" and v4_pools(sel) == ("b",)


def test_namespace_beats_cni() -> None:
    sel = select(
        make_pod(), ALL, namespace_annotations={an.ANNO_NS_DEFAULT_V4: '["c"]'}, cni_default_v4=["e"]
    )
    assert sel.source == "namespace" and v4_pools(sel) == ("c",)


def test_cni_beats_cluster_default() -> None:
    sel = select(make_pod(), ALL, cni_default_v4=["e"])
    assert sel.source == "cni" and v4_pools(sel) == ("e",)


def test_cluster_default() -> None:
    sel = select(make_pod(), ALL)
    assert sel.source == "cluster-default" and v4_pools(sel) == ("d",)
    assert sel.source_text == "cluster default pools"


def test_no_rule_at_all() -> None:
    with pytest.raises(
        AllocationError, match=r'^Pod "default/p": no IPPool available: no pool selection rule'
    ):
        select(make_pod(), [pool("a")])


def test_ippool_omitted_family_not_allocated_and_disabled_family_dropped() -> None:
    pools = [pool("a"), pool("six", 6)]
    sel = select(make_pod({IPPOOL: '{"ipv4":["a"]}'}), pools, enable_v6=True)
    nic = sel.nic("eth0")
    assert nic is not None and nic.family(6) is None and nic.family(4) is not None
    sel = select(make_pod({IPPOOL: '{"ipv4":["a"],"ipv6":["six"]}'}), pools, enable_v6=False)
    assert [f.family for f in sel.nics[0].families] == [4]
    with pytest.raises(AllocationError, match="name no pool of IPv4 for eth0"):
        select(make_pod({IPPOOL: '{"ipv6":["six"]}'}), pools, enable_v6=False)


def test_dual_stack_namespace_defaults_either_family() -> None:
    pools = [pool("a"), pool("six", 6)]
    sel = select(make_pod(), pools, enable_v6=True, namespace_annotations={an.ANNO_NS_DEFAULT_V6: '["six"]'})
    assert sel.source == "namespace"
    assert [f.family for f in sel.nics[0].families] == [6]


# ---- multi-NIC


def test_ippools_all_nics_with_clean_gateway() -> None:
    pod = make_pod(
        {
            an.ANNO_IPPOOLS: json.dumps(
                [
                    {"interface": "eth0", "ipv4": ["a"], "cleangateway": True},
                    {"interface": "net1", "ipv4": ["b"], "cleangateway": False},
                ]
            )
        }
    )
    sel = select(pod, ALL, nic="eth0", clean_gateway=False)
    assert [(n.nic, n.clean_gateway) for n in sel.nics] == [("eth0", True), ("net1", False)]
    assert v4_pools(sel, "net1") == ("b",)


def test_ippools_unnamed_first_item_is_current_nic() -> None:
    pod = make_pod({an.ANNO_IPPOOLS: '[{"ipv4":["a"]},{"ipv4":["b"]}]'})
    sel = select(pod, ALL)
    assert [n.nic for n in sel.nics] == ["eth0", "1"]


def test_ippools_current_nic_must_be_listed() -> None:
    pod = make_pod({an.ANNO_IPPOOLS: '[{"interface":"eth0","ipv4":["a"]}]'})
    with pytest.raises(an.AnnotationError, match="interface net2 of this CNI call is not listed"):
        select(pod, ALL, nic="net2")


def test_netconf_clean_gateway_applies_outside_ippools() -> None:
    sel = select(make_pod({IPPOOL: '{"ipv4":["a"]}'}), ALL, clean_gateway=True)
    assert sel.nics[0].clean_gateway is True


# ---- names: not found, duplicates, wildcards


def test_named_pool_not_found() -> None:
    with pytest.raises(AllocationError) as info:
        select(make_pod({IPPOOL: '{"ipv4":["a","nope"]}'}), ALL)
    assert str(info.value) == (
        'Pod "default/p": pod annotation ipam.spidernet.io/ippool: SpiderIPPool "nope" not found'
    )
    assert info.value.reason == "no-pool" and not info.value.retryable


def test_duplicate_within_nic_is_an_error() -> None:
    with pytest.raises(AllocationError, match="IPPool a is listed twice for eth0"):
        select(make_pod({IPPOOL: '{"ipv4":["a","b","a"]}'}), ALL)


def test_wildcards_expand_in_place_against_family() -> None:
    pools = [pool("blue-2"), pool("blue-1"), pool("red"), pool("blue-6", 6), pool("green")]
    sel = select(make_pod({IPPOOL: '{"ipv4":["red","blue-*","green"]}'}), pools)
    assert v4_pools(sel) == ("red", "blue-1", "blue-2", "green")


def test_wildcard_does_not_duplicate_literal_names() -> None:
    pools = [pool("blue-1"), pool("blue-2")]
    sel = select(make_pod({IPPOOL: '{"ipv4":["blue-?","blue-1"]}'}), pools)
    assert v4_pools(sel) == ("blue-2", "blue-1")


def test_wildcard_in_namespace_defaults_and_cni() -> None:
    pools = [pool("ns-a"), pool("ns-b"), pool("x")]
    sel = select(make_pod(), pools, namespace_annotations={an.ANNO_NS_DEFAULT_V4: '["ns-[ab]"]'})
    assert v4_pools(sel) == ("ns-a", "ns-b")
    sel = select(make_pod(), pools, cni_default_v4=["n*"])
    assert v4_pools(sel) == ("ns-a", "ns-b")


def test_wildcard_matching_nothing() -> None:
    with pytest.raises(AllocationError, match=r"no IPv4 IPPool available for eth0 .*: no IPv4 pool matches"):
        select(make_pod({IPPOOL: '{"ipv4":["zz*"]}'}), ALL)


# ---- filters


FILTER_CASES: list[tuple[str, IPPool, str]] = [
    ("terminating", pool("x", terminating=True), "terminating"),
    ("disabled", pool("x", disable=True), "disabled"),
    ("family", pool("x", 6), "ipVersion 6 != 4"),
    ("nodeName", pool("x", nodeName=["worker5"]), "node worker1 not in nodeName"),
    (
        "nodeAffinity",
        pool("x", nodeAffinity={"matchLabels": {"zone": "z2"}}),
        "node worker1 does not match nodeAffinity",
    ),
    ("namespaceName", pool("x", namespaceName=["kube-system"]), "namespace default not in namespaceName"),
    (
        "namespaceAffinity",
        pool("x", namespaceAffinity={"matchLabels": {"team": "b"}}),
        "namespace default does not match namespaceAffinity",
    ),
    ("podAffinity", pool("x", podAffinity={"matchLabels": {"app": "db"}}), "podAffinity does not match"),
    (
        "multus-missing",
        pool("x", multusName=["macvlan"]),
        "multusName macvlan set but eth0 has no multus network",
    ),
]


@pytest.mark.parametrize(("case", "bad", "reason"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_filter_reasons(case: str, bad: IPPool, reason: str) -> None:
    ok = pool("ok")
    sel = select(make_pod({IPPOOL: '{"ipv4":["x","ok"]}'}), [bad, ok])
    fam = sel.nics[0].family(4)
    assert fam == FamilyCandidates(4, ("ok",), (Skip("x", reason),))


def test_filters_pass_when_matching() -> None:
    good = pool(
        "x",
        nodeName=["worker1"],
        namespaceName=["default"],
        podAffinity={"matchLabels": {"app": "web"}},
        nodeAffinity={"matchLabels": {"zone": "nomatch"}},  # ignored: nodeName wins
        namespaceAffinity={"matchLabels": {"team": "nomatch"}},  # ignored: namespaceName wins
    )
    assert v4_pools(select(make_pod({IPPOOL: '{"ipv4":["x"]}'}), [good])) == ("x",)


def test_all_filtered_lists_every_reason() -> None:
    with pytest.raises(AllocationError) as info:
        select(
            make_pod({IPPOOL: '{"ipv4":["a","b"]}'}),
            [pool("a", disable=True), pool("b", nodeName=["worker5"])],
        )
    assert str(info.value) == (
        'Pod "default/p": no IPv4 IPPool available for eth0 (pod annotation ipam.spidernet.io/ippool): '
        "pool a: disabled; pool b: node worker1 not in nodeName"
    )


def test_multus_name_checked_only_when_set() -> None:
    plain = pool("plain")
    macvlan = pool("mv", multusName=["kube-system/macvlan"])
    pod = make_pod(
        {IPPOOL: '{"ipv4":["mv","plain"]}', "v1.multus-cni.io/default-network": "kube-system/macvlan"}
    )
    assert v4_pools(select(pod, [plain, macvlan])) == ("mv", "plain")
    bare = pool("mv", multusName=["macvlan"])  # a bare name means the spiderpool namespace
    assert v4_pools(select(pod, [plain, bare], multus_namespace="kube-system")) == ("mv", "plain")
    other = make_pod(
        {IPPOOL: '{"ipv4":["mv","plain"]}', "v1.multus-cni.io/default-network": "kube-system/ipvlan"}
    )
    sel = select(other, [plain, macvlan])
    assert v4_pools(sel) == ("plain",)
    assert sel.nics[0].families[0].skipped == (
        Skip("mv", "multus network kube-system/ipvlan of eth0 not in multusName"),
    )
    # no default-network annotation: the cluster network applies
    assert v4_pools(
        select(make_pod({IPPOOL: '{"ipv4":["mv"]}'}), [macvlan], multus_cluster_network="kube-system/macvlan")
    ) == ("mv",)


@pytest.mark.parametrize(
    ("annotations", "nic", "expected"),
    [
        ({"k8s.v1.cni.cncf.io/networks": "macvlan"}, "net1", "default/macvlan"),
        ({"k8s.v1.cni.cncf.io/networks": "a, other/b@data"}, "data", "other/b"),
        ({"k8s.v1.cni.cncf.io/networks": "a, other/b@data"}, "net1", "default/a"),
        ({"k8s.v1.cni.cncf.io/networks": '[{"name":"m","namespace":"x","interface":"n9"}]'}, "n9", "x/m"),
        ({"k8s.v1.cni.cncf.io/networks": '[{"name":"m"},{"name":"k"}]'}, "net2", "default/k"),
        ({"k8s.v1.cni.cncf.io/networks": "[broken"}, "net1", None),
        ({}, "net1", None),
        ({"v1.multus-cni.io/default-network": "calico"}, "eth0", "default/calico"),
    ],
)
def test_multus_network_for(annotations: dict[str, str], nic: str, expected: str | None) -> None:
    assert multus_network_for(make_pod(annotations), nic) == expected


# ---- sort


def test_sort_by_priority_pr2207() -> None:
    pools = [
        pool("pool5"),
        pool("pool4", multusName=["kube-system/m"]),
        pool("pool3", namespaceName=["default"]),
        pool("pool2", nodeName=["worker1"]),
        pool("pool1", podAffinity={"matchLabels": {"app": "web"}}),
    ]
    pod = make_pod(
        {
            IPPOOL: '{"ipv4":["pool5","pool4","pool3","pool2","pool1"]}',
            "v1.multus-cni.io/default-network": "kube-system/m",
        }
    )
    assert v4_pools(select(pod, pools)) == ("pool1", "pool2", "pool3", "pool4", "pool5")


def test_node_affinity_below_node_name_namespace_affinity_below_name() -> None:
    pools = [
        pool("nsaff", namespaceAffinity={"matchLabels": {"team": "a"}}),
        pool("nsname", namespaceName=["default"]),
        pool("nodeaff", nodeAffinity={"matchLabels": {"zone": "z1"}}),
        pool("nodename", nodeName=["worker1"]),
    ]
    pod = make_pod({IPPOOL: '{"ipv4":["nsaff","nsname","nodeaff","nodename"]}'})
    assert v4_pools(select(pod, pools)) == ("nodename", "nodeaff", "nsname", "nsaff")


@settings(max_examples=100, deadline=None)
@given(
    order=st.permutations([f"p{i}" for i in range(6)]), flags=st.lists(st.booleans(), min_size=6, max_size=6)
)
def test_equal_priority_keeps_user_order(order: list[str], flags: list[bool]) -> None:
    pools = [pool(n, nodeName=["worker1"]) if flags[i] else pool(n) for i, n in enumerate(sorted(order))]
    got = v4_pools(select(make_pod({IPPOOL: json.dumps({"ipv4": order})}), pools))
    with_node = {n for i, n in enumerate(sorted(order)) if flags[i]}
    assert list(got) == [n for n in order if n in with_node] + [n for n in order if n not in with_node]


# ---- subnet auto pools


def auto_pool_for(top: TopController, family: int = 4, subnet: str = "s1") -> IPPool:
    from ipam.model import Subnet

    sub = Subnet.from_obj(
        {
            "metadata": {"name": subnet, "uid": "su"},
            "spec": {
                "subnet": "10.6.0.0/24" if family == 4 else "fd06::/64",
                "ips": ["10.6.0.10-10.6.0.50"] if family == 4 else ["fd06::10-fd06::50"],
            },
        }
    )
    req = ap.AppRequest(
        top=top, nic="eth0", family=4 if family == 4 else 6, subnet=subnet, ip_number=an.IPNumber(False, 2)
    )
    action = ap.plan(req, sub, None, [])
    assert action.pool is not None
    return IPPool.from_obj(action.pool)


def test_subnet_annotation_selects_the_apps_auto_pool() -> None:
    auto = auto_pool_for(DEPLOY)
    other = auto_pool_for(TopController("apps/v1", "Deployment", "default", "api", "1111-22222"))
    pod = make_pod({an.ANNO_SUBNET: '{"ipv4":["s1"]}', IPPOOL: '{"ipv4":["a"]}'})
    sel = select(pod, [*ALL, other, auto], top_controller=DEPLOY)
    assert sel.source == "subnet"
    assert v4_pools(sel) == (auto.name,)
    assert auto.name == "auto4-web-eth0-a5bd3"


def test_auto_pool_of_another_app_is_filtered() -> None:
    other = auto_pool_for(TopController("apps/v1", "Deployment", "default", "api", "1111-22222"))
    with pytest.raises(AllocationError, match=r"pool auto4-api-eth0-22222: auto pool of another application"):
        select(make_pod({IPPOOL: f'{{"ipv4":["{other.name}"]}}'}), [other], top_controller=DEPLOY)


def test_subnet_annotation_errors() -> None:
    pod = make_pod({an.ANNO_SUBNET: '{"ipv4":["s1"]}'})
    with pytest.raises(AllocationError, match="auto pools need a controller"):
        select(pod, ALL, top_controller=ORPHAN)
    with pytest.raises(AllocationError, match="needs SpiderSubnet auto pools, which are disabled"):
        select(pod, ALL, top_controller=DEPLOY, enable_auto_pool=False)
    with pytest.raises(AllocationError, match="does not exist yet") as info:
        select(pod, ALL, top_controller=DEPLOY)
    assert info.value.retryable
    # a family the annotation leaves out is not allocated (Spiderpool), unless it is the only one enabled
    dual = select(pod, [auto_pool_for(DEPLOY)], top_controller=DEPLOY, enable_v6=True)
    assert v4_pools(dual) == (auto_pool_for(DEPLOY).name,)
    with pytest.raises(AllocationError, match="names no IPv6 SpiderSubnet for eth0"):
        select(pod, [auto_pool_for(DEPLOY)], top_controller=DEPLOY, enable_v4=False, enable_v6=True)
    multi = make_pod({an.ANNO_SUBNETS: '[{"interface":"net1","ipv4":["s1"]}]'})
    with pytest.raises(AllocationError, match="does not list interface eth0"):
        select(multi, ALL, top_controller=DEPLOY)


# ---- routes and failure text


def test_response_routes_order() -> None:
    p = pool("a", routes=[{"dst": "172.16.0.0/16", "gw": "10.0.0.254"}])
    annotation = [
        an.AnnotationRoute("192.168.0.0/24", "10.0.0.253", 4),
        an.AnnotationRoute("192.168.1.0/24", "10.9.0.1", 4),  # gw outside this NIC's subnet: elsewhere
        an.AnnotationRoute("fd09::/64", "fd00::2", 6),
    ]
    assert response_routes(p, "eth0", False, annotation) == (
        NicRoute("eth0", "172.16.0.0/16", "10.0.0.254"),
        NicRoute("eth0", "192.168.0.0/24", "10.0.0.253"),
        NicRoute("eth0", "0.0.0.0/0", "10.0.0.1"),
    )
    assert response_routes(p, "eth0", True, ()) == (NicRoute("eth0", "172.16.0.0/16", "10.0.0.254"),)
    six = pool("s", 6)
    assert response_routes(six, "net1", False, annotation) == (
        NicRoute("net1", "fd09::/64", "fd00::2"),
        NicRoute("net1", "::/0", "fd00::1"),
    )
    assert response_routes(pool("n", gateway=None), "eth0", False, ()) == ()


def test_describe_failure() -> None:
    sel = select(
        make_pod({IPPOOL: '{"ipv4":["a","b","c"]}'}), [pool("a"), pool("b", disable=True), pool("c")]
    )
    text = describe_failure(4, "eth0", sel, {"a": "all IP addresses used out"})
    assert (
        text
        == "no IPv4 address for eth0: pool a: all IP addresses used out; pool c: not tried; pool b: disabled"
    )
    assert describe_failure(6, "eth0", sel, {}) == "no IPv6 address for eth0: no IPv6 candidate pools"


# ---- top controller resolution


def _obj(kind: str, name: str, uid: str, owner: tuple[str, str, str] | None = None, **extra: Any) -> Obj:
    meta: dict[str, Any] = {"namespace": "default", "name": name, "uid": uid}
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": owner[0], "kind": owner[1], "name": owner[2], "uid": "x", "controller": True}
        ]
    return {"kind": kind, "metadata": meta, **extra}


WORLD: dict[tuple[str, str], Obj] = {
    ("ReplicaSet", "web-5d8f"): _obj("ReplicaSet", "web-5d8f", "rs1", ("apps/v1", "Deployment", "web")),
    ("Deployment", "web"): _obj("Deployment", "web", "dep1", spec={"replicas": 3}),
    ("ReplicaSet", "lonely"): _obj("ReplicaSet", "lonely", "rs2"),
    ("Job", "nightly-123"): _obj("Job", "nightly-123", "job1", ("batch/v1", "CronJob", "nightly")),
    ("CronJob", "nightly"): _obj("CronJob", "nightly", "cj1"),
    ("Job", "once"): _obj("Job", "once", "job2"),
    ("StatefulSet", "db"): _obj("StatefulSet", "db", "sts1"),
    ("DaemonSet", "agent"): _obj("DaemonSet", "agent", "ds1"),
}


def lookup(kind: str, namespace: str, name: str) -> Obj | None:
    assert namespace == "default"
    return WORLD.get((kind, name))


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (None, ("v1", "Pod", "p", "pod-uid")),
        (("apps/v1", "ReplicaSet", "web-5d8f"), ("apps/v1", "Deployment", "web", "dep1")),
        (("apps/v1", "ReplicaSet", "lonely"), ("apps/v1", "ReplicaSet", "lonely", "rs2")),
        (("batch/v1", "Job", "nightly-123"), ("batch/v1", "CronJob", "nightly", "cj1")),
        (("batch/v1", "Job", "once"), ("batch/v1", "Job", "once", "job2")),
        (("apps/v1", "StatefulSet", "db"), ("apps/v1", "StatefulSet", "db", "sts1")),
        (("apps/v1", "DaemonSet", "agent"), ("apps/v1", "DaemonSet", "agent", "ds1")),
        (
            ("apps.kruise.io/v1alpha1", "CloneSet", "cs"),
            ("apps.kruise.io/v1alpha1", "CloneSet", "cs", "own-uid"),
        ),
        (("v1", "ReplicationController", "rc"), ("v1", "ReplicationController", "rc", "own-uid")),
    ],
)
def test_resolve_top_controller(owner: tuple[str, str, str] | None, expected: tuple[str, ...]) -> None:
    owners = () if owner is None else (OwnerRef(owner[0], owner[1], owner[2], "own-uid", True),)
    top = resolve_top_controller(make_pod(owners=owners), lookup)
    assert (top.api_version, top.kind, top.name, top.uid) == expected
    assert top.namespace == "default"


def test_top_controller_keys_and_app_object() -> None:
    owners = (OwnerRef("apps/v1", "ReplicaSet", "web-5d8f", "rs1", True),)
    top = resolve_top_controller(make_pod(owners=owners), lookup)
    assert top.app_key == "apps_v1_Deployment_default_web"
    assert top.label_gv == "apps_v1" and top.builtin and not top.orphan
    assert ap.replicas_of(top) == 3
    assert ORPHAN.app_key == "v1_Pod_default_p" and ORPHAN.orphan


def test_non_controller_owner_is_ignored_and_missing_owner_raises() -> None:
    not_controller = (OwnerRef("apps/v1", "ReplicaSet", "web-5d8f", "rs1", False),)
    assert resolve_top_controller(make_pod(owners=not_controller), lookup).kind == "Pod"
    missing = (OwnerRef("apps/v1", "StatefulSet", "gone", "u", True),)
    with pytest.raises(NotFound, match='StatefulSet "default/gone" not found'):
        resolve_top_controller(make_pod(owners=missing), lookup)
