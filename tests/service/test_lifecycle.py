"""Pods coming and going through the real IpamService on the real SqliteStore: StatefulSet fixed IPs,
stateless pods re-created under the same name, CNI DEL / CHECK / GC, and the node view."""

from __future__ import annotations

import json

import pytest

from ipam.errors import AllocationError
from ipam.report import check
from ipam.service import IpamService, ReleaseRequest
from ipam.store.sqlite import SqliteStore
from tests.service.conftest import KubeWorld
from tests.service.world import World

POOL = "p"


@pytest.fixture(autouse=True)
def default_pool(world: World) -> None:
    world.pool(POOL, "10.40.0.0/24", ["10.40.0.10-10.40.0.40"], default=True, gateway="10.40.0.1")


def test_statefulset_pod_recreated_gets_its_ip_back(
    world: World, service: IpamService, store: SqliteStore
) -> None:
    owner = world.statefulset("web", replicas=2)
    world.pod("decoy")
    service.allocate(world.add("decoy"))  # takes .10
    world.pod("web-0", owner=owner)
    add = world.add("web-0")
    first = service.allocate(add)
    assert first.ips[0].ip == "10.40.0.11"
    old_uid = first.pod_uid
    endpoint = world.endpoint("web-0")
    assert endpoint is not None
    assert endpoint["status"]["ownerControllerType"] == "StatefulSet"
    assert "ownerReferences" not in endpoint["metadata"]  # it outlives the pod

    # the kubelet deletes the pod: DEL keeps the IP of a StatefulSet member
    world.delete_pod("web-0")
    kept = service.release(world.delete_request(add))
    assert kept.records == () and "StatefulSet" in kept.kept_reason
    # meanwhile another pod takes the next free IP: web-0's stays reserved for it
    world.pod("other")
    assert service.allocate(world.add("other")).ips[0].ip == "10.40.0.12"

    world.pod("web-0", owner=owner, node="node2")
    new_uid = world.uid("web-0")
    assert new_uid != old_uid
    again = service.allocate(world.add("web-0"))

    assert again.ips == first.ips
    assert again.pod_uid == new_uid and again.node == "node2"
    assert world.held(POOL)["10.40.0.11"] == ("default/web-0", new_uid)
    assert world.allocated_ips_status(POOL)["10.40.0.11"] == {"pod": "default/web-0", "podUid": new_uid}
    endpoint = world.endpoint("web-0")
    assert endpoint is not None
    assert endpoint["status"]["current"]["uid"] == new_uid
    assert endpoint["status"]["current"]["node"] == "node2"
    assert check(store)[1] == 0


def test_statefulset_scaled_down_member_is_released_on_del(world: World, service: IpamService) -> None:
    owner = world.statefulset("db", replicas=2)
    world.pod("db-1", owner=owner)
    add = world.add("db-1")
    got = service.allocate(add)
    world.scale_statefulset("db", 1)
    world.delete_pod("db-1")
    released = service.release(world.delete_request(add))
    assert [r.ip for r in released.records] == [got.ips[0].ip]
    assert world.held(POOL) == {} and world.endpoint("db-1") is None


def test_statefulset_pool_change_moves_the_pod_to_the_new_pool(world: World, service: IpamService) -> None:
    world.pool("q", "10.41.0.0/24", ["10.41.0.10-10.41.0.20"])
    owner = world.statefulset("web")
    world.pod("web-0", owner=owner)
    first = service.allocate(world.add("web-0"))
    assert first.ips[0].pool == POOL
    world.delete_pod("web-0")
    world.pod("web-0", owner=owner, annotations={"ipam.spidernet.io/ippool": json.dumps({"ipv4": ["q"]})})
    moved = service.allocate(world.add("web-0"))
    assert (moved.ips[0].pool, moved.ips[0].ip) == ("q", "10.41.0.10")
    assert world.held(POOL) == {}
    assert world.held("q") == {"10.41.0.10": ("default/web-0", moved.pod_uid)}


def test_stateless_pod_recreated_under_the_same_name_gets_a_fresh_allocation(
    world: World, service: IpamService, store: SqliteStore
) -> None:
    owner = world.deployment("app")
    world.pod("app-1", owner=owner)
    first = service.allocate(world.add("app-1"))
    endpoint = world.endpoint("app-1")
    assert endpoint is not None
    assert endpoint["status"]["ownerControllerType"] == "Deployment"
    assert endpoint["status"]["ownerControllerName"] == "app"
    # the pod vanishes without a DEL (node crash), a new one of the same name appears
    world.delete_pod("app-1")
    world.pod("blocker")
    blocker = service.allocate(world.add("blocker"))
    assert blocker.ips[0].ip == "10.40.0.11"
    world.pod("app-1", owner=owner)

    again = service.allocate(world.add("app-1"))

    assert again.new is True and again.pod_uid != first.pod_uid
    assert again.ips[0].ip == "10.40.0.12"
    held = world.held(POOL)
    assert first.ips[0].ip not in held  # the stale endpoint's IP went back in the same commit
    assert held["10.40.0.12"] == ("default/app-1", again.pod_uid)
    endpoint = world.endpoint("app-1")
    assert endpoint is not None and endpoint["status"]["current"]["uid"] == again.pod_uid
    assert check(store)[1] == 0


def test_del_of_a_live_pod_keeps_the_ip(world: World, service: IpamService) -> None:
    world.pod("a")
    add = world.add("a")
    got = service.allocate(add)
    result = service.release(world.delete_request(add))
    assert result.records == () and "alive" in result.kept_reason
    assert world.held(POOL) == {got.ips[0].ip: ("default/a", got.pod_uid)}
    assert world.endpoint("a") is not None


def test_del_after_the_pod_is_deleted_releases(world: World, service: IpamService) -> None:
    world.pod("a")
    add = world.add("a")
    got = service.allocate(add)
    world.delete_pod("a")
    result = service.release(world.delete_request(add))
    assert [r.ip for r in result.records] == [got.ips[0].ip]
    assert result.node == "node1"
    assert world.held(POOL) == {} and world.endpoint("a") is None
    # a second DEL of the same container succeeds and does nothing
    assert service.release(world.delete_request(add)).records == ()


def test_del_of_a_finished_pod_releases(world: World, service: IpamService) -> None:
    world.pod("job-1")
    add = world.add("job-1")
    service.allocate(add)
    world.set_phase("job-1", "Succeeded", restart_policy="OnFailure")
    assert len(service.release(world.delete_request(add)).records) == 1
    assert world.held(POOL) == {}


def test_del_after_the_pod_is_terminating_releases(kube_world: KubeWorld) -> None:
    world, service = kube_world.world, kube_world.service
    world.pool("k", "10.42.0.0/24", ["10.42.0.10-10.42.0.20"], default=True)
    world.pod("a")
    add = world.add("a")
    got = service.allocate(add)
    world.terminate_pod("a")
    result = service.release(world.delete_request(add))
    assert [r.ip for r in result.records] == [got.ips[0].ip]
    assert world.held("k") == {}


def test_del_of_a_deleted_pod_without_uid_is_left_to_gc(world: World, service: IpamService) -> None:
    world.pod("a")
    add = world.add("a")
    service.allocate(add)
    world.delete_pod("a")
    result = service.release(world.delete_request(add, uid=""))
    assert result.records == () and "GC" in result.kept_reason
    assert len(world.held(POOL)) == 1


def test_del_of_unknown_things_succeeds(world: World, service: IpamService, store: SqliteStore) -> None:
    world.pod("a")
    revision = store.revision()
    for request in (
        ReleaseRequest("c-none", "eth0", "default", "a", world.uid("a")),  # pod without allocation
        ReleaseRequest("c-none", "eth0", "default", "ghost", "9b0c5b1e-0000-4000-8000-000000000000"),
        ReleaseRequest("", "eth0", "nowhere", "ghost"),
    ):
        assert service.release(request).records == ()
    assert store.revision() == revision


def test_del_with_another_container_id_keeps_the_ip(world: World, service: IpamService) -> None:
    world.pod("a")
    add = world.add("a", container="current")
    service.allocate(add)
    world.delete_pod("a")
    result = service.release(world.delete_request(add, container="old-sandbox"))
    assert result.records == () and "current" in result.kept_reason
    assert len(world.held(POOL)) == 1
    # the right container then releases it
    assert len(service.release(world.delete_request(add)).records) == 1


def test_del_with_another_pod_uid_keeps_the_ip(world: World, service: IpamService) -> None:
    world.pod("a")
    add = world.add("a")
    service.allocate(add)
    world.delete_pod("a")
    result = service.release(world.delete_request(add, uid="6a1f0b7e-0000-4000-8000-000000000000"))
    assert result.records == ()
    assert len(world.held(POOL)) == 1


def test_check_success_and_mismatch(world: World, service: IpamService, store: SqliteStore) -> None:
    world.pod("a")
    add = world.add("a")
    got = service.allocate(add)
    request = world.delete_request(add)
    service.check(request, [got.ips[0].ip])

    with pytest.raises(AllocationError) as info:
        service.check(request, ["10.40.0.99"])
    assert "10.40.0.99" in str(info.value) and got.ips[0].ip in str(info.value)
    with pytest.raises(AllocationError):
        service.check(request, [])
    with pytest.raises(AllocationError) as info:
        service.check(world.delete_request(add, container="someone-else"), [got.ips[0].ip])
    assert add.container_id in str(info.value)
    with pytest.raises(AllocationError) as info:
        service.check(ReleaseRequest("c", "eth0", "default", "ghost"), [])
    assert info.value.reason == "mismatch"

    # the record vanished behind the endpoint's back (e.g. a forced ipam release)
    store.commit(releases=store.records(POOL))
    with pytest.raises(AllocationError) as info:
        service.check(request, [got.ips[0].ip])
    assert info.value.reason == "mismatch" and "no pool record" in str(info.value)


def test_gc_attachments_releases_only_stale_attachments_of_its_network_and_node(
    world: World, service: IpamService
) -> None:
    adds = {}
    for name, node, network in (
        ("stale", "node1", "net-a"),
        ("valid", "node1", "net-a"),
        ("elsewhere", "node2", "net-a"),
        ("other-net", "node1", "net-b"),
        ("alive", "node1", "net-a"),
    ):
        world.pod(name, node=node)
        adds[name] = world.add(name, container=f"ctr-{name}", network=network)
        service.allocate(adds[name])
    for name in ("stale", "valid", "elsewhere", "other-net"):
        world.delete_pod(name)
    before = world.held(POOL)

    released = service.gc_attachments("net-a", {("ctr-valid", "eth0")})

    assert [r.pod for r in released] == ["default/stale"]
    after = world.held(POOL)
    assert set(before) - set(after) == {released[0].ip}
    assert world.endpoint("stale") is None
    for name in ("valid", "elsewhere", "other-net", "alive"):
        assert world.endpoint(name) is not None
    # a second run finds nothing more
    assert service.gc_attachments("net-a", {("ctr-valid", "eth0")}) == []


def test_node_ips_lists_this_nodes_addresses(world: World, service: IpamService) -> None:
    world.pool("v6", "fd00:40::/64", ["fd00:40::10-fd00:40::20"], default=True)
    world.pod("here")
    world.pod("there", node="node2")
    here = service.allocate(world.add("here"))
    there = service.allocate(world.add("there"))
    assert service.node_ips() == {
        here.ips[0].ip: "10.40.0.0/24",
        here.ips[1].ip: "fd00:40::/64",
    }
    assert service.node_ips("node2") == {
        there.ips[0].ip: "10.40.0.0/24",
        there.ips[1].ip: "fd00:40::/64",
    }
    assert service.node_ips("node3") == {}


def test_two_nics_from_two_pools_and_del_releases_both(world: World, service: IpamService) -> None:
    world.pool("net1-pool", "10.43.0.0/24", ["10.43.0.10-10.43.0.20"])
    annotations = {
        "ipam.spidernet.io/ippools": json.dumps(
            [{"interface": "eth0", "ipv4": [POOL]}, {"interface": "net1", "ipv4": ["net1-pool"]}]
        )
    }
    world.pod("multi", annotations=annotations)
    eth0 = service.allocate(world.add("multi", container="ctr"))
    net1 = service.allocate(world.add("multi", container="ctr", nic="net1"))
    assert [(i.nic, i.ip) for i in eth0.ips] == [("eth0", "10.40.0.10")]
    assert [(i.nic, i.ip) for i in net1.ips] == [("net1", "10.43.0.10")]
    endpoint = world.endpoint("multi")
    assert endpoint is not None
    assert [n["interface"] for n in endpoint["status"]["current"]["ips"]] == ["eth0", "net1"]
    world.delete_pod("multi")
    released = service.release(world.delete_request(world.add("multi", container="ctr", uid=eth0.pod_uid)))
    assert sorted(r.ip for r in released.records) == ["10.40.0.10", "10.43.0.10"]
    assert world.held(POOL) == {} and world.held("net1-pool") == {}


def _two_nics(items: list[dict[str, object]]) -> dict[str, str]:
    return {"ipam.spidernet.io/ippools": json.dumps(items)}


def test_the_first_add_allocates_every_nic_of_the_ippools_annotation(
    world: World, service: IpamService, store: SqliteStore
) -> None:
    """Spiderpool §3.10: eth0's ADD allocates net1 too; net1's ADD returns it and writes nothing."""
    world.pool("net1-pool", "10.43.0.0/24", ["10.43.0.10-10.43.0.20"], gateway="10.43.0.1")
    world.pod(
        "multi",
        annotations={
            **_two_nics(
                [{"interface": "eth0", "ipv4": [POOL]}, {"interface": "net1", "ipv4": ["net1-pool"]}]
            ),
            "ipam.spidernet.io/routes": json.dumps([{"dst": "172.30.0.0/16", "gw": "10.43.0.1"}]),
        },
    )
    eth0 = service.allocate(world.add("multi", container="ctr"))
    assert [(i.nic, i.ip) for i in eth0.ips] == [("eth0", "10.40.0.10")]
    assert world.held("net1-pool") == {"10.43.0.10": ("default/multi", eth0.pod_uid)}
    endpoint = world.endpoint("multi")
    assert endpoint is not None
    entries = endpoint["status"]["current"]["ips"]
    assert [(n["interface"], n["ipv4"]) for n in entries] == [
        ("eth0", "10.40.0.10/24"),
        ("net1", "10.43.0.10/24"),
    ]
    revision = store.revision()

    net1 = service.allocate(world.add("multi", container="ctr", nic="net1"))

    assert [(i.nic, i.ip, i.pool) for i in net1.ips] == [("net1", "10.43.0.10", "net1-pool")]
    # the annotation route goes to the NIC whose subnet holds its gateway, as in Spiderpool
    assert [(r.nic, r.dst, r.gw) for r in net1.routes] == [
        ("net1", "172.30.0.0/16", "10.43.0.1"),
        ("net1", "0.0.0.0/0", "10.43.0.1"),
    ]
    assert [(r.dst, r.gw) for r in eth0.routes] == [("0.0.0.0/0", "10.40.0.1")]
    assert store.revision() == revision


def test_a_later_nic_that_cannot_be_allocated_fails_the_first_add_and_stores_nothing(
    world: World, service: IpamService, store: SqliteStore
) -> None:
    world.pool("tiny", "10.44.0.0/24", ["10.44.0.10"])
    world.pod(
        "multi",
        annotations=_two_nics(
            [{"interface": "eth0", "ipv4": [POOL]}, {"interface": "net1", "ipv4": ["tiny"]}]
        ),
    )
    world.pod("taker", annotations=_two_nics([{"interface": "eth0", "ipv4": ["tiny"]}]))
    service.allocate(world.add("taker"))
    revision = store.revision()
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("multi"))
    assert "net1" in str(info.value) and "tiny" in str(info.value)
    assert store.revision() == revision
    assert world.endpoint("multi") is None
    assert set(world.held(POOL)) == set()


def test_no_name_ippools_entries_are_named_by_the_later_adds_in_order(
    world: World, service: IpamService
) -> None:
    """Without interface names, item i is the i-th NIC: the first ADD records the others unnamed and
    each later ADD takes the first unnamed entry (Spiderpool's UpdateAllocationNICName)."""
    world.pool("second", "10.45.0.0/24", ["10.45.0.10-10.45.0.20"])
    world.pool("third", "10.46.0.0/24", ["10.46.0.10-10.46.0.20"])
    world.pod("multi", annotations=_two_nics([{"ipv4": [POOL]}, {"ipv4": ["second"]}, {"ipv4": ["third"]}]))
    eth0 = service.allocate(world.add("multi", container="ctr"))
    endpoint = world.endpoint("multi")
    assert endpoint is not None
    assert [n["interface"] for n in endpoint["status"]["current"]["ips"]] == ["eth0", "", ""]

    net1 = service.allocate(world.add("multi", container="ctr", nic="net1"))
    again = service.allocate(world.add("multi", container="ctr", nic="net1"))
    net2 = service.allocate(world.add("multi", container="ctr", nic="net2"))

    assert [(a.ips[0].nic, a.ips[0].ip) for a in (eth0, net1, again, net2)] == [
        ("eth0", "10.40.0.10"),
        ("net1", "10.45.0.10"),
        ("net1", "10.45.0.10"),
        ("net2", "10.46.0.10"),
    ]
    endpoint = world.endpoint("multi")
    assert endpoint is not None
    assert [n["interface"] for n in endpoint["status"]["current"]["ips"]] == ["eth0", "net1", "net2"]


def test_multi_nic_ippools_on_the_kubernetes_store(kube_world: KubeWorld) -> None:
    """The same flow through the KubeStore (Spiderpool's in-object records) and the API emulator."""
    world, service = kube_world.world, kube_world.service
    world.pool("k1", "10.47.0.0/24", ["10.47.0.10-10.47.0.20"])
    world.pool("k2", "10.48.0.0/24", ["10.48.0.10-10.48.0.20"])
    world.pod("multi", annotations=_two_nics([{"ipv4": ["k1"]}, {"ipv4": ["k2"]}]))
    eth0 = service.allocate(world.add("multi", container="ctr"))
    assert world.held("k2") == {"10.48.0.10": ("default/multi", eth0.pod_uid)}
    net1 = service.allocate(world.add("multi", container="ctr", nic="net1"))
    assert (eth0.ips[0].ip, net1.ips[0].ip) == ("10.47.0.10", "10.48.0.10")
    endpoint = world.endpoint("multi")
    assert endpoint is not None
    assert [n["interface"] for n in endpoint["status"]["current"]["ips"]] == ["eth0", "net1"]
    world.delete_pod("multi")
    released = service.release(world.delete_request(world.add("multi", container="ctr", uid=eth0.pod_uid)))
    assert sorted(r.ip for r in released.records) == ["10.47.0.10", "10.48.0.10"]


def test_two_nics_naming_one_pool_share_its_address(world: World, service: IpamService) -> None:
    """Spiderpool #4295: a pod UID never holds two IPs of one pool, so both NICs get the same one."""
    world.pod(
        "multi",
        annotations=_two_nics([{"interface": "eth0", "ipv4": [POOL]}, {"interface": "net1", "ipv4": [POOL]}]),
    )
    eth0 = service.allocate(world.add("multi"))
    net1 = service.allocate(world.add("multi", nic="net1"))
    assert eth0.ips[0].ip == net1.ips[0].ip == "10.40.0.10"
    assert world.held(POOL) == {"10.40.0.10": ("default/multi", eth0.pod_uid)}


def test_statefulset_pod_with_two_nics_moves_every_record_to_the_new_uid(
    world: World, service: IpamService, store: SqliteStore
) -> None:
    world.pool("net1-pool", "10.43.0.0/24", ["10.43.0.10-10.43.0.20"])
    owner = world.statefulset("web")
    annotations = {
        "ipam.spidernet.io/ippools": json.dumps(
            [{"interface": "eth0", "ipv4": [POOL]}, {"interface": "net1", "ipv4": ["net1-pool"]}]
        )
    }
    world.pod("web-0", owner=owner, annotations=annotations)
    for nic in ("eth0", "net1"):
        service.allocate(world.add("web-0", container="ctr-1", nic=nic))
    world.delete_pod("web-0")
    world.pod("web-0", owner=owner, annotations=annotations)
    new_uid = world.uid("web-0")

    eth0 = service.allocate(world.add("web-0", container="ctr-2"))
    net1 = service.allocate(world.add("web-0", container="ctr-2", nic="net1"))

    assert (eth0.ips[0].ip, net1.ips[0].ip) == ("10.40.0.10", "10.43.0.10")
    assert world.held(POOL) == {"10.40.0.10": ("default/web-0", new_uid)}
    assert world.held("net1-pool") == {"10.43.0.10": ("default/web-0", new_uid)}
    report, problems = check(store)
    assert problems == 0, report
