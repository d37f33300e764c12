"""ownerReferences garbage collection and namespace termination as a cluster does them: background,
foreground (with blockOwnerDeletion) and orphan deletion, the terminating states they produce, and
what it means for the agent's objects (an endpoint goes with its pod only once its IPs are released)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ipam.kinds import kind_info
from ipam.model import FINALIZER
from ipam.service import AllocateRequest, IpamService, IpamSettings, ReleaseRequest
from ipam.store.kube import KubeStore
from ipam.store.kube_api import resource_path
from tests.kube_emulator import KubeEmulator

SPIDER = "spiderpool.spidernet.io/v2beta1"
Obj = dict[str, Any]
HOLD = "example.com/hold"


def http(emulator: KubeEmulator, method: str, path: str, body: Obj | None = None) -> tuple[int, Any]:
    return emulator.call(method, path, body)


def ref(owner: Obj, *, block: bool = False) -> Obj:
    out = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    if block:
        out["blockOwnerDeletion"] = True
    return out


def pod(emulator: KubeEmulator, name: str, namespace: str = "default") -> Obj:
    return emulator.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        }
    )


def endpoint(
    emulator: KubeEmulator, owner: Obj, *, block: bool = False, finalizers: tuple[str, ...] = ()
) -> Obj:
    meta: Obj = {"name": owner["metadata"]["name"], "namespace": owner["metadata"]["namespace"]}
    meta["ownerReferences"] = [ref(owner, block=block)]
    if finalizers:
        meta["finalizers"] = list(finalizers)
    return emulator.put(
        {
            "apiVersion": SPIDER,
            "kind": "SpiderEndpoint",
            "metadata": meta,
            "status": {
                "current": {"uid": "u", "node": "n"},
                "ownerControllerType": "Pod",
                "ownerControllerName": "a",
            },
        }
    )


def delete(
    emulator: KubeEmulator, kind: str, name: str, namespace: str = "", policy: str = ""
) -> tuple[int, Any]:
    body = {"propagationPolicy": policy} if policy else None
    return http(emulator, "DELETE", resource_path(kind_info(kind), namespace, name), body)


def test_background_deletion_takes_the_dependents_once_the_owner_is_gone(kube_emulator: KubeEmulator) -> None:
    owner = pod(kube_emulator, "a")
    endpoint(kube_emulator, owner)
    code, _ = delete(kube_emulator, "Pod", "a", "default")
    assert code == 200
    assert kube_emulator.stored("Pod", "a", "default") is None
    assert kube_emulator.stored("SpiderEndpoint", "a", "default") is None


def test_a_dependent_with_a_finalizer_stays_terminating(kube_emulator: KubeEmulator) -> None:
    owner = pod(kube_emulator, "a")
    endpoint(kube_emulator, owner, finalizers=(FINALIZER,))
    delete(kube_emulator, "Pod", "a", "default")
    ep = kube_emulator.stored("SpiderEndpoint", "a", "default")
    assert ep is not None and ep["metadata"]["deletionTimestamp"]
    assert ep["metadata"]["finalizers"] == [FINALIZER]


def test_a_dependent_with_another_live_owner_only_loses_the_reference(kube_emulator: KubeEmulator) -> None:
    a, b = pod(kube_emulator, "a"), pod(kube_emulator, "b")
    ep = endpoint(kube_emulator, a)
    ep["metadata"]["ownerReferences"].append(ref(b))
    kube_emulator.put(ep)
    delete(kube_emulator, "Pod", "a", "default")
    left = kube_emulator.stored("SpiderEndpoint", "a", "default")
    assert left is not None and left["metadata"]["ownerReferences"] == [ref(b)]


def test_foreground_deletion_waits_for_blocking_dependents(kube_emulator: KubeEmulator) -> None:
    owner = pod(kube_emulator, "a")
    endpoint(kube_emulator, owner, block=True, finalizers=(HOLD,))
    code, body = delete(kube_emulator, "Pod", "a", "default", "Foreground")
    assert code == 200 and "foregroundDeletion" in body["metadata"]["finalizers"]
    held = kube_emulator.stored("Pod", "a", "default")
    assert held is not None and held["metadata"]["finalizers"] == ["foregroundDeletion"]
    ep = kube_emulator.stored("SpiderEndpoint", "a", "default")
    assert ep is not None and ep["metadata"]["deletionTimestamp"]  # deleted, held by its finalizer
    ep["metadata"]["finalizers"] = []
    code, _ = http(kube_emulator, "PUT", resource_path(kind_info("SpiderEndpoint"), "default", "a"), ep)
    assert code == 200
    assert kube_emulator.stored("SpiderEndpoint", "a", "default") is None
    assert kube_emulator.stored("Pod", "a", "default") is None  # unblocked: it went too


def test_foreground_deletion_is_not_blocked_without_block_owner_deletion(kube_emulator: KubeEmulator) -> None:
    owner = pod(kube_emulator, "a")
    endpoint(kube_emulator, owner, finalizers=(HOLD,))
    delete(kube_emulator, "Pod", "a", "default", "Foreground")
    assert kube_emulator.stored("Pod", "a", "default") is None
    ep = kube_emulator.stored("SpiderEndpoint", "a", "default")
    assert ep is not None and ep["metadata"]["deletionTimestamp"]


def test_orphan_deletion_leaves_the_dependents_without_the_reference(kube_emulator: KubeEmulator) -> None:
    owner = pod(kube_emulator, "a")
    endpoint(kube_emulator, owner)
    delete(kube_emulator, "Pod", "a", "default", "Orphan")
    assert kube_emulator.stored("Pod", "a", "default") is None
    ep = kube_emulator.stored("SpiderEndpoint", "a", "default")
    assert ep is not None and "ownerReferences" not in ep["metadata"]
    assert not ep["metadata"].get("deletionTimestamp")


def test_an_unknown_propagation_policy_is_refused(kube_emulator: KubeEmulator) -> None:
    pod(kube_emulator, "a")
    code, body = delete(kube_emulator, "Pod", "a", "default", "Sideways")
    assert code == 422 and 'Unsupported value: "Sideways"' in body["message"]
    assert kube_emulator.stored("Pod", "a", "default") is not None


def test_a_deleted_namespace_empties_then_goes(kube_emulator: KubeEmulator) -> None:
    kube_emulator.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    pod(kube_emulator, "a", "team")
    pod(kube_emulator, "b", "team")
    held = pod(kube_emulator, "c", "team")
    held["metadata"]["finalizers"] = [HOLD]
    kube_emulator.put(held)
    code, body = delete(kube_emulator, "Namespace", "team")
    assert code == 200 and body["status"]["phase"] == "Terminating"
    assert kube_emulator.stored("Pod", "a", "team") is None
    assert kube_emulator.stored("Namespace", "team") is not None  # c is still terminating
    code, refused = http(
        kube_emulator,
        "POST",
        resource_path(kind_info("Pod"), "team"),
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "d"}, "spec": {"containers": []}},
    )
    assert (code, refused["reason"]) == (403, "Forbidden")
    assert "because it is being terminated" in refused["message"]
    last = kube_emulator.stored("Pod", "c", "team")
    assert last is not None
    last["metadata"]["finalizers"] = []
    code, _ = http(kube_emulator, "PUT", resource_path(kind_info("Pod"), "team", "c"), last)
    assert code == 200
    assert kube_emulator.stored("Namespace", "team") is None


def test_the_agents_endpoint_outlives_its_pod_until_the_release(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """A pod deleted before its CNI DEL (force deletion, a lost node): the endpoint the agent wrote
    carries Spiderpool's finalizer, so the garbage collector leaves it terminating with its record
    until the release, instead of deleting what the release needs."""
    store = store_factory()
    store.create(
        {
            "apiVersion": SPIDER,
            "kind": "SpiderIPPool",
            "metadata": {"name": "p"},
            "spec": {"ipVersion": 4, "subnet": "10.5.0.0/24", "ips": ["10.5.0.1-10.5.0.9"], "default": True},
        }
    )
    created = store.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "nginx"}]},
        }
    )
    uid = created["metadata"]["uid"]
    service = IpamService(store, node_name="node1", settings=IpamSettings(enable_ipv6=False))
    service.allocate(AllocateRequest("c1", "eth0", "default", "web", uid))
    store.delete("Pod", "web", "default")
    ep = kube_emulator.stored("SpiderEndpoint", "web", "default")
    assert ep is not None and ep["metadata"]["deletionTimestamp"]
    released = service.release(ReleaseRequest("c1", "eth0", "default", "web", uid))
    assert len(released.records) == 1
    assert kube_emulator.stored("SpiderEndpoint", "web", "default") is None
    assert store.records("p") == []


@pytest.mark.parametrize("policy", ["Background", "Foreground"])
def test_a_subnets_auto_pool_is_collected_with_it(kube_emulator: KubeEmulator, policy: str) -> None:
    """Auto-pools name their SpiderSubnet as owner; with the finalizers gone the cascade completes."""
    subnet = kube_emulator.put(
        {
            "apiVersion": SPIDER,
            "kind": "SpiderSubnet",
            "metadata": {"name": "s1"},
            "spec": {"subnet": "10.9.0.0/16"},
        }
    )
    kube_emulator.put(
        {
            "apiVersion": SPIDER,
            "kind": "SpiderIPPool",
            "metadata": {
                "name": "auto4-web-eth0-abcde",
                "ownerReferences": [{**ref(subnet, block=True), "controller": True}],
            },
            "spec": {"subnet": "10.9.0.0/16", "ips": ["10.9.0.10"]},
        }
    )
    delete(kube_emulator, "SpiderSubnet", "s1", policy=policy)
    assert kube_emulator.stored("SpiderSubnet", "s1") is None
    assert kube_emulator.stored("SpiderIPPool", "auto4-web-eth0-abcde") is None
