"""``get -l`` reads label selectors as kubectl does, and ``delete ns`` empties the namespace as
Kubernetes' namespace controller does (issue 12, item 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ipam.records import Obj
from tests.cli.conftest import Run, open_db


def ns(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@pytest.fixture
def labelled(run: Run) -> None:
    docs = [
        ns("a", tier="web", env="prod"),
        ns("b", tier="db", env="prod"),
        ns("c", tier="web"),
        ns("d"),
    ]
    assert run("apply", "-f", "-", stdin=yaml.safe_dump_all(docs)).code == 0


@pytest.mark.usefixtures("labelled")
@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("tier=web", ["a", "c"]),
        ("tier==web", ["a", "c"]),
        ("tier!=web", ["b", "d"]),  # as in Kubernetes, an object without the key matches !=
        ("tier=web,env=prod", ["a"]),
        ("tier = web , env != prod", ["c"]),
        ("tier in (web, db)", ["a", "b", "c"]),
        ("tier notin (web),env", ["b"]),
        ("env", ["a", "b"]),
        ("!env", ["c", "d"]),
        ("tier=web,tier=db", []),
    ],
)
def test_label_selectors_as_kubectl_reads_them(run: Run, selector: str, names: list[str]) -> None:
    got = run("get", "ns", "-l", selector, "-o", "name")
    assert got.code == 0, got.err
    assert [line.removeprefix("namespace/") for line in got.lines] == names


@pytest.mark.usefixtures("labelled")
@pytest.mark.parametrize("selector", ["a!", "tier in web", "tier in ()", "tier=we b", "a>1"])
def test_unreadable_selectors_are_one_line(run: Run, selector: str) -> None:
    got = run("get", "ns", "-l", selector)
    assert got.code == 1 and got.out == ""
    assert got.err.startswith(f"error: selector {selector!r}: ") and len(got.err.splitlines()) == 1


def pod(name: str, namespace: str, grace: int | None = None) -> Obj:
    spec: dict[str, object] = {"nodeName": "node1"}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_deleting_a_namespace_deletes_its_objects_and_pods_gracefully(run: Run, db: Path) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team"},
        "spec": {"replicas": 2},
    }
    unscheduled = pod("pending", "team")
    del unscheduled["spec"]["nodeName"]
    finished = {**pod("done", "team"), "status": {"phase": "Succeeded"}}
    docs = [
        ns("team"),
        ns("other"),
        deployment,
        pod("p1", "team"),
        pod("p2", "team", grace=5),
        unscheduled,  # no kubelet runs these two: they go at once, as the API server deletes them
        finished,
        pod("q", "other"),
    ]
    assert run("apply", "-f", "-", stdin=yaml.safe_dump_all(docs)).code == 0
    got = run("delete", "ns", "team")
    assert got.code == 0, got.err
    assert got.lines == [
        "namespace/team deleted (with its objects: 1 Deployment, 4 Pod; 2 pods terminating until their "
        "sandboxes are torn down)"
    ]
    with open_db(db) as store:
        assert [o["metadata"]["name"] for o in store.list("Namespace")] == ["other"]
        assert store.list("Deployment", namespace="team") == []
        pods = {p["metadata"]["name"]: p["metadata"] for p in store.list("Pod", namespace="team")}
        # terminating, for the kubelet (the lab's controller) to tear down and then remove
        assert {n: m.get("deletionGracePeriodSeconds") for n, m in pods.items()} == {"p1": 30, "p2": 5}
        assert all(m.get("deletionTimestamp") for m in pods.values())
        assert not store.get("Pod", "q", "other")["metadata"].get("deletionTimestamp")
    assert run("delete", "ns", "nothere").code == 1
