"""The AllocationStore contract (ipam.store.protocol), run against every backend of conftest.BACKENDS."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipam.errors import Conflict, NotFound
from ipam.records import Claim, IPRecord, Obj
from ipam.store.protocol import Store

SPIDER = "spiderpool.spidernet.io/v2beta1"


def pool(name: str, subnet: str = "10.0.0.0/24", ips: str = "10.0.0.1-10.0.0.200") -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": subnet, "ips": [ips]},
    }


def endpoint(name: str, uid: str, ip: str, pool_name: str, *, version: str | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if version is not None:
        meta["resourceVersion"] = version
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderEndpoint",
        "metadata": meta,
        "status": {
            "current": {
                "uid": uid,
                "node": "node1",
                "ips": [{"interface": "eth0", "ipv4": f"{ip}/24", "ipv4Pool": pool_name}],
            },
            "ownerControllerType": "Pod",  # required by the SpiderEndpoint CRD
            "ownerControllerName": name,
        },
    }


def as_int(ip: str) -> int:
    return int(ipaddress.ip_address(ip))


def claim(store: Store, pool_name: str, ip: str, pod: str, uid: str) -> None:
    store.commit(claims=[Claim(pool_name, store.usage(pool_name).resource_version, ip, pod, uid)])


def pool_version(store: Store, name: str) -> str:
    version: str = store.get("SpiderIPPool", name)["metadata"]["resourceVersion"]
    return version


# ---------------------------------------------------------------------------------------------- usage / claims


def test_usage_of_new_pool_is_empty_at_its_version(store: Store) -> None:
    created = store.create(pool("p1"))
    usage = store.usage("p1")
    assert usage.pool == "p1"
    assert usage.resource_version == created["metadata"]["resourceVersion"]
    assert list(usage.allocated) == []
    assert store.records("p1") == []
    status = store.get("SpiderIPPool", "p1").get("status", {})
    assert status.get("allocatedIPCount", 0) == 0
    assert "allocatedIPs" not in status


def test_usage_of_unknown_pool_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.usage("ghost")


def test_claim_records_ip_and_bumps_pool(store: Store) -> None:
    store.create(pool("p1"))
    before = store.usage("p1")
    store.commit(claims=[Claim("p1", before.resource_version, "10.0.0.7", "default/web-0", "uid-0")])

    after = store.usage("p1")
    assert after.resource_version != before.resource_version
    assert list(after.allocated) == [as_int("10.0.0.7")]
    assert list(before.allocated) == []  # an earlier snapshot does not change
    assert store.records("p1") == [IPRecord("p1", "10.0.0.7", "default/web-0", "uid-0")]
    got = store.get("SpiderIPPool", "p1")
    assert got["metadata"]["resourceVersion"] == after.resource_version
    assert got["status"]["allocatedIPCount"] == 1
    assert json.loads(got["status"]["allocatedIPs"]) == {
        "10.0.0.7": {"pod": "default/web-0", "podUid": "uid-0"}
    }


def test_allocated_ips_string_format_and_order(store: Store) -> None:
    store.create(pool("p1"))
    version = store.usage("p1").resource_version
    ips = ["10.0.0.10", "10.0.0.2", "10.0.0.100", "10.0.0.9"]
    store.commit(claims=[Claim("p1", version, ip, f"default/pod-{ip}", f"uid-{ip}") for ip in ips])

    text = store.get("SpiderIPPool", "p1")["status"]["allocatedIPs"]
    assert isinstance(text, str)
    assert text.startswith('{"10.0.0.2":{"pod":"default/pod-10.0.0.2","podUid":"uid-10.0.0.2"},')
    assert " " not in text
    decoded = json.loads(text)
    assert list(decoded) == ["10.0.0.2", "10.0.0.9", "10.0.0.10", "10.0.0.100"]  # sorted by IP value
    assert decoded["10.0.0.100"] == {"pod": "default/pod-10.0.0.100", "podUid": "uid-10.0.0.100"}
    (listed,) = store.list("SpiderIPPool")
    assert listed["status"]["allocatedIPs"] == text
    assert listed["status"]["allocatedIPCount"] == 4
    assert list(store.usage("p1").allocated) == sorted(as_int(ip) for ip in ips)
    assert [r.ip for r in store.records("p1")] == ["10.0.0.2", "10.0.0.9", "10.0.0.10", "10.0.0.100"]


def test_ipv6_records_are_canonical_and_ordered(store: Store) -> None:
    store.create(pool("v6", subnet="fd00::/64", ips="fd00::1-fd00::ffff"))
    version = store.usage("v6").resource_version
    store.commit(
        claims=[
            Claim("v6", version, "fd00::5a", "default/a", "ua"),
            Claim("v6", version, "fd00::1:0", "default/b", "ub"),
            Claim("v6", version, "fd00::9", "default/c", "uc"),
        ]
    )
    assert list(store.usage("v6").allocated) == [as_int("fd00::9"), as_int("fd00::5a"), as_int("fd00::1:0")]
    assert list(json.loads(store.get("SpiderIPPool", "v6")["status"]["allocatedIPs"])) == [
        "fd00::9",
        "fd00::5a",
        "fd00::1:0",
    ]


def test_duplicate_ip_is_conflict_and_changes_nothing(store: Store) -> None:
    store.create(pool("p1"))
    claim(store, "p1", "10.0.0.1", "default/a", "ua")
    usage = store.usage("p1")
    with pytest.raises(Conflict) as err:
        store.commit(claims=[Claim("p1", usage.resource_version, "10.0.0.1", "default/b", "ub")])
    assert "10.0.0.1" in str(err.value)
    assert store.usage("p1").resource_version == usage.resource_version
    assert store.records("p1") == [IPRecord("p1", "10.0.0.1", "default/a", "ua")]


def test_duplicate_ip_across_pools_is_conflict(store: Store) -> None:
    store.create(pool("p1"))
    store.create(pool("p2", ips="10.0.0.1-10.0.0.50"))
    claim(store, "p1", "10.0.0.5", "default/a", "ua")
    with pytest.raises(Conflict):
        claim(store, "p2", "10.0.0.5", "default/b", "ub")
    assert store.records("p2") == []
    assert store.records_of_pod("default", "b") == []


def test_stale_pool_version_is_conflict(store: Store) -> None:
    store.create(pool("p1"))
    stale = store.usage("p1")
    claim(store, "p1", "10.0.0.1", "default/a", "ua")  # another writer got there first
    with pytest.raises(Conflict):
        store.commit(claims=[Claim("p1", stale.resource_version, "10.0.0.2", "default/b", "ub")])
    assert [r.ip for r in store.records("p1")] == ["10.0.0.1"]

    # a spec change of the pool (say a new excludeIPs) also invalidates what callers read
    fresh = store.usage("p1")
    obj = store.get("SpiderIPPool", "p1")
    obj["spec"]["excludeIPs"] = ["10.0.0.2"]
    store.update(obj)
    with pytest.raises(Conflict):
        store.commit(claims=[Claim("p1", fresh.resource_version, "10.0.0.2", "default/b", "ub")])
    assert store.records_of_pod("default", "b") == []


def test_several_claims_in_one_commit_use_the_version_read_before(store: Store) -> None:
    store.create(pool("p1"))
    store.create(pool("p2", subnet="10.0.1.0/24", ips="10.0.1.1-10.0.1.9"))
    v1, v2 = store.usage("p1").resource_version, store.usage("p2").resource_version
    store.commit(
        claims=[
            Claim("p1", v1, "10.0.0.1", "default/a", "ua"),
            Claim("p1", v1, "10.0.0.2", "default/b", "ub"),
            Claim("p2", v2, "10.0.1.1", "default/a", "ua"),
        ]
    )
    assert store.get("SpiderIPPool", "p1")["status"]["allocatedIPCount"] == 2
    assert store.get("SpiderIPPool", "p2")["status"]["allocatedIPCount"] == 1
    assert store.records_of_pod("default", "a") == [
        IPRecord("p1", "10.0.0.1", "default/a", "ua"),
        IPRecord("p2", "10.0.1.1", "default/a", "ua"),
    ]


def test_claim_on_missing_pool_fails_and_records_nothing(store: Store) -> None:
    with pytest.raises((NotFound, Conflict)):
        store.commit(claims=[Claim("ghost", "1", "10.9.9.9", "default/a", "ua")])
    assert store.records_of_pod("default", "a") == []


# ---------------------------------------------------------------------------------------------- releases


def test_release_with_matching_uid_removes_record(store: Store) -> None:
    store.create(pool("p1"))
    claim(store, "p1", "10.0.0.1", "default/a", "ua")
    claim(store, "p1", "10.0.0.2", "default/b", "ub")
    before = store.usage("p1")
    store.commit(releases=[IPRecord("p1", "10.0.0.1", "default/a", "ua")])
    after = store.usage("p1")
    assert after.resource_version != before.resource_version
    assert list(after.allocated) == [as_int("10.0.0.2")]
    assert list(before.allocated) == [as_int("10.0.0.1"), as_int("10.0.0.2")]  # snapshots stay as read
    status = store.get("SpiderIPPool", "p1")["status"]
    assert status["allocatedIPCount"] == 1
    assert json.loads(status["allocatedIPs"]) == {"10.0.0.2": {"pod": "default/b", "podUid": "ub"}}

    store.commit(releases=[IPRecord("p1", "10.0.0.2", "default/b", "ub")])
    status = store.get("SpiderIPPool", "p1")["status"]
    assert status["allocatedIPCount"] == 0
    assert "allocatedIPs" not in status  # absent when empty, as in Spiderpool
    assert list(store.usage("p1").allocated) == []


def test_release_with_other_uid_or_absent_ip_is_a_no_op(store: Store) -> None:
    store.create(pool("p1"))
    claim(store, "p1", "10.0.0.1", "default/a", "new-uid")
    usage = store.usage("p1")
    store.commit(
        releases=[
            IPRecord("p1", "10.0.0.1", "default/a", "old-uid"),
            IPRecord("p1", "10.0.0.77", "default/z", "uz"),
        ]
    )
    assert store.records("p1") == [IPRecord("p1", "10.0.0.1", "default/a", "new-uid")]
    assert store.usage("p1").resource_version == usage.resource_version
    assert store.get("SpiderIPPool", "p1")["status"]["allocatedIPCount"] == 1


def test_release_and_claim_of_same_ip_in_one_commit_moves_it(store: Store) -> None:
    store.create(pool("p1"))
    claim(store, "p1", "10.0.0.3", "default/db-0", "old")
    version = store.usage("p1").resource_version
    store.commit(
        releases=[IPRecord("p1", "10.0.0.3", "default/db-0", "old")],
        claims=[Claim("p1", version, "10.0.0.3", "default/db-0", "new")],
    )
    assert store.records("p1") == [IPRecord("p1", "10.0.0.3", "default/db-0", "new")]
    assert list(store.usage("p1").allocated) == [as_int("10.0.0.3")]


# ---------------------------------------------------------------------------------------------- endpoints


def test_endpoint_written_with_the_claim_and_deleted_with_the_release(store: Store) -> None:
    store.create(pool("p1"))
    version = store.usage("p1").resource_version
    store.commit(
        claims=[Claim("p1", version, "10.0.0.4", "default/web", "uw")],
        endpoint=endpoint("web", "uw", "10.0.0.4", "p1"),
    )
    ep = store.get("SpiderEndpoint", "web", "default")
    assert ep["status"]["current"]["uid"] == "uw"
    assert ep["metadata"]["uid"]

    # create-or-replace: a later commit replaces it, honouring its resourceVersion
    replaced = endpoint("web", "uw2", "10.0.0.4", "p1", version=ep["metadata"]["resourceVersion"])
    store.commit(endpoint=replaced)
    ep2 = store.get("SpiderEndpoint", "web", "default")
    assert ep2["status"]["current"]["uid"] == "uw2"
    assert ep2["metadata"]["uid"] == ep["metadata"]["uid"]

    with pytest.raises(Conflict):
        store.commit(
            endpoint=endpoint("web", "uw3", "10.0.0.4", "p1", version=ep["metadata"]["resourceVersion"])
        )
    assert store.get("SpiderEndpoint", "web", "default")["status"]["current"]["uid"] == "uw2"

    store.commit(
        releases=[IPRecord("p1", "10.0.0.4", "default/web", "uw")], delete_endpoint=("default", "web")
    )
    with pytest.raises(NotFound):
        store.get("SpiderEndpoint", "web", "default")
    assert store.records("p1") == []
    # deleting an endpoint that is already gone is not an error (CNI DEL is idempotent)
    store.commit(delete_endpoint=("default", "web"))


def test_records_of_pod_matches_any_uid(store: Store) -> None:
    store.create(pool("p1"))
    claim(store, "p1", "10.0.0.1", "ns1/a", "u1")
    claim(store, "p1", "10.0.0.2", "ns2/a", "u2")
    claim(store, "p1", "10.0.0.3", "ns1/ab", "u3")
    assert store.records_of_pod("ns1", "a") == [IPRecord("p1", "10.0.0.1", "ns1/a", "u1")]
    assert store.records_of_pod("ns1", "nobody") == []


# ---------------------------------------------------------------------------------------------- watch


def test_claims_show_in_the_pool_watch(store: Store) -> None:
    store.create(pool("p1"))
    start = store.revision()
    claim(store, "p1", "10.0.0.1", "default/a", "ua")
    claim(store, "p1", "10.0.0.2", "default/b", "ub")
    events = list(store.watch(["SpiderIPPool"], start, timeout=0.2))
    assert [e.type for e in events] == ["MODIFIED", "MODIFIED"]
    assert [e.object["status"]["allocatedIPCount"] for e in events] == [1, 2]
    assert events[-1].revision == store.usage("p1").resource_version


# ---------------------------------------------------------------------------------------------- model check


OPS = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=1, max_value=40), st.sampled_from(["u1", "u2"])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_usage_and_records_follow_any_sequence_of_commits(
    store: Store, ops: list[tuple[bool, int, str]]
) -> None:
    """Claims and releases in any order: usage() (incrementally cached or not) equals the model."""
    name = f"model-{store.revision()}"
    store.create(pool(name, subnet="10.5.0.0/24", ips="10.5.0.1-10.5.0.40"))
    try:
        check_against_model(store, name, ops)
    finally:
        store.delete("SpiderIPPool", name)


def check_against_model(store: Store, name: str, ops: list[tuple[bool, int, str]]) -> None:
    model: dict[str, str] = {}  # ip -> uid
    held = []
    for is_claim, host, uid in ops:
        ip = f"10.5.0.{host}"
        usage = store.usage(name)
        held.append((usage, sorted(as_int(i) for i in model)))
        if is_claim:
            try:
                store.commit(claims=[Claim(name, usage.resource_version, ip, f"default/p{host}", uid)])
            except Conflict:
                assert ip in model
            else:
                assert ip not in model
                model[ip] = uid
        else:
            store.commit(releases=[IPRecord(name, ip, f"default/p{host}", uid)])
            if model.get(ip) == uid:
                del model[ip]
    assert list(store.usage(name).allocated) == sorted(as_int(i) for i in model)
    assert {r.ip: r.pod_uid for r in store.records(name)} == model
    assert store.get("SpiderIPPool", name)["status"].get("allocatedIPCount", 0) == len(model)
    for usage, expected in held:  # every snapshot still shows what it showed when taken
        assert list(usage.allocated) == expected
