"""PATCH as the API server applies it: merge patch, JSON patch, strategic merge patch (built-in kinds
only), with the update's preconditions, schema validation and authorization."""

from __future__ import annotations

from typing import Any

from ipam.kinds import kind_info
from ipam.store.kube_api import resource_path
from tests.kube_emulator import KubeEmulator

SPIDER = "spiderpool.spidernet.io/v2beta1"
Obj = dict[str, Any]
POOL = resource_path(kind_info("SpiderIPPool"), "", "p1")
POD = resource_path(kind_info("Pod"), "default", "web")


def patch(
    emulator: KubeEmulator, path: str, kind: str, body: Any, token: str | None = None
) -> tuple[int, Any]:
    media = "application/json-patch+json" if kind == "json" else f"application/{kind}-patch+json"
    return emulator.call("PATCH", path, body, token=token, content_type=media)


def setup(emulator: KubeEmulator) -> None:
    emulator.put(
        {
            "apiVersion": SPIDER,
            "kind": "SpiderIPPool",
            "metadata": {"name": "p1", "labels": {"a": "1", "b": "2"}},
            "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.9"]},
        }
    )
    emulator.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "finalizers": ["example.com/a"]},
            "spec": {
                "containers": [{"name": "app", "image": "nginx:1"}, {"name": "side", "image": "busybox"}]
            },
        }
    )


def test_merge_patch_sets_and_removes_and_keeps_the_rest(kube_emulator: KubeEmulator) -> None:
    setup(kube_emulator)
    before = kube_emulator.stored("SpiderIPPool", "p1")
    assert before is not None
    code, out = patch(kube_emulator, POOL, "merge", {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert code == 200
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert out["spec"] == before["spec"] and out["metadata"]["generation"] == before["metadata"]["generation"]
    code, out = patch(kube_emulator, POOL, "merge", {"spec": {"ips": ["10.0.0.1-10.0.0.20"]}})
    assert code == 200 and out["spec"]["ips"] == ["10.0.0.1-10.0.0.20"]  # lists are replaced
    assert out["metadata"]["generation"] == before["metadata"]["generation"] + 1


def test_a_patch_is_validated_and_its_resource_version_is_a_precondition(kube_emulator: KubeEmulator) -> None:
    setup(kube_emulator)
    code, body = patch(kube_emulator, POOL, "merge", {"spec": {"ipVersion": "four"}})
    assert code == 422 and "spec.ipVersion in body must be of type integer" in body["message"]
    code, body = patch(
        kube_emulator, POOL, "merge", {"metadata": {"resourceVersion": "1"}, "spec": {"default": True}}
    )
    assert (code, body["reason"]) == (409, "Conflict")


def test_strategic_merge_is_for_built_in_kinds_only(kube_emulator: KubeEmulator) -> None:
    setup(kube_emulator)
    code, body = patch(kube_emulator, POOL, "strategic-merge", {"metadata": {"labels": {"c": "3"}}})
    assert (code, body["reason"]) == (415, "UnsupportedMediaType")
    code, out = patch(
        kube_emulator,
        POD,
        "strategic-merge",
        {
            "metadata": {"finalizers": ["example.com/b"]},
            "spec": {
                "containers": [{"name": "app", "image": "nginx:2"}, {"name": "side", "$patch": "delete"}]
            },
        },
    )
    assert code == 200
    assert out["metadata"]["finalizers"] == ["example.com/a", "example.com/b"]  # merged as a set
    assert out["spec"]["containers"] == [{"name": "app", "image": "nginx:2"}]  # merged by name


def test_json_patch_and_its_failures(kube_emulator: KubeEmulator) -> None:
    setup(kube_emulator)
    ops = [
        {"op": "add", "path": "/metadata/labels/d", "value": "4"},
        {"op": "remove", "path": "/metadata/labels/a"},
    ]
    code, out = patch(kube_emulator, POOL, "json", ops)
    assert code == 200 and out["metadata"]["labels"] == {"b": "2", "d": "4"}
    code, body = patch(kube_emulator, POOL, "json", [{"op": "remove", "path": "/spec/nothing"}])
    assert code == 422 and body["reason"] == "Invalid"


def test_the_agent_may_not_patch(kube_emulator: KubeEmulator) -> None:
    setup(kube_emulator)
    code, body = patch(
        kube_emulator, POD, "merge", {"metadata": {"labels": {"x": "y"}}}, kube_emulator.agent_token
    )
    assert code == 403 and 'cannot patch resource "pods"' in body["message"]
