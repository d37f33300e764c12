"""``ipam.admin.apply_documents`` on every backend, without a transaction (how it runs on Kubernetes):
every document is admitted, each against the earlier ones, before anything is written (issue 12,
item 2), and the API server's metadata limits hold in admission on both backends (item 5)."""

from __future__ import annotations

from typing import Any

import pytest

from ipam.admin import apply_documents
from ipam.errors import Invalid
from ipam.records import Obj
from ipam.store.protocol import Store

SPIDER = "spiderpool.spidernet.io/v2beta1"


def pool(name: str, subnet: str, ip: str, **meta: Any) -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": name, **meta},
        "spec": {"subnet": subnet, "ips": [ip]},
    }


def names(store: Store) -> list[str]:
    return sorted(p["metadata"]["name"] for p in store.list("SpiderIPPool"))


@pytest.mark.parametrize(
    ("later", "message"),
    [
        (pool("first", "10.51.0.0/24", "10.51.0.10"), 'SpiderIPPool "first": spec.subnet: is not changeable'),
        (pool("second", "10.50.0.0/24", "10.50.0.10"), "overlaps with SpiderIPPool first"),
        (
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": "default", "labels": ["x"]},
            },
            'Pod "p": metadata.labels: must be a map of strings',
        ),
        (pool("second", "10.52.0.0/24", "10.52.0.10", labels={"k": "v" * 64}), "metadata.labels.k"),
    ],
    ids=["same-object-twice", "overlaps-earlier", "bad-pod-after-pool", "label-too-long"],
)
def test_a_rejected_document_leaves_the_earlier_ones_unwritten(
    store: Store, later: Obj, message: str
) -> None:
    store.create(pool("base", "10.9.0.0/24", "10.9.0.10"))
    with pytest.raises(Invalid) as err:
        apply_documents(store, [pool("first", "10.50.0.0/24", "10.50.0.10"), later])
    assert message in str(err.value)
    assert names(store) == ["base"]
    assert store.list("Pod", namespace="default") == []


def test_a_valid_file_is_written_in_order(store: Store) -> None:
    lines = apply_documents(
        store,
        [
            pool("a", "10.50.0.0/24", "10.50.0.10"),
            pool("a", "10.50.0.0/24", "10.50.0.11"),
            pool("b", "10.60.0.0/24", "10.60.0.1"),
        ],
    )
    assert lines == [
        "spiderippool.spiderpool.spidernet.io/a created",
        "spiderippool.spiderpool.spidernet.io/a configured",
        "spiderippool.spiderpool.spidernet.io/b created",
    ]
    assert store.get("SpiderIPPool", "a")["spec"]["ips"] == ["10.50.0.11"]
