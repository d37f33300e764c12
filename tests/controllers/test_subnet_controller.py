"""The pool controller's status work and the SpiderSubnet auto-pool controller, against the real SQLite
store: pools follow replicas (lowest addresses first, allocated ones kept), are reclaimed or kept with
the application, every pass is idempotent, and the allocation path's selection finds the pool."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ipam import selection
from ipam.autopool import LABEL_APP_UID, LABEL_RECLAIM
from ipam.controllers.pool import PoolController
from ipam.controllers.subnet import SubnetController
from ipam.kinds import SPIDER_API
from ipam.model import IPPool
from ipam.records import Obj
from ipam.store.sqlite import SqliteStore
from ipam.workload import PodInfo, resolve_top_controller
from tests.controllers.conftest import World

SUBNET = "s1"
ANNOTATIONS = {"ipam.spidernet.io/subnet": json.dumps({"ipv4": [SUBNET]})}


@pytest.fixture
def subnets(store: SqliteStore, world: World) -> SubnetController:
    world.subnet(SUBNET, "10.9.0.0/16", ["10.9.0.10-10.9.0.60"], gateway="10.9.0.1")
    return SubnetController(store, default_flexible_ip_number=1)


def deployment(world: World, name: str, replicas: int, **annotations: str) -> Obj:
    template = {"metadata": {"annotations": {**ANNOTATIONS, **annotations}}, "spec": {"containers": []}}
    return world.app("Deployment", name, {"replicas": replicas, "template": template})


def set_replicas(store: SqliteStore, app: Obj, replicas: int) -> Obj:
    fresh = store.get(app["kind"], app["metadata"]["name"], app["metadata"]["namespace"])
    fresh["spec"]["replicas"] = replicas
    return store.update(fresh)


def auto_pools(store: SqliteStore) -> dict[str, IPPool]:
    return {p["metadata"]["name"]: IPPool.from_obj(p) for p in store.list("SpiderIPPool")}


def only_pool(store: SqliteStore) -> IPPool:
    pools = auto_pools(store)
    assert len(pools) == 1, pools
    return next(iter(pools.values()))


def subnet_status(store: SqliteStore) -> dict[str, Any]:
    status: dict[str, Any] = store.get("SpiderSubnet", SUBNET)["status"]
    return status


def test_pool_status_and_subnet_status(store: SqliteStore, world: World) -> None:
    store.create(
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": "raw"},
            "spec": {"subnet": "10.1.0.0/24", "ips": ["10.1.0.1-10.1.0.10"], "excludeIPs": ["10.1.0.5"]},
        }
    )
    world.subnet(SUBNET, "10.9.0.0/16", ["10.9.0.10-10.9.0.60"])
    world.pool("manual", "10.9.0.20-10.9.0.29", subnet="10.9.0.0/16")
    report = PoolController(store).reconcile()
    assert "SpiderIPPool/raw" in report.updated and report.errors == []
    assert store.get("SpiderIPPool", "raw")["status"]["totalIPCount"] == 9
    status = subnet_status(store)
    assert status["totalIPCount"] == 51
    assert status["allocatedIPCount"] == 10
    assert json.loads(status["controlledIPPools"]) == {"manual": {"ips": ["10.9.0.20-10.9.0.29"]}}
    again = PoolController(store).reconcile()
    assert again.updated == [] and again.deleted == []


def test_auto_pool_follows_replicas(store: SqliteStore, world: World, subnets: SubnetController) -> None:
    app = deployment(world, "web", 2)
    report = subnets.reconcile(app)
    assert report.errors == []
    pool = only_pool(store)
    uid = app["metadata"]["uid"]
    assert pool.name == f"auto4-web-eth0-{uid.rsplit('-', 1)[-1][:5]}"
    assert pool.ips.to_strings(4) == ["10.9.0.10-10.9.0.12"]  # replicas + 1, lowest first
    assert pool.gateway == "10.9.0.1" and pool.labels[LABEL_APP_UID] == uid
    assert pool.pod_affinity is not None
    assert json.loads(subnet_status(store)["controlledIPPools"]) == {
        pool.name: {"ips": ["10.9.0.10-10.9.0.12"], "application": "apps_v1_Deployment_default_web"}
    }
    assert subnet_status(store)["allocatedIPCount"] == 3

    again = subnets.reconcile(store.get("Deployment", "web", "default"))
    assert again.updated == [] and again.errors == []  # idempotent: nothing written

    set_replicas(store, app, 5)
    subnets.reconcile(store.get("Deployment", "web", "default"))
    assert only_pool(store).ips.to_strings(4) == ["10.9.0.10-10.9.0.15"]

    world.claim_only(pool.name, "10.9.0.14", "default", "web-x", "u-x")  # a pod holds a high address
    set_replicas(store, app, 1)
    subnets.reconcile(store.get("Deployment", "web", "default"))
    shrunk = only_pool(store)
    assert shrunk.ips.to_strings(4) == ["10.9.0.14-10.9.0.15"]  # lowest unallocated dropped
    assert subnet_status(store)["allocatedIPCount"] == 2


def test_allocation_path_selects_the_auto_pool(
    store: SqliteStore, world: World, subnets: SubnetController
) -> None:
    app = deployment(world, "web", 1)
    subnets.reconcile(app)
    rs = world.app(
        "ReplicaSet",
        "web-5d8f",
        {"replicas": 1},
        ownerReferences=[
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "web",
                "uid": app["metadata"]["uid"],
                "controller": True,
            }
        ],
    )
    assert subnets.reconcile(rs).updated == []  # the Deployment's pool serves its ReplicaSets
    pod = PodInfo.from_obj(world.pod("web-5d8f-abc", owner=rs, meta={"annotations": ANNOTATIONS}))
    top = resolve_top_controller(pod, lambda kind, ns, name: store.get(kind, name, ns))
    sel = selection.candidates(
        pod,
        "eth0",
        namespace_annotations={},
        namespace_labels={},
        node_labels={},
        cni_default_v4=(),
        cni_default_v6=(),
        pools=list(auto_pools(store).values()),
        top_controller=top,
        enable_v6=False,
    )
    assert sel.source == "subnet"
    assert sel.nics[0].families[0].pools == (only_pool(store).name,)


def test_reclaimed_with_the_app(store: SqliteStore, world: World, subnets: SubnetController) -> None:
    app = deployment(world, "web", 1)
    subnets.reconcile(app)
    name = only_pool(store).name
    store.delete("Deployment", "web", "default")
    report = subnets.reconcile_all()
    assert report.deleted == [f"SpiderIPPool/{name}"]
    assert auto_pools(store) == {}
    assert "controlledIPPools" not in subnet_status(store)
    assert subnet_status(store)["allocatedIPCount"] == 0


def test_deleted_app_pool_with_records_is_not_deleted_until_empty(
    store: SqliteStore, world: World, subnets: SubnetController
) -> None:
    app = deployment(world, "web", 1)
    subnets.reconcile(app)
    name = only_pool(store).name
    record = world.claim_only(name, "10.9.0.10", "default", "web-x", "u-x")
    store.delete("Deployment", "web", "default")
    report = subnets.app_deleted(app)
    assert report.deleted == [] and report.errors == []
    assert world.held(name) == {"10.9.0.10"}  # records are never dropped with a pool
    store.commit(releases=[record])
    assert subnets.reconcile_all().deleted == [f"SpiderIPPool/{name}"]


def test_reclaim_false_pool_is_reused_by_the_next_app(
    store: SqliteStore, world: World, subnets: SubnetController
) -> None:
    first = deployment(world, "web", 2, **{"ipam.spidernet.io/ippool-reclaim": "false"})
    subnets.reconcile(first)
    kept = only_pool(store)
    store.delete("Deployment", "web", "default")
    assert subnets.reconcile_all().deleted == []
    assert only_pool(store).name == kept.name
    second = deployment(world, "web", 3, **{"ipam.spidernet.io/ippool-reclaim": "false"})
    subnets.reconcile(second)
    reused = only_pool(store)
    assert reused.name == kept.name
    assert reused.labels[LABEL_APP_UID] == second["metadata"]["uid"]
    assert reused.labels[LABEL_RECLAIM] == "false"
    assert reused.ips.size == 4
    other_kind = world.app(
        "StatefulSet", "web", {"replicas": 1, "template": {"metadata": {"annotations": ANNOTATIONS}}}
    )
    subnets.reconcile(other_kind)
    assert len(auto_pools(store)) == 2  # a StatefulSet of that name does not take a Deployment's pool


def test_cronjob_and_daemonset_templates(store: SqliteStore, world: World, subnets: SubnetController) -> None:
    template = {"metadata": {"annotations": {**ANNOTATIONS, "ipam.spidernet.io/ippool-ip-number": "2"}}}
    cron = world.app("CronJob", "nightly", {"jobTemplate": {"spec": {"template": template}}})
    ds = world.app(
        "DaemonSet",
        "agent",
        {"template": {"metadata": {"annotations": ANNOTATIONS}}},
    )
    fresh = store.get("DaemonSet", "agent", "default")
    fresh["status"] = {"desiredNumberScheduled": 3}
    store.update_status(fresh)
    assert subnets.reconcile(cron).errors == []
    assert subnets.reconcile(store.get("DaemonSet", "agent", "default")).errors == []
    sizes = {
        p.labels["ipam.spidernet.io/owner-application-kind"]: p.ips.size for p in auto_pools(store).values()
    }
    assert sizes == {"CronJob": 2, "DaemonSet": 4}
    assert ds["metadata"]["uid"]


def test_errors_are_one_line_and_change_nothing(
    store: SqliteStore, world: World, subnets: SubnetController
) -> None:
    before = store.revision()
    bad = world.app(
        "Deployment",
        "bad",
        {"replicas": 1, "template": {"metadata": {"annotations": {"ipam.spidernet.io/subnet": "{nope"}}}},
    )
    missing = world.app(
        "Deployment",
        "missing",
        {
            "replicas": 1,
            "template": {"metadata": {"annotations": {"ipam.spidernet.io/subnet": '{"ipv4":["nosuch"]}'}}},
        },
    )
    huge = deployment(world, "huge", 100)
    after_setup = store.revision()
    errors = [
        *subnets.reconcile(bad).errors,
        *subnets.reconcile(missing).errors,
        *subnets.reconcile(huge).errors,
    ]
    assert errors[0].startswith(
        'Deployment "default/bad": spec.template.metadata.annotations[ipam.spidernet.io/subnet]:'
    )
    assert errors[1] == (
        'Deployment "default/missing": spec.template.metadata.annotations[ipam.spidernet.io/subnet]: '
        'SpiderSubnet "nosuch" not found'
    )
    assert "insufficient free IPs in the subnet: 101 needed, 51 free" in errors[2]
    assert all("\n" not in e for e in errors) and len(errors) == 3
    assert store.revision() == after_setup != before
    assert auto_pools(store) == {}


def test_a_broken_pool_does_not_stop_the_pass(store: SqliteStore, world: World) -> None:
    store.create(
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": "broken"},
            "spec": {"subnet": "10.2.0.0/24", "ips": ["10.3.0.1-nonsense"]},
        }
    )
    store.create(
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": "zfine"},
            "spec": {"subnet": "10.1.0.0/24", "ips": ["10.1.0.1-10.1.0.4"]},
        }
    )
    report = PoolController(store).reconcile()
    assert report.updated == ["SpiderIPPool/zfine"]
    assert len(report.errors) == 1 and report.errors[0].startswith('SpiderIPPool "broken": spec.ips[0]:')
