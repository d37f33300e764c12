"""What the API server refuses or changes on a write: CRD schema validation (OpenAPI and CEL), pruning
and defaulting of custom resources, and ObjectMeta validation, each with the API server's 422 body; and
the product's objects that must pass it (auto-pools of workloads with long names)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipam.autopool import LABEL_APP_NAME
from ipam.controllers.subnet import SubnetController
from ipam.errors import Invalid
from ipam.kinds import kind_info
from ipam.store.kube import KubeStore
from ipam.store.kube_api import resource_path
from tests.controllers.conftest import Clock, World
from tests.kube.emulator.metadata import meta_causes
from tests.kube_emulator import KubeEmulator

SPIDER = "spiderpool.spidernet.io/v2beta1"
Obj = dict[str, Any]
POOLS = resource_path(kind_info("SpiderIPPool"))


def pool(name: str = "p1", **spec: Any) -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.9"], **spec},
    }


def http(emulator: KubeEmulator, method: str, path: str, body: Obj | None = None) -> tuple[int, Any]:
    return emulator.call(method, path, body)


def test_unknown_fields_are_pruned_and_defaults_set(kube_emulator: KubeEmulator) -> None:
    body = pool(colour="blue")
    body["spec"]["routes"] = [{"dst": "10.1.0.0/16", "gw": "10.0.0.1", "metric": 5}]
    body["extra"] = {"a": 1}
    code, created = http(kube_emulator, "POST", POOLS, body)
    assert code == 201
    assert created["spec"] == {
        "subnet": "10.0.0.0/24",
        "ips": ["10.0.0.1-10.0.0.9"],
        "routes": [{"dst": "10.1.0.0/16", "gw": "10.0.0.1"}],
        "default": False,
        "disable": False,
    }
    assert "extra" not in created


def test_a_schema_violation_is_422_with_every_cause(kube_emulator: KubeEmulator) -> None:
    code, body = http(kube_emulator, "POST", POOLS, pool(ipVersion=5, ips="10.0.0.1"))
    assert code == 422
    assert body["reason"] == "Invalid"
    assert body["message"] == (
        'SpiderIPPool.spiderpool.spidernet.io "p1" is invalid: ['
        'spec.ipVersion: Unsupported value: 5: supported values: "4", "6", '
        'spec.ips: Invalid value: "string": spec.ips in body must be of type array: "string"]'
    )
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: 5: supported values: "4", "6"',
            "field": "spec.ipVersion",
        },
        {
            "reason": "FieldValueTypeInvalid",
            "message": 'Invalid value: "string": spec.ips in body must be of type array: "string"',
            "field": "spec.ips",
        },
    ]
    assert kube_emulator.stored("SpiderIPPool", "p1") is None


def test_cel_transition_rules_hold_on_update(kube_emulator: KubeEmulator) -> None:
    code, created = http(kube_emulator, "POST", POOLS, pool(ipVersion=4))
    assert code == 201
    moved = {**created, "spec": {**created["spec"], "subnet": "10.1.0.0/24"}}
    code, body = http(kube_emulator, "PUT", f"{POOLS}/p1", moved)
    assert code == 422
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "string": spec.subnet is not changeable',
            "field": "spec.subnet",
        }
    ]
    code, body = http(kube_emulator, "POST", POOLS, pool("p6", ipVersion=6))
    assert code == 422 and "does not match the family of spec.subnet" in body["message"]


@pytest.mark.parametrize(
    ("meta", "field", "words"),
    [
        ({"name": "Web_1"}, "metadata.name", "a lowercase RFC 1123 subdomain must consist of"),
        ({"name": "a" * 254}, "metadata.name", "must be no more than 253 characters"),
        ({"name": "p", "labels": {"app": "x" * 64}}, "metadata.labels", "must be no more than 63 characters"),
        ({"name": "p", "labels": {"app": "-x"}}, "metadata.labels", "a valid label must be an empty string"),
        ({"name": "p", "labels": {"k" * 64: "x"}}, "metadata.labels", "name part must be no more than 63"),
        (
            {"name": "p", "labels": {"Bad_Prefix/k": "x"}},
            "metadata.labels",
            "prefix part a lowercase RFC 1123",
        ),
        (
            {"name": "p", "annotations": {"a": "x" * 262_144}},
            "metadata.annotations",
            "Too long: must have at most",
        ),
    ],
)
def test_metadata_is_validated_as_the_api_server_does(
    kube_emulator: KubeEmulator, meta: Obj, field: str, words: str
) -> None:
    body = pool()
    body["metadata"] = meta
    code, status = http(kube_emulator, "POST", POOLS, body)
    assert code == 422, status
    (cause,) = status["details"]["causes"]
    assert cause["field"] == field and words in cause["message"]


def test_a_namespace_name_is_a_dns_label() -> None:
    assert meta_causes({"name": "a.b"}, kind="Namespace")[0].message.startswith('Invalid value: "a.b"')
    assert meta_causes({"name": "a.b"}, kind="Pod") == []
    assert meta_causes({"name": "n" * 64}, kind="Namespace")[0].message.endswith("no more than 63 characters")


def test_the_store_reports_a_refusal_in_one_line_and_writes_nothing(
    kube_emulator: KubeEmulator, kube_store: KubeStore
) -> None:
    with pytest.raises(Invalid) as err:
        kube_store.create(pool(ipVersion=6))
    assert "\n" not in str(err.value) and "ipVersion" in str(err.value)
    assert kube_emulator.stored("SpiderIPPool", "p1") is None


def test_auto_pools_of_workloads_with_long_names_pass_the_api_server(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """A Deployment's name may be a 253-character DNS subdomain; its auto-pool's name (at most 253) and
    labels (values at most 63) are cut to fit, as Spiderpool cuts them, and still find the pool."""
    store = store_factory()
    world = World(store, Clock(time.time()))
    world.subnet("s1", "10.9.0.0/16", ["10.9.0.10-10.9.0.60"], gateway="10.9.0.1")
    controller = SubnetController(store, default_flexible_ip_number=1)
    long_name = ("web." * 62) + "tail1"  # 253 characters, dots included
    assert len(long_name) == 253
    annotations = {"ipam.spidernet.io/subnet": json.dumps({"ipv4": ["s1"]})}
    template = {"metadata": {"annotations": annotations}, "spec": {"containers": []}}
    app = world.app("Deployment", long_name, {"replicas": 2, "template": template})
    report = controller.reconcile(app)
    assert report.errors == []
    (made,) = store.list("SpiderIPPool")
    assert len(made["metadata"]["name"]) <= 253
    assert meta_causes(made["metadata"], kind="SpiderIPPool") == []
    assert len(made["metadata"]["labels"][LABEL_APP_NAME]) <= 63
    again = controller.reconcile(store.get("Deployment", long_name, "default"))
    assert again.errors == [] and again.updated == []  # the pool is found again by its labels
    assert len(store.list("SpiderIPPool")) == 1
