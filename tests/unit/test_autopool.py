"""SpiderSubnet auto pools: naming, size, free addresses, grow/shrink and the create/resize/delete plan."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam import autopool as ap
from ipam.annotations import IPNumber
from ipam.model import IPPool, PreAllocation, Subnet, encode_controlled_pools
from ipam.ranges import IntervalSet, ip_to_int
from ipam.workload import TopController

UID = "8a7f3c1e-0b2d-4e5f-9a8b-a5bd3c9e7f10"


def deploy(replicas: int | None = 3, uid: str = UID, name: str = "web") -> TopController:
    spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
    obj = {"metadata": {"namespace": "default", "name": name, "uid": uid}, "spec": spec}
    return TopController("apps/v1", "Deployment", "default", name, uid, obj)


def subnet(
    ips: list[str] | None = None,
    exclude: list[str] | None = None,
    controlled: dict[str, PreAllocation] | None = None,
    *,
    cidr: str = "10.6.0.0/24",
    gateway: str = "10.6.0.1",
    route_gw: str = "10.6.0.254",
) -> Subnet:
    return Subnet.from_obj(
        {
            "metadata": {"name": "s1", "uid": "sub-uid", "resourceVersion": "7"},
            "spec": {
                "subnet": cidr,
                "ips": ips if ips is not None else ["10.6.0.10-10.6.0.50"],
                "excludeIPs": exclude or [],
                "gateway": gateway,
                "routes": [{"dst": "172.16.0.0/16", "gw": route_gw}] if ":" not in cidr else [],
            },
            "status": {"controlledIPPools": encode_controlled_pools(controlled or {})},
        }
    )


def v4(*items: str) -> IntervalSet:
    return IntervalSet.from_strings(list(items), 4)


def ints(*ips: str) -> list[int]:
    return sorted(ip_to_int(ip, 4) for ip in ips)


def request(top: TopController | None = None, number: str = "+1", reclaim: bool = True) -> ap.AppRequest:
    flexible = number.startswith("+")
    return ap.AppRequest(
        top=top or deploy(),
        nic="eth0",
        family=4,
        subnet="s1",
        ip_number=IPNumber(flexible, int(number.lstrip("+"))),
        reclaim=reclaim,
    )


def as_pool(action: ap.Action) -> IPPool:
    assert action.pool is not None
    return IPPool.from_obj(action.pool)


# ---- naming


def test_name() -> None:
    assert ap.auto_pool_name("Test-App-1", 4, "eth0", UID) == "auto4-test-app-1-eth0-a5bd3"
    assert ap.auto_pool_name("web", 6, "net1", "abc") == "auto6-web-net1-abc"


def test_name_is_capped_at_253() -> None:
    name = ap.auto_pool_name("a" * 400, 4, "eth0", UID)
    assert len(name) == ap.MAX_NAME_LENGTH
    assert name.startswith("auto4-aaa") and name.endswith("-eth0-a5bd3")


# ---- replicas and size


@pytest.mark.parametrize(
    ("kind", "api", "obj", "expected"),
    [
        ("Deployment", "apps/v1", {"spec": {"replicas": 4}}, 4),
        ("Deployment", "apps/v1", {"spec": {}}, 1),
        ("ReplicaSet", "apps/v1", {"spec": {"replicas": 0}}, 0),
        ("StatefulSet", "apps/v1", {"spec": {"replicas": 2}}, 2),
        ("DaemonSet", "apps/v1", {"status": {"desiredNumberScheduled": 5}}, 5),
        ("DaemonSet", "apps/v1", {}, 0),
        ("Job", "batch/v1", {"spec": {"parallelism": 3}}, 3),
        ("Job", "batch/v1", {"spec": {"parallelism": 0}}, 1),
        ("Job", "batch/v1", {"spec": {"completions": 6}}, 6),
        ("Job", "batch/v1", {"spec": {"completions": 0}}, 1),
        ("Job", "batch/v1", {"spec": {"parallelism": 2, "completions": 7}}, 7),
        ("Job", "batch/v1", {"spec": {"parallelism": 2, "completions": 0}}, 1),
        ("Job", "batch/v1", {"spec": {}}, 1),
        ("CronJob", "batch/v1", {"spec": {"jobTemplate": {"spec": {"parallelism": 4}}}}, 4),
        ("CloneSet", "apps.kruise.io/v1alpha1", {"spec": {"replicas": 3}}, None),
    ],
)
def test_replicas_of(kind: str, api: str, obj: dict[str, Any], expected: int | None) -> None:
    assert ap.replicas_of(TopController(api, kind, "ns", "x", "u", obj)) == expected


def test_desired_size() -> None:
    assert ap.desired_size(IPNumber(True, 2), 3, what="w") == 5
    assert ap.desired_size(IPNumber(False, 2), 3, what="w") == 2
    assert ap.desired_size(IPNumber(False, 2), None, what="w") == 2
    with pytest.raises(ap.AutoPoolError, match=r"CloneSet ns/x: .*use a fixed number"):
        ap.desired_size(IPNumber(True, 2), None, what="CloneSet ns/x")


# ---- free addresses, grow, shrink


def test_subnet_free_subtracts_exclude_controlled_and_reserved() -> None:
    sub = subnet(
        ["10.6.0.10-10.6.0.20"],
        exclude=["10.6.0.10"],
        controlled={
            "other": PreAllocation(("10.6.0.11-10.6.0.12",)),
            "auto": PreAllocation(("10.6.0.20",), "k"),
        },
    )
    free = ap.subnet_free(sub, v4("10.6.0.15"), [v4("10.6.0.19")])
    assert free == v4("10.6.0.13-10.6.0.14", "10.6.0.16-10.6.0.18")


def test_grow_takes_lowest_free() -> None:
    got = ap.grow(v4("10.6.0.13-10.6.0.14", "10.6.0.16-10.6.0.18"), v4("10.6.0.30"), 3)
    assert got == v4("10.6.0.13-10.6.0.14", "10.6.0.16", "10.6.0.30")
    assert ap.grow(v4("10.6.0.1"), v4("10.6.0.5"), 0) == v4("10.6.0.5")


def test_grow_insufficient() -> None:
    with pytest.raises(ap.AutoPoolError, match="insufficient free IPs in the subnet: 3 needed, 2 free"):
        ap.grow(v4("10.6.0.1-10.6.0.2"), IntervalSet(), 3)


def test_shrink_drops_lowest_unallocated() -> None:
    pool = v4("10.6.0.10-10.6.0.15")
    got = ap.shrink(pool, ints("10.6.0.10", "10.6.0.12"), 2)
    assert got == v4("10.6.0.10", "10.6.0.12", "10.6.0.14-10.6.0.15")


def test_shrink_not_enough_free() -> None:
    with pytest.raises(ap.AutoPoolError, match="has 1 unallocated IPs, cannot drop 2"):
        ap.shrink(v4("10.6.0.10-10.6.0.12"), ints("10.6.0.10", "10.6.0.11"), 2)


_addresses = st.lists(st.integers(0, 200), max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    free_pts=_addresses,
    start_pts=_addresses,
    alloc_pick=st.lists(st.integers(0, 10_000), max_size=20),
    need=st.integers(0, 30),
    drop=st.integers(0, 60),
)
def test_grow_then_shrink_never_drops_allocated(
    free_pts: list[int], start_pts: list[int], alloc_pick: list[int], need: int, drop: int
) -> None:
    current = IntervalSet.of((p, p) for p in start_pts)
    free = IntervalSet.of((p, p) for p in free_pts).difference(current)
    try:
        grown = ap.grow(free, current, need)
    except ap.AutoPoolError:
        assert free.size < need
        return
    assert grown.size == current.size + need
    assert grown.difference(current).is_subset(free)  # new addresses come from the subnet's free ones
    assert current.is_subset(grown)
    added = grown.difference(current)
    # the lowest free addresses were taken
    if added:
        assert free.difference(added).first is None or all(
            lo > (added.last or 0) for lo, _ in free.difference(added)
        )
    members = [p for lo, hi in grown for p in range(lo, hi + 1)]
    allocated = sorted({members[i % len(members)] for i in alloc_pick}) if members else []
    try:
        shrunk = ap.shrink(grown, allocated, drop)
    except ap.AutoPoolError:
        assert grown.size - len(allocated) < drop
        return
    assert shrunk.size == grown.size - drop
    assert all(shrunk.contains(ip) for ip in allocated)
    assert shrunk.is_subset(grown)


# ---- affinity and labels


def test_affinity_and_matches_app() -> None:
    top = deploy()
    assert ap.affinity_labels(top) == {
        "ipam.spidernet.io/app-api-group": "apps",
        "ipam.spidernet.io/app-api-version": "v1",
        "ipam.spidernet.io/app-kind": "Deployment",
        "ipam.spidernet.io/app-namespace": "default",
        "ipam.spidernet.io/app-name": "web",
    }
    action = ap.plan(request(top), subnet(), None, [])
    pool = as_pool(action)
    assert ap.is_auto_pool(pool)
    assert ap.matches_app(pool, top)
    assert not ap.matches_app(pool, deploy(name="other"))
    assert not ap.matches_app(pool, TopController("apps/v1", "StatefulSet", "default", "web", UID))


def test_core_group_affinity_is_empty_group() -> None:
    top = TopController("v1", "Pod", "ns", "p", "u")
    assert ap.affinity_labels(top)["ipam.spidernet.io/app-api-group"] == ""
    assert ap.affinity_labels(top)["ipam.spidernet.io/app-api-version"] == "v1"


# ---- plan


def test_plan_create() -> None:
    sub = subnet(controlled={"manual": PreAllocation(("10.6.0.10-10.6.0.11",))})
    action = ap.plan(request(deploy(3), "+1"), sub, None, [], reserved=v4("10.6.0.13"))
    assert action.kind == "create"
    assert action.name == "auto4-web-eth0-a5bd3"
    obj = action.pool
    assert obj is not None
    assert obj["spec"]["ips"] == ["10.6.0.12", "10.6.0.14-10.6.0.16"]
    assert obj["spec"]["gateway"] == "10.6.0.1"
    assert obj["spec"]["routes"] == [{"dst": "172.16.0.0/16", "gw": "10.6.0.254"}]
    assert obj["spec"]["ipVersion"] == 4 and obj["spec"]["subnet"] == "10.6.0.0/24"
    labels = obj["metadata"]["labels"]
    assert labels == {
        "ipam.spidernet.io/ippool-cidr": "10-6-0-0-24",
        "ipam.spidernet.io/owner-spider-subnet": "s1",
        "ipam.spidernet.io/owner-application-gv": "apps_v1",
        "ipam.spidernet.io/owner-application-kind": "Deployment",
        "ipam.spidernet.io/owner-application-namespace": "default",
        "ipam.spidernet.io/owner-application-name": "web",
        "ipam.spidernet.io/owner-application-uid": UID,
        "ipam.spidernet.io/interface": "eth0",
        "ipam.spidernet.io/ip-version": "IPv4",
        "ipam.spidernet.io/ippool-reclaim": "true",
    }
    assert obj["metadata"]["annotations"] == {"ipam.spidernet.io/ippool-ip-number": "+1"}
    owner = obj["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "SpiderSubnet",
        "s1",
        "sub-uid",
        True,
    )
    assert obj["metadata"]["finalizers"] == ["spiderpool.spidernet.io"]
    assert action.pre_allocation == PreAllocation(
        ("10.6.0.12", "10.6.0.14-10.6.0.16"), "apps_v1_Deployment_default_web"
    )


def test_plan_create_fixed_number_and_insufficient() -> None:
    assert as_pool(ap.plan(request(deploy(9), "2"), subnet(), None, [])).ips.size == 2
    with pytest.raises(
        ap.AutoPoolError,
        match=r'Deployment "default/web": auto pool auto4-web-eth0-a5bd3 of SpiderSubnet "s1": insufficient',
    ):
        ap.plan(request(deploy(100), "+0"), subnet(), None, [])


def test_plan_keep_resize_grow_and_shrink() -> None:
    sub = subnet()
    created = ap.plan(request(deploy(2)), sub, None, [])
    pool = as_pool(created)
    assert pool.ips == v4("10.6.0.10-10.6.0.12")
    assert created.pre_allocation is not None
    sub = subnet(controlled={pool.name: created.pre_allocation})
    same = ap.plan(request(deploy(2)), sub, pool, [])
    assert same.kind == "keep"

    grown = ap.plan(request(deploy(4)), sub, pool, [])
    assert grown.kind == "resize" and as_pool(grown).ips == v4("10.6.0.10-10.6.0.14")

    allocated = ints("10.6.0.10", "10.6.0.11")
    shrunk = ap.plan(request(deploy(1)), sub, pool, allocated)
    assert shrunk.kind == "resize" and as_pool(shrunk).ips == v4("10.6.0.10-10.6.0.11")
    with pytest.raises(ap.AutoPoolError, match="cannot drop"):
        ap.plan(request(deploy(0), "+0"), sub, pool, allocated)


def test_plan_grow_skips_other_pools() -> None:
    sub = subnet(
        controlled={"auto4-web-eth0-a5bd3": PreAllocation(("10.6.0.10",)), "x": PreAllocation(("10.6.0.11",))}
    )
    existing = IPPool.from_obj(ap.auto_pool_object("auto4-web-eth0-a5bd3", request(), sub, v4("10.6.0.10")))
    action = ap.plan(request(deploy(2), "+0"), sub, existing, [])
    assert as_pool(action).ips == v4("10.6.0.10", "10.6.0.12")


def test_plan_app_deleted() -> None:
    sub = subnet()
    pool = as_pool(ap.plan(request(), sub, None, []))
    assert ap.plan(None, sub, pool, []).kind == "delete"
    kept = ap.plan(None, sub, pool, ints("10.6.0.10"))
    assert kept.kind == "keep" and "1 IPs still allocated" in kept.reason
    no_reclaim = as_pool(ap.plan(request(reclaim=False), sub, None, []))
    assert ap.plan(None, sub, no_reclaim, []).kind == "keep"
    assert ap.plan(None, sub, None, []).kind == "keep"


def test_reclaim_false_pool_reused_by_same_kind_and_name() -> None:
    sub = subnet()
    old = as_pool(ap.plan(request(deploy(2), reclaim=False), sub, None, []))
    new_uid = "11111111-2222-3333-4444-555556666677"
    new_req = request(deploy(2, uid=new_uid), reclaim=False)
    assert ap.find_auto_pool([old], new_req) == old
    action = ap.plan(new_req, sub, old, [])
    assert action.kind == "resize" and action.name == old.name
    assert "reused" in action.reason
    assert action.pool is not None
    assert action.pool["metadata"]["labels"]["ipam.spidernet.io/owner-application-uid"] == new_uid
    # A different kind of the same name never reuses it (I00016).
    sts = TopController("apps/v1", "StatefulSet", "default", "web", new_uid, {"spec": {"replicas": 2}})
    assert ap.find_auto_pool([old], request(sts, reclaim=False)) is None
    # A reclaim=true pool of an earlier UID is not reused.
    old_reclaim = as_pool(ap.plan(request(deploy(2)), sub, None, []))
    assert ap.find_auto_pool([old_reclaim], request(deploy(2, uid=new_uid))) is None


def test_find_auto_pool_prefers_same_uid() -> None:
    sub = subnet()
    mine = as_pool(ap.plan(request(), sub, None, []))
    other_nic = ap.AppRequest(deploy(), "net1", 4, "s1", IPNumber(True, 1))
    assert ap.find_auto_pool([mine], other_nic) is None
    assert ap.find_auto_pool([mine], request()) == mine


def test_apply_to_merges_into_stored_object() -> None:
    sub = subnet()
    action = ap.plan(request(deploy(1)), sub, None, [])
    stored = {**(action.pool or {}), "status": {"allocatedIPCount": 0}}
    stored["metadata"] = {**stored["metadata"], "resourceVersion": "42", "uid": "pool-uid"}
    grown = ap.plan(request(deploy(3)), sub, IPPool.from_obj(stored), [])
    merged = grown.apply_to(stored)
    assert merged["metadata"]["resourceVersion"] == "42"
    assert merged["status"] == {"allocatedIPCount": 0}
    assert merged["spec"]["ips"] == ["10.6.0.10-10.6.0.13"]
    assert stored["spec"]["ips"] == ["10.6.0.10-10.6.0.11"]  # the input is untouched
    with pytest.raises(ValueError, match="carries no pool"):
        ap.Action("delete", "x", "r").apply_to(stored)


def test_plan_family_mismatch() -> None:
    six = subnet(["fd00::10-fd00::20"], cidr="fd00::/64", gateway="fd00::1", route_gw="fd00::fe")
    with pytest.raises(ap.AutoPoolError, match='SpiderSubnet "s1" is IPv6, not IPv4'):
        ap.plan(request(), six, None, [])


@settings(max_examples=100, deadline=None)
@given(
    taken=st.lists(st.integers(10, 50), max_size=20),
    reserved_pts=st.lists(st.integers(10, 50), max_size=5),
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    alloc_every=st.integers(1, 4),
)
def test_pool_ips_always_inside_subnet_free(
    taken: list[int], reserved_pts: list[int], sizes: list[int], alloc_every: int
) -> None:
    base = ip_to_int("10.6.0.0", 4)
    other = IntervalSet.of((base + t, base + t) for t in taken)
    sub = subnet(controlled={"other": PreAllocation(tuple(other.to_strings(4)))} if other else {})
    reserved = IntervalSet.of((base + r, base + r) for r in reserved_pts)
    pool: IPPool | None = None
    allocated: list[int] = []
    for size in sizes:
        free = ap.subnet_free(sub, reserved, (pool.ips,) if pool else ())
        try:
            action = ap.plan(request(deploy(size), "+0"), sub, pool, allocated, reserved=reserved)
        except ap.AutoPoolError:
            continue
        new = as_pool(action)
        previous = pool.ips if pool else IntervalSet()
        assert new.ips.size == size
        assert new.ips.difference(previous).is_subset(free)
        assert not new.ips.overlaps(other) and not new.ips.overlaps(reserved)
        assert all(new.ips.contains(ip) for ip in allocated)
        pool = new
        members = [p for lo, hi in new.ips for p in range(lo, hi + 1)]
        allocated = members[::alloc_every]
