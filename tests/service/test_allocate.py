"""CNI ADD through the real IpamService on the real SqliteStore: what an allocation returns and records,
which pools it may come from (Spiderpool's rule priority and filters), and how it fails."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from ipam.errors import AllocationError
from ipam.service import AllocatedIP, IpamService, RouteSpec
from ipam.store.sqlite import SqliteStore
from tests.service.conftest import KubeWorld
from tests.service.world import World

SEED = "nginx-ippool-v4"


def ippool(v4: list[str] | None = None, v6: list[str] | None = None) -> dict[str, str]:
    value: dict[str, list[str]] = {}
    if v4 is not None:
        value["ipv4"] = v4
    if v6 is not None:
        value["ipv6"] = v6
    return {"ipam.spidernet.io/ippool": json.dumps(value)}


def seed_pool(world: World, **spec: object) -> None:
    world.pool(SEED, "10.244.0.0/16", ["10.244.100.0-10.244.200.1"], **spec)


def test_seed_pool_gives_lowest_ip_with_subnet_prefix_gateway_and_routes(
    world: World, service: IpamService, store: SqliteStore
) -> None:
    seed_pool(
        world,
        gateway="10.244.0.1",
        routes=[{"dst": "172.16.0.0/16", "gw": "10.244.0.254"}],
    )
    annotations = {
        **ippool([SEED]),
        "ipam.spidernet.io/routes": json.dumps(
            [{"dst": "192.168.50.0/24", "gw": "10.244.0.253"}, {"dst": "fd00:1::/64", "gw": "fd00::1"}]
        ),
    }
    world.pod("nginx-1", annotations=annotations)
    request = world.add("nginx-1")

    got = service.allocate(request)

    assert got.new is True
    assert got.pod == "default/nginx-1" and got.node == "node1"
    assert got.pod_uid == world.uid("nginx-1")
    assert got.ips == (AllocatedIP("eth0", 4, "10.244.100.0", 16, "10.244.0.0/16", SEED, "10.244.0.1"),)
    assert got.ips[0].address == "10.244.100.0/16"
    # Spiderpool's order: pool routes, annotation routes whose gw is in the subnet, then the default
    assert got.routes == (
        RouteSpec("eth0", "172.16.0.0/16", "10.244.0.254"),
        RouteSpec("eth0", "192.168.50.0/24", "10.244.0.253"),
        RouteSpec("eth0", "0.0.0.0/0", "10.244.0.1"),
    )
    assert world.held(SEED) == {"10.244.100.0": ("default/nginx-1", got.pod_uid)}
    assert world.allocated_ips_status(SEED) == {
        "10.244.100.0": {"pod": "default/nginx-1", "podUid": got.pod_uid}
    }
    assert store.get("SpiderIPPool", SEED)["status"]["allocatedIPCount"] == 1
    endpoint = world.endpoint("nginx-1")
    assert endpoint is not None
    current = endpoint["status"]["current"]
    assert current["uid"] == got.pod_uid and current["node"] == "node1"
    assert current["ips"][0]["ipv4"] == "10.244.100.0/16"
    assert current["ips"][0]["ipv4Pool"] == SEED
    assert endpoint["status"]["ownerControllerType"] == "Pod"

    # the next pod gets the next address up
    world.pod("nginx-2", annotations=ippool([SEED]))
    assert service.allocate(world.add("nginx-2")).ips[0].ip == "10.244.100.1"


def test_clean_gateway_drops_only_the_default_route(world: World, service: IpamService) -> None:
    world.pool("gw", "10.5.0.0/24", ["10.5.0.10-10.5.0.20"], gateway="10.5.0.1")
    world.pod(
        "a",
        annotations={
            "ipam.spidernet.io/ippools": json.dumps(
                [{"interface": "eth0", "ipv4": ["gw"], "cleangateway": True}]
            )
        },
    )
    got = service.allocate(world.add("a"))
    assert got.ips[0].ip == "10.5.0.10"
    assert got.routes == ()


def test_repeated_add_returns_the_same_ip_and_writes_nothing(
    world: World, service: IpamService, store: SqliteStore
) -> None:
    seed_pool(world)
    world.pod("a", annotations=ippool([SEED]))
    request = world.add("a")
    first = service.allocate(request)
    revision = store.revision()

    again = service.allocate(request)

    assert again.new is False
    assert again.ips == first.ips and again.routes == first.routes
    assert store.revision() == revision
    assert world.held(SEED) == {"10.244.100.0": ("default/a", first.pod_uid)}


def test_add_from_a_new_container_of_the_same_pod_keeps_the_ip(world: World, service: IpamService) -> None:
    seed_pool(world)
    world.pod("a", annotations=ippool([SEED]))
    first = service.allocate(world.add("a", container="sandbox-1"))
    second = service.allocate(world.add("a", container="sandbox-2"))
    assert second.ips == first.ips and second.new is False
    endpoint = world.endpoint("a")
    assert endpoint is not None
    assert endpoint["metadata"]["annotations"]["spiderbgp.io/container-id"] == "sandbox-2"


def test_add_for_another_pod_uid_is_a_retryable_error(world: World, service: IpamService) -> None:
    seed_pool(world)
    world.pod("a", annotations=ippool([SEED]))
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("a", uid="0b7c7c6e-0000-4000-8000-000000000001"))
    assert info.value.retryable is True
    assert info.value.reason == "uid-mismatch"
    assert "default/a" in str(info.value)
    assert world.held(SEED) == {}


def test_add_for_an_unknown_pod_is_retryable(world: World, service: IpamService) -> None:
    seed_pool(world)
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("ghost"))
    assert info.value.retryable is True and info.value.reason == "pod-not-found"


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pod_is_refused(world: World, service: IpamService, phase: str) -> None:
    seed_pool(world)
    world.pod("a", annotations=ippool([SEED]))
    world.set_phase("a", phase, restart_policy="Never")
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("a"))
    assert info.value.reason == "pod-dead" and info.value.retryable is False
    assert world.held(SEED) == {}
    assert world.endpoint("a") is None


def test_terminating_pod_is_refused(kube_world: KubeWorld) -> None:
    world, service = kube_world.world, kube_world.service
    seed_pool(world)
    world.pod("a", annotations=ippool([SEED]))
    world.terminate_pod("a")
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("a"))
    assert info.value.reason == "pod-dead" and info.value.retryable is False
    assert world.held(SEED) == {}
    assert world.endpoint("a") is None


def test_exhaustion_names_every_pool_and_why(world: World, service: IpamService) -> None:
    world.pool("small-a", "10.6.0.0/24", ["10.6.0.1"])
    world.pool("small-b", "10.6.0.0/24", ["10.6.0.2"])
    world.pool("off", "10.6.0.0/24", ["10.6.0.3"], disable=True)
    names = ["small-a", "small-b", "off"]
    for pod in ("p1", "p2", "p3"):
        world.pod(pod, annotations=ippool(names))
    got = [service.allocate(world.add(p)).ips[0] for p in ("p1", "p2")]
    assert [(a.pool, a.ip) for a in got] == [("small-a", "10.6.0.1"), ("small-b", "10.6.0.2")]

    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("p3"))

    message = str(info.value)
    assert info.value.reason == "exhausted"
    assert "\n" not in message
    assert "pool small-a: all IP addresses used out" in message
    assert "pool small-b: all IP addresses used out" in message
    assert "pool off: disabled" in message
    assert world.endpoint("p3") is None


def test_no_candidate_pool_is_reason_no_pool(world: World, service: IpamService) -> None:
    seed_pool(world)  # not a default pool, and the pod names none
    world.pod("a")
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("a"))
    assert info.value.reason == "no-pool"
    assert "default/a" in str(info.value)


def test_every_candidate_filtered_out_is_reason_no_pool(world: World, service: IpamService) -> None:
    world.pool("only-node2", "10.7.0.0/24", ["10.7.0.1-10.7.0.9"], nodeName=["node2"])
    world.pool("off", "10.7.1.0/24", ["10.7.1.1-10.7.1.9"], disable=True)
    world.pod("a", annotations=ippool(["only-node2", "off"]))
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("a"))
    assert info.value.reason == "no-pool"
    message = str(info.value)
    assert "only-node2" in message and "nodeName" in message
    assert "off: disabled" in message


def test_a_named_pool_that_does_not_exist_fails_the_add(world: World, service: IpamService) -> None:
    seed_pool(world)
    world.pod("a", annotations=ippool(["missing", SEED]))
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("a"))
    assert info.value.reason == "no-pool" and "missing" in str(info.value)
    assert world.held(SEED) == {}


def test_disabled_pools_are_skipped(world: World, service: IpamService) -> None:
    world.pool("off", "10.8.0.0/24", ["10.8.0.1-10.8.0.9"], disable=True)
    world.pool("ok", "10.8.0.0/24", ["10.8.0.20-10.8.0.29"])
    world.pod("a", annotations=ippool(["off", "ok"]))
    got = service.allocate(world.add("a"))
    assert (got.ips[0].pool, got.ips[0].ip) == ("ok", "10.8.0.20")

    # a pool disabled after a pod got its IP still returns it on a repeated ADD, gives no new one
    world.pod("b", annotations=ippool(["ok"]))
    first_b = service.allocate(world.add("b", container="b1"))
    world.patch_pool("ok", disable=True)
    assert service.allocate(world.add("b", container="b1")).ips == first_b.ips
    assert service.has_free(["ok"]) is False
    world.pod("c", annotations=ippool(["ok"]))
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("c"))
    assert info.value.reason == "no-pool"
    assert "pool ok: disabled" in str(info.value)


def test_terminating_pools_are_skipped(kube_world: KubeWorld) -> None:
    world, service = kube_world.world, kube_world.service
    world.pool("going", "10.8.0.0/24", ["10.8.0.10-10.8.0.19"])
    world.pool("ok", "10.8.0.0/24", ["10.8.0.20-10.8.0.29"])
    world.pod("holder", annotations=ippool(["going"]))
    assert service.allocate(world.add("holder")).ips[0].ip == "10.8.0.10"
    world.terminate_pool("going")

    world.pod("a", annotations=ippool(["going", "ok"]))
    got = service.allocate(world.add("a"))
    assert (got.ips[0].pool, got.ips[0].ip) == ("ok", "10.8.0.20")
    assert service.has_free(["going"]) is False
    world.pod("b", annotations=ippool(["going"]))
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("b"))
    assert info.value.reason == "no-pool" and "pool going: terminating" in str(info.value)


def test_reserved_ips_are_never_handed_out(world: World, service: IpamService) -> None:
    world.pool("r", "10.9.0.0/24", ["10.9.0.1-10.9.0.4"])
    world.reserve("keep-off", ["10.9.0.1", "10.9.0.3"])
    got = []
    for name in ("a", "b", "c"):
        world.pod(name, annotations=ippool(["r"]))
    for name in ("a", "b"):
        got.append(service.allocate(world.add(name)).ips[0].ip)
    assert got == ["10.9.0.2", "10.9.0.4"]
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("c"))
    assert info.value.reason == "exhausted"
    assert service.has_free(["r"]) is False


def test_excluded_ips_are_never_handed_out(world: World, service: IpamService) -> None:
    world.pool("x", "10.10.0.0/24", ["10.10.0.1-10.10.0.5"], excludeIPs=["10.10.0.1-10.10.0.2", "10.10.0.4"])
    for name in ("a", "b", "c"):
        world.pod(name, annotations=ippool(["x"]))
    assert [service.allocate(world.add(n)).ips[0].ip for n in ("a", "b")] == ["10.10.0.3", "10.10.0.5"]
    with pytest.raises(AllocationError) as info:
        service.allocate(world.add("c"))
    assert info.value.reason == "exhausted"


def test_dual_stack_gives_one_address_of_each_family(world: World, service: IpamService) -> None:
    world.pool("v4", "10.11.0.0/16", ["10.11.0.10-10.11.0.20"], gateway="10.11.0.1")
    world.pool("v6", "fd00:11::/64", ["fd00:11::10-fd00:11::20"], gateway="fd00:11::1")
    world.pod("a", annotations=ippool(["v4"], ["v6"]))
    got = service.allocate(world.add("a"))
    assert [(i.version, i.ip, i.prefix_len, i.pool) for i in got.ips] == [
        (4, "10.11.0.10", 16, "v4"),
        (6, "fd00:11::10", 64, "v6"),
    ]
    assert set(got.routes) == {
        RouteSpec("eth0", "0.0.0.0/0", "10.11.0.1"),
        RouteSpec("eth0", "::/0", "fd00:11::1"),
    }
    assert world.held("v4") == {"10.11.0.10": ("default/a", got.pod_uid)}
    assert world.held("v6") == {"fd00:11::10": ("default/a", got.pod_uid)}
    endpoint = world.endpoint("a")
    assert endpoint is not None
    nic = endpoint["status"]["current"]["ips"][0]
    assert (nic["ipv4"], nic["ipv6"]) == ("10.11.0.10/16", "fd00:11::10/64")


def test_a_disabled_family_is_not_allocated(world: World, store: SqliteStore) -> None:
    from ipam.service import IpamSettings

    world.pool("v4", "10.12.0.0/16", ["10.12.0.10-10.12.0.20"])
    world.pool("v6", "fd00:12::/64", ["fd00:12::10-fd00:12::20"])
    world.pod("a", annotations=ippool(["v4"], ["v6"]))
    v4_only = IpamService(store, node_name="node1", settings=IpamSettings(enable_ipv6=False))
    got = v4_only.allocate(world.add("a"))
    assert [i.version for i in got.ips] == [4]
    assert world.held("v6") == {}


class TestPriority:
    """Spiderpool §3.2: pod ippools > pod ippool > namespace defaults > CNI defaults > cluster defaults."""

    @pytest.fixture(autouse=True)
    def pools(self, world: World) -> None:
        world.pool("cluster", "10.20.0.0/24", ["10.20.0.1-10.20.0.9"], default=True)
        world.pool("cni", "10.20.1.0/24", ["10.20.1.1-10.20.1.9"])
        world.pool("ns", "10.20.2.0/24", ["10.20.2.1-10.20.2.9"])
        world.pool("pod", "10.20.3.0/24", ["10.20.3.1-10.20.3.9"])
        world.pool("pods", "10.20.4.0/24", ["10.20.4.1-10.20.4.9"])
        world.namespace("plain")
        world.namespace("team", annotations={"ipam.spidernet.io/default-ipv4-ippool": '["ns"]'})

    def pool_of(
        self, service: IpamService, world: World, namespace: str, name: str, v4: Sequence[str] = ()
    ) -> str:
        return service.allocate(world.add(name, namespace, v4=v4)).ips[0].pool

    def test_cluster_default(self, world: World, service: IpamService) -> None:
        world.pod("a", "plain")
        assert self.pool_of(service, world, "plain", "a") == "cluster"

    def test_cni_default_beats_cluster_default(self, world: World, service: IpamService) -> None:
        world.pod("a", "plain")
        assert self.pool_of(service, world, "plain", "a", v4=["cni"]) == "cni"

    def test_namespace_default_beats_cni_default(self, world: World, service: IpamService) -> None:
        world.pod("a", "team")
        assert self.pool_of(service, world, "team", "a", v4=["cni"]) == "ns"

    def test_pod_ippool_beats_namespace_default(self, world: World, service: IpamService) -> None:
        world.pod("a", "team", annotations=ippool(["pod"]))
        assert self.pool_of(service, world, "team", "a", v4=["cni"]) == "pod"

    def test_pod_ippools_beats_ippool(self, world: World, service: IpamService) -> None:
        world.pod(
            "a",
            "team",
            annotations={
                **ippool(["pod"]),
                "ipam.spidernet.io/ippools": json.dumps([{"interface": "eth0", "ipv4": ["pods"]}]),
            },
        )
        assert self.pool_of(service, world, "team", "a", v4=["cni"]) == "pods"

    def test_order_within_a_rule_is_the_written_order(self, world: World, service: IpamService) -> None:
        world.pod("a", "plain", annotations=ippool(["ns", "pod"]))
        world.pod("b", "plain", annotations=ippool(["pod", "ns"]))
        assert self.pool_of(service, world, "plain", "a") == "ns"
        assert self.pool_of(service, world, "plain", "b") == "pod"

    def test_affinity_pool_is_tried_first(self, world: World, service: IpamService) -> None:
        world.patch_pool("pod", nodeName=["node1"])
        world.pod("a", "plain", annotations=ippool(["ns", "pod"]))
        assert self.pool_of(service, world, "plain", "a") == "pod"


def test_node_and_namespace_affinity_filter_pools(world: World, service: IpamService) -> None:
    world.node("node1", {"rack": "r1"})
    world.namespace("blue", labels={"team": "blue"})
    world.pool("rack2", "10.30.0.0/24", ["10.30.0.1-10.30.0.9"], nodeAffinity={"matchLabels": {"rack": "r2"}})
    world.pool(
        "red", "10.30.1.0/24", ["10.30.1.1-10.30.1.9"], namespaceAffinity={"matchLabels": {"team": "red"}}
    )
    world.pool("rack1", "10.30.2.0/24", ["10.30.2.1-10.30.2.9"], nodeAffinity={"matchLabels": {"rack": "r1"}})
    world.pod("a", "blue", annotations=ippool(["rack2", "red", "rack1"]))
    assert service.allocate(world.add("a", "blue")).ips[0].pool == "rack1"


def test_a_remembered_selection_follows_every_input_it_depends_on(
    world: World, store: SqliteStore, service: IpamService
) -> None:
    """The service keeps candidate selections for pods with the same inputs; each input changing
    between two ADDs must still change the outcome (every step is a successful ADD, so the one before
    it was remembered)."""
    world.pool("p1", "10.6.0.0/16", ["10.6.0.1-10.6.0.9"])
    world.pool("p2", "10.7.0.0/16", ["10.7.0.1-10.7.0.9"])
    world.pool("p3", "10.8.0.0/16", ["10.8.0.1-10.8.0.9"])
    world.namespace("team")
    world.node("node1", labels={"rack": "a"})
    owner = world.deployment("web", "team", replicas=30)  # replicas share every input but their name
    names = (f"web-{i}" for i in range(30))

    def add(**pod: object) -> str:
        name = next(names)
        world.pod(name, "team", owner=owner, **pod)  # type: ignore[arg-type]
        return service.allocate(world.add(name, "team", v4=["p1", "p2"])).ips[0].pool

    assert add() == "p1"
    assert add() == "p1"  # the same inputs
    # the pool's spec changes: p1 disabled, the next candidate serves
    world.patch_pool("p1", disable=True)
    assert add() == "p2"
    world.patch_pool("p1", disable=False)
    assert add() == "p1"
    world.patch_pool("p1", namespaceName=["other"])
    assert add() == "p2"
    world.patch_pool("p1", namespaceName=[])
    assert add() == "p1"
    # the namespace gets a default pool: it outranks the CNI default
    ns = store.get("Namespace", "team")
    ns["metadata"]["annotations"] = {"ipam.spidernet.io/default-ipv4-ippool": '["p3"]'}
    store.update(ns)
    assert add() == "p3"
    ns = store.get("Namespace", "team")
    ns["metadata"]["annotations"] = {}
    store.update(ns)
    assert add() == "p1"
    # a pod annotation outranks both
    assert add(annotations=ippool(v4=["p3"])) == "p3"
    # a nodeAffinity the node's labels decide
    world.patch_pool("p1", nodeAffinity={"matchLabels": {"rack": "a"}})
    assert add() == "p1"
    node = store.get("Node", "node1")
    node["metadata"]["labels"] = {"rack": "b"}
    store.update(node)
    assert add() == "p2"
    # a podAffinity the pod's labels decide
    world.patch_pool("p1", nodeAffinity=None, podAffinity={"matchLabels": {"app": "web"}})
    assert add(labels={"app": "web"}) == "p1"
    assert add(labels={"app": "db"}) == "p2"
