"""spiderbgp.pod_readiness: Pod and SpiderEndpoint watch events become readiness changes of this
node's addresses (announceWhen: ready)."""

from __future__ import annotations

from typing import Any

from ipam.records import Obj, WatchEvent
from spiderbgp.pod_readiness import ReadyAddresses, pod_is_ready


def endpoint(name: str, node: str, *cidrs: str, uid: str = "") -> Obj:
    ips = [{"interface": f"eth{i}", "ipv4": cidr, "ipv4Pool": "p"} for i, cidr in enumerate(cidrs)]
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderEndpoint",
        "metadata": {"name": name, "namespace": "default"},
        "status": {
            "current": {"uid": uid or f"uid-{name}", "node": node, "ips": ips},
            "ownerControllerType": "Pod",
            "ownerControllerName": name,
        },
    }


def pod(name: str, node: str = "node1", *, ready: bool | None, uid: str = "", **extra: Any) -> Obj:
    status: dict[str, Any] = {"phase": extra.pop("phase", "Running")}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    meta = {"name": name, "namespace": "default", "uid": uid or f"uid-{name}", **extra}
    return {"kind": "Pod", "metadata": meta, "spec": {"nodeName": node}, "status": status}


def ev(kind: str, obj: Obj) -> WatchEvent:
    return WatchEvent(kind, obj, "1")  # type: ignore[arg-type]


def test_ready_means_the_ready_condition_and_not_terminating_or_finished() -> None:
    assert pod_is_ready(pod("a", ready=True))
    assert not pod_is_ready(pod("a", ready=False))
    assert not pod_is_ready(pod("a", ready=None))  # the kubelet has not said yet
    assert not pod_is_ready(pod("a", ready=True, deletionTimestamp="2026-01-01T00:00:00Z"))
    assert not pod_is_ready(pod("a", ready=True, phase="Succeeded"))
    assert not pod_is_ready({"kind": "Pod", "status": "garbage"})


def test_reset_gives_the_ready_addresses_of_this_node_only() -> None:
    tracker = ReadyAddresses("node1")
    ready = tracker.reset(
        [
            endpoint("a", "node1", "10.0.0.1/16"),
            endpoint("b", "node1", "10.0.0.2/16"),
            endpoint("c", "node2", "10.0.0.3/16"),
        ],
        [pod("a", ready=True), pod("b", ready=False), pod("c", "node2", ready=True)],
    )
    assert ready == {"10.0.0.1"}


def test_events_turn_addresses_ready_and_back() -> None:
    tracker = ReadyAddresses("node1")
    tracker.reset([], [])
    assert tracker.apply([ev("ADDED", pod("a", ready=False))]) == {}
    assert tracker.apply([ev("ADDED", endpoint("a", "node1", "10.0.0.1/16"))]) == {}
    assert tracker.apply([ev("MODIFIED", pod("a", ready=True))]) == {"10.0.0.1": True}
    assert tracker.apply([ev("MODIFIED", pod("a", ready=True))]) == {}  # no change, no news
    terminating = pod("a", ready=True, deletionTimestamp="2026-01-01T00:00:00Z")
    assert tracker.apply([ev("MODIFIED", terminating)]) == {"10.0.0.1": False}
    # one batch: ready, then the endpoint goes: the last word counts
    tracker.apply([ev("MODIFIED", pod("a", ready=True))])
    batch = [ev("MODIFIED", pod("a", ready=False)), ev("MODIFIED", pod("a", ready=True))]
    assert tracker.apply(batch) == {}
    assert tracker.apply([ev("DELETED", endpoint("a", "node1", "10.0.0.1/16"))]) == {"10.0.0.1": False}


def test_a_recreated_pod_of_the_same_name_is_judged_on_its_own_status() -> None:
    tracker = ReadyAddresses("node1")
    tracker.reset(
        [endpoint("web-0", "node1", "10.0.0.7/16", uid="old")], [pod("web-0", ready=True, uid="old")]
    )
    assert tracker.ready() == {"10.0.0.7"}
    # the new pod object exists (not ready yet) while the old endpoint is still there
    assert tracker.apply([ev("MODIFIED", pod("web-0", ready=False, uid="new"))]) == {"10.0.0.7": False}
    assert tracker.apply([ev("MODIFIED", pod("web-0", ready=True, uid="new"))]) == {}  # old endpoint
    assert tracker.apply([ev("MODIFIED", endpoint("web-0", "node1", "10.0.0.7/16", uid="new"))]) == {
        "10.0.0.7": True
    }


def test_other_kinds_and_other_nodes_pods_are_ignored() -> None:
    tracker = ReadyAddresses("node1")
    tracker.reset([endpoint("a", "node1", "10.0.0.1/16")], [])
    assert tracker.apply([ev("ADDED", pod("a", "node2", ready=True))]) == {}
    assert tracker.apply([ev("ADDED", {"kind": "SpiderIPPool", "metadata": {"name": "p"}})]) == {}
