"""spiderbgp.node_addresses: watch events become announcer deltas for this node only."""

from __future__ import annotations

from ipam.records import Obj, WatchEvent
from spiderbgp.node_addresses import NodeAddresses


def endpoint(name: str, node: str, *cidrs: str) -> Obj:
    ips = [{"interface": f"eth{i}", "ipv4": cidr, "ipv4Pool": "p"} for i, cidr in enumerate(cidrs)]
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderEndpoint",
        "metadata": {"name": name, "namespace": "default"},
        "status": {
            "current": {"uid": f"uid-{name}", "node": node, "ips": ips},
            "ownerControllerType": "Pod",
            "ownerControllerName": name,
        },
    }


def pool(name: str, subnet: str) -> Obj:
    return {"kind": "SpiderIPPool", "metadata": {"name": name}, "spec": {"subnet": subnet}}


def ev(kind: str, obj: Obj, rev: int = 1) -> WatchEvent:
    return WatchEvent(kind, obj, str(rev))  # type: ignore[arg-type]


def test_reset_keeps_only_this_nodes_addresses() -> None:
    tracker = NodeAddresses("node1")
    ips, subnets = tracker.reset(
        [endpoint("a", "node1", "10.0.0.1/16"), endpoint("b", "node2", "10.0.0.2/16")],
        [pool("p", "10.0.0.0/16"), pool("q", "10.0.0.0/16"), pool("r", "fd00::/64")],
    )
    assert ips == {"10.0.0.1": "10.0.0.0/16"}
    assert subnets == ["10.0.0.0/16", "fd00::/64"]


def test_events_give_deltas_and_ignore_other_nodes() -> None:
    tracker = NodeAddresses("node1")
    tracker.reset([], [pool("p", "10.0.0.0/16")])
    delta = tracker.apply([ev("ADDED", endpoint("a", "node1", "10.0.0.1/16"))])
    assert delta.added == {"10.0.0.1": "10.0.0.0/16"} and not delta.removed and delta.subnets is None
    assert tracker.apply([ev("ADDED", endpoint("b", "node2", "10.0.0.2/16"))]).empty
    assert tracker.apply([ev("MODIFIED", endpoint("a", "node1", "10.0.0.1/16"))]).empty  # nothing new
    moved = tracker.apply([ev("MODIFIED", endpoint("a", "node2", "10.0.0.1/16"))])  # pod now elsewhere
    assert moved.removed == ["10.0.0.1"] and not moved.added
    tracker.apply([ev("ADDED", endpoint("c", "node1", "10.0.0.3/16"))])
    gone = tracker.apply([ev("DELETED", endpoint("c", "node1", "10.0.0.3/16"))])
    assert gone.removed == ["10.0.0.3"]


def test_pool_events_change_the_subnets_only_when_a_subnet_changes() -> None:
    tracker = NodeAddresses("node1")
    tracker.reset([], [pool("p", "10.0.0.0/16")])
    assert tracker.apply([ev("MODIFIED", pool("p", "10.0.0.0/16"))]).subnets is None  # a claim bumped it
    assert tracker.apply([ev("ADDED", pool("q", "10.1.0.0/16"))]).subnets == ["10.0.0.0/16", "10.1.0.0/16"]
    assert tracker.apply([ev("DELETED", pool("p", "10.0.0.0/16"))]).subnets == ["10.1.0.0/16"]


def test_an_address_that_moves_between_endpoints_in_one_batch_is_not_withdrawn() -> None:
    tracker = NodeAddresses("node1")
    tracker.reset([endpoint("a", "node1", "10.0.0.1/16")], [pool("p", "10.0.0.0/16")])
    delta = tracker.apply(
        [
            ev("DELETED", endpoint("a", "node1", "10.0.0.1/16")),
            ev("ADDED", endpoint("a2", "node1", "10.0.0.1/16")),
        ]
    )
    assert delta.removed == [] and delta.added == {"10.0.0.1": "10.0.0.0/16"}
