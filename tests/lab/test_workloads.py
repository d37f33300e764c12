"""The lab's scheduler and workload controllers as pure functions (no root, no lab)."""

from __future__ import annotations

import itertools
from typing import Any

from lab.scheduler import schedule
from lab.verbs import format_pods, pod_state
from lab.workloads import Cluster, Create, Delete, Update, plan


def node(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(
    name: str, spec: dict[str, Any] | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": labels or {}},
        "spec": spec or {},
        "status": {"phase": "Running"},
    }


NODES = [node("node1"), node("node2", disk="ssd")]


def test_node_selector_affinity_and_spread() -> None:
    assert schedule(pod("a", {"nodeSelector": {"disk": "ssd"}}), NODES, []).node == "node2"
    assert schedule(pod("b"), NODES, [pod("x", {"nodeName": "node1"})]).node == "node2"
    affinity = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "node-role.kubernetes.io/master", "operator": "Exists"}
                            ]
                        },
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node1"]}]},
                    ]
                }
            }
        }
    }
    assert schedule(pod("c", affinity), NODES, []).node == "node1"
    none = schedule(pod("d", {"nodeSelector": {"disk": "hdd"}}), NODES, [])
    assert none.node == ""
    assert none.message == "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."


def test_pod_anti_affinity_on_hostname() -> None:
    anti = {
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "kubernetes.io/hostname"}
                ]
            }
        }
    }
    first = pod("x1", {**anti, "nodeName": "node2"}, {"app": "x"})
    assert schedule(pod("x2", anti, {"app": "x"}), NODES, [first]).node == "node1"
    second = pod("x2", {**anti, "nodeName": "node1"}, {"app": "x"})
    third = schedule(pod("x3", anti, {"app": "x"}), NODES, [first, second])
    assert third.node == "" and "2 node(s) didn't match pod anti-affinity rules" in third.message


def _names() -> Any:
    counter = itertools.count()
    return lambda: f"n{next(counter):04d}"


def test_deployment_makes_a_replicaset_then_pods() -> None:
    deploy: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": "d1", "generation": 1},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {}}},
    }
    actions = plan(Cluster({"Deployment": [deploy]}), _names())
    [rs_create] = [a for a in actions if isinstance(a, Create)]
    rs = {**rs_create.obj, "metadata": {**rs_create.obj["metadata"], "uid": "r1"}}
    assert rs["spec"]["replicas"] == 2 and rs["metadata"]["ownerReferences"][0]["uid"] == "d1"
    actions = plan(Cluster({"Deployment": [deploy], "ReplicaSet": [rs]}), _names())
    pods = [a.obj for a in actions if isinstance(a, Create)]
    assert [p["metadata"]["name"] for p in pods] == [
        f"{rs['metadata']['name']}-n0000",
        f"{rs['metadata']['name']}-n0001",
    ]
    assert all(p["metadata"]["labels"]["app"] == "web" for p in pods)
    scaled = {**deploy, "spec": {**deploy["spec"], "replicas": 1}}
    actions = plan(Cluster({"Deployment": [scaled], "ReplicaSet": [rs]}), _names())
    assert any(isinstance(a, Update) and a.obj["spec"]["replicas"] == 1 for a in actions)


def test_statefulset_waits_for_the_old_pod_before_reusing_its_name() -> None:
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default", "uid": "s1"},
        "spec": {"replicas": 2, "template": {"spec": {}}},
    }
    owner = [{"uid": "s1", "controller": True, "kind": "StatefulSet"}]
    old = pod("db-1")
    old["metadata"].update(ownerReferences=owner, deletionTimestamp="2026-01-01T00:00:00Z")
    actions = plan(Cluster({"StatefulSet": [sts], "Pod": [old]}), _names())
    assert [a.obj["metadata"]["name"] for a in actions if isinstance(a, Create)] == ["db-0"]
    extra = pod("db-5")
    extra["metadata"]["ownerReferences"] = owner
    actions = plan(Cluster({"StatefulSet": [sts], "Pod": [extra]}), _names())
    assert Delete("Pod", "default", "db-5", 30) in actions


def test_orphans_are_collected_and_jobs_complete() -> None:
    orphan = pod("lost")
    orphan["metadata"]["ownerReferences"] = [{"uid": "gone", "controller": True, "kind": "ReplicaSet"}]
    assert Delete("Pod", "default", "lost", 30) in plan(Cluster({"Pod": [orphan]}), _names())
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": "default", "uid": "j1"},
        "spec": {"template": {"spec": {"restartPolicy": "Never"}}},
    }
    [create] = [a for a in plan(Cluster({"Job": [job]}), _names()) if isinstance(a, Create)]
    done = {
        **create.obj,
        "metadata": {**create.obj["metadata"], "uid": "p1"},
        "status": {"phase": "Succeeded"},
    }
    actions = plan(Cluster({"Job": [job], "Pod": [done]}), _names())
    assert not [a for a in actions if isinstance(a, Create)]
    assert pod_state(done).status == "Completed"


def test_pod_states_as_kubectl_shows_them() -> None:
    failing = pod("f")
    failing["status"] = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "ready": False,
                "state": {"waiting": {"reason": "ContainerCreating", "message": "CNI ADD x: boom"}},
            }
        ],
    }
    assert pod_state(failing).status == "ContainerCreating" and pod_state(failing).reason == "CNI ADD x: boom"
    table = format_pods([failing], now=0.0, wide=True, namespaces=True).splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert table[1].split()[:4] == ["default", "f", "0/1", "ContainerCreating"]


def test_statefulset_pods_come_in_order_unless_parallel() -> None:
    sts: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default", "uid": "s1"},
        "spec": {"replicas": 3, "template": {"spec": {}}},
    }
    owner = [{"uid": "s1", "controller": True, "kind": "StatefulSet"}]

    def member(ordinal: int, ready: bool) -> dict[str, Any]:
        p = pod(f"db-{ordinal}")
        p["metadata"]["ownerReferences"] = owner
        p["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        return p

    def created(objs: list[dict[str, Any]], spec: dict[str, Any] | None = None) -> list[str]:
        obj = {**sts, "spec": {**sts["spec"], **(spec or {})}}
        return [
            a.obj["metadata"]["name"]
            for a in plan(Cluster({"StatefulSet": [obj], "Pod": objs}), _names())
            if isinstance(a, Create)
        ]

    assert created([]) == ["db-0"]
    assert created([member(0, False)]) == []  # db-1 waits for db-0 to be Ready
    assert created([member(0, True)]) == ["db-1"]
    assert created([], {"podManagementPolicy": "Parallel"}) == ["db-0", "db-1", "db-2"]
    down = {**sts, "spec": {**sts["spec"], "replicas": 1}}
    actions = plan(
        Cluster({"StatefulSet": [down], "Pod": [member(0, True), member(1, True), member(2, True)]}), _names()
    )
    assert [a for a in actions if isinstance(a, Delete)] == [Delete("Pod", "default", "db-2", 30)]


def test_a_new_template_rolls_out_within_surge_and_unavailability() -> None:
    deploy: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": "d1", "generation": 2},
        "spec": {"replicas": 4, "template": {"metadata": {"labels": {"v": "2"}}, "spec": {}}},
    }
    old_rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "web-old",
            "namespace": "default",
            "uid": "r-old",
            "ownerReferences": [{"uid": "d1", "controller": True, "kind": "Deployment"}],
        },
        "spec": {"replicas": 4, "template": {"metadata": {"labels": {"v": "1"}}}},
    }
    old_pods = []
    for i in range(4):
        p = pod(f"web-old-{i}")
        p["metadata"]["ownerReferences"] = [{"uid": "r-old", "controller": True, "kind": "ReplicaSet"}]
        p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        old_pods.append(p)
    actions = plan(Cluster({"Deployment": [deploy], "ReplicaSet": [old_rs], "Pod": old_pods}), _names())
    [new_rs] = [a.obj for a in actions if isinstance(a, Create) and a.obj["kind"] == "ReplicaSet"]
    assert new_rs["spec"]["replicas"] == 1  # 25 % surge of 4
    shrink = [a.obj for a in actions if isinstance(a, Update) and a.obj["metadata"]["name"] == "web-old"]
    assert [o["spec"]["replicas"] for o in shrink] == [3]  # 25 % of 4 may be unavailable
    recreate = {**deploy, "spec": {**deploy["spec"], "strategy": {"type": "Recreate"}}}
    actions = plan(Cluster({"Deployment": [recreate], "ReplicaSet": [old_rs], "Pod": old_pods}), _names())
    [new_rs] = [a.obj for a in actions if isinstance(a, Create) and a.obj["kind"] == "ReplicaSet"]
    assert new_rs["spec"]["replicas"] == 0
    assert [a.obj["spec"]["replicas"] for a in actions if isinstance(a, Update)] == [0]
