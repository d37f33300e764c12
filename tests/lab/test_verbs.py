"""The lab's verbs against a real embedded store, without a lab: what each writes, its one-line
errors (nothing changed), and ``wait``'s idea of settled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipam.errors import NotFound
from ipam.store.sqlite import SqliteStore
from lab.verbs import (
    VerbError,
    apply_file,
    delete_file,
    delete_named,
    label_node,
    scale,
    unsettled,
    wait_settled,
)

APP = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {a: b}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: front, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: front}}
  template:
    metadata: {labels: {app: front}}
    spec: {containers: [{name: front, image: nginx}]}
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    try:
        yield s
    finally:
        s.close()


def _dump(store: SqliteStore) -> dict[str, Any]:
    return {k: store.list(k) for k in ("Namespace", "ConfigMap", "Deployment", "Node")}


def test_apply_scale_label_and_delete(store: SqliteStore, tmp_path: Path) -> None:
    app = tmp_path / "app.yaml"
    app.write_text(APP)
    assert apply_file(store, app) == [
        "namespace/shop created",
        "configmap/settings created",
        "deployment.apps/front created",
    ]
    assert scale(store, "deploy/front", 5, "shop") == "deployment.apps/front scaled"
    assert store.get("Deployment", "front", "shop")["spec"]["replicas"] == 5
    store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1", "labels": {"a": "1"}}})
    assert label_node(store, "node1", ["role=edge", "a-"]) == "node/node1 labeled"
    assert store.get("Node", "node1")["metadata"]["labels"] == {"role": "edge"}
    lines = delete_file(store, app)
    assert lines[1:] == ["configmap/settings deleted", "deployment.apps/front deleted"]
    with pytest.raises(NotFound):
        store.get("ConfigMap", "settings", "shop")


@pytest.mark.parametrize(
    ("verb", "needle"),
    [
        (lambda s: scale(s, "deploy/front", -1, "shop"), "replicas: must be 0 or more"),
        (lambda s: scale(s, "nope", 2, "shop"), 'no Deployment or StatefulSet "nope"'),
        (lambda s: scale(s, "cm/settings", 2, "shop"), "ConfigMap has no spec.replicas"),
        (lambda s: scale(s, "widget/x", 2, "shop"), 'unknown resource type "widget"'),
        (lambda s: label_node(s, "node1", ["role=core"]), "metadata.labels.role: already has a value (edge)"),
        (lambda s: label_node(s, "node1", ["oops"]), "labels are key=value"),
        (lambda s: delete_named(s, "widgets", "x"), 'unknown resource type "widgets"'),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    store: SqliteStore, tmp_path: Path, verb: Any, needle: str
) -> None:
    app = tmp_path / "app.yaml"
    app.write_text(APP)
    apply_file(store, app)
    store.create(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1", "labels": {"role": "edge"}}}
    )
    before = _dump(store)
    with pytest.raises(VerbError) as err:
        verb(store)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert _dump(store) == before


def test_wait_settles_on_running_pods_and_reports_failing_ones(store: SqliteStore) -> None:
    def pod(name: str, status: dict[str, Any]) -> None:
        obj = store.create(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}}
        )
        obj["status"] = status
        store.update_status(obj)

    pod("ok", {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})
    pod(
        "stuck",
        {
            "phase": "Pending",
            "containerStatuses": [
                {"state": {"waiting": {"reason": "ContainerCreating", "message": "CNI ADD x: no IP"}}}
            ],
        },
    )
    assert wait_settled(store, timeout=5, interval=0) == [
        "pod/default/stuck ContainerCreating: CNI ADD x: no IP"
    ]
    pod("starting", {"phase": "Pending"})
    assert unsettled(store)[0] == ["pod/default/starting: Pending"]
    ticks = iter(range(100))
    with pytest.raises(TimeoutError, match="pod/default/starting: Pending"):
        wait_settled(store, timeout=3, interval=0, clock=lambda: float(next(ticks)), sleep=lambda _: None)
