"""A SpiderSubnet owns the pools of its CIDR: ownership at admission, adoption of orphan pools by the
subnet controller, and the cascade when the subnet is deleted (the owner GC deletes its pools, each
stays terminating while it holds IPs, the subnet goes after the last of them).  Every test runs against
the embedded store and the Kubernetes store (on the API emulator, which has no garbage collector)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ipam import admin
from ipam.controllers.leader import PoolPass
from ipam.controllers.owner_gc import OwnerGC
from ipam.controllers.pool import PoolController
from ipam.controllers.subnet import SubnetController
from ipam.errors import Conflict, NotFound
from ipam.kinds import SPIDER_API
from ipam.model import FINALIZER, LABEL_OWNER_SUBNET
from ipam.records import Claim, IPRecord, Obj
from ipam.store.protocol import Store
from ipam.store.sqlite import SqliteStore
from tests.controllers.conftest import Clock, World
from tests.kube.backend import kube_backend

SS_REF = "spidersubnet.spiderpool.spidernet.io/s1"
GW = "10.0.0.1"
ROUTES = [{"dst": "172.16.0.0/12", "gw": "10.0.0.2"}]


@dataclass(frozen=True)
class _EmulatorOptions:
    history: int = 10_000


@pytest.fixture(params=["sqlite", "kubernetes"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "state.db", clock=Clock(time.time()))
        try:
            yield s
        finally:
            s.close()
    else:
        with kube_backend(tmp_path, _EmulatorOptions()) as kube:
            yield kube


@pytest.fixture
def world(store: Store) -> World:
    return World(store, Clock(time.time()))


@pytest.fixture
def leader(store: Store) -> PoolPass:
    """What the leader runs after every pool or subnet change."""
    return PoolPass(store, SubnetController(store))


def subnet(world: World, **spec: Any) -> Obj:
    return world.subnet("s1", "10.0.0.0/16", ["10.0.1.0-10.0.1.255"], **spec)


def exists(store: Store, kind: str, name: str) -> bool:
    try:
        store.get(kind, name)
    except NotFound:
        return False
    return True


def subnet_refs(obj: Obj) -> list[dict[str, Any]]:
    return [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("kind") == "SpiderSubnet"]


def controlled(store: Store) -> dict[str, Any]:
    text = store.get("SpiderSubnet", "s1").get("status", {}).get("controlledIPPools")
    return dict(json.loads(text)) if text else {}


def claim(store: Store, pool: str, ip: str) -> None:
    usage = store.usage(pool)
    store.commit(claims=[Claim(pool, usage.resource_version, ip, f"default/pod-{ip}", f"uid-{ip}")])


def release(store: Store, pool: str, ip: str) -> None:
    store.commit(releases=[IPRecord(pool, ip, f"default/pod-{ip}", f"uid-{ip}")])


def test_pool_written_after_its_subnet_is_owned(store: Store, world: World) -> None:
    s1 = subnet(world, gateway=GW, routes=ROUTES)
    p1 = world.pool("p1", "10.0.1.1-10.0.1.9")
    (ref,) = subnet_refs(p1)
    assert ref["uid"] == s1["metadata"]["uid"] and ref["controller"] is True
    assert p1["metadata"]["labels"][LABEL_OWNER_SUBNET] == "s1"
    assert p1["spec"]["gateway"] == GW and p1["spec"]["routes"] == ROUTES
    kept = world.pool("p2", "10.0.1.10", gateway="10.0.0.3", routes=[])
    assert kept["spec"]["gateway"] == "10.0.0.3" and kept["spec"]["routes"] == []


def test_orphan_pool_is_adopted(store: Store, world: World, leader: PoolPass) -> None:
    world.pool("p1", "10.0.1.1-10.0.1.9")
    world.pool("p2", "10.0.1.10", routes=[])
    world.pool("other", "10.9.0.1", subnet="10.9.0.0/16")
    other_before = store.get("SpiderIPPool", "other")
    s1 = subnet(world, gateway=GW, routes=ROUTES)
    assert subnet_refs(store.get("SpiderIPPool", "p1")) == []  # written before the subnet

    report = leader.reconcile()
    assert sorted(report.updated) >= ["SpiderIPPool/p1", "SpiderIPPool/p2"]
    assert report.errors == []
    p1, p2 = store.get("SpiderIPPool", "p1"), store.get("SpiderIPPool", "p2")
    assert [r["uid"] for r in subnet_refs(p1)] == [s1["metadata"]["uid"]]
    assert p1["metadata"]["labels"][LABEL_OWNER_SUBNET] == "s1"
    assert p1["spec"]["gateway"] == GW and p1["spec"]["routes"] == ROUTES
    assert p2["spec"]["gateway"] == GW and p2["spec"]["routes"] == []  # an explicit [] is kept
    assert store.get("SpiderIPPool", "other") == other_before
    assert controlled(store) == {"p1": {"ips": ["10.0.1.1-10.0.1.9"]}, "p2": {"ips": ["10.0.1.10"]}}
    assert store.get("SpiderSubnet", "s1")["status"]["allocatedIPCount"] == 10

    versions = {n: store.get("SpiderIPPool", n)["metadata"]["resourceVersion"] for n in ("p1", "p2")}
    assert leader.reconcile().updated == []  # idempotent
    assert {n: store.get("SpiderIPPool", n)["metadata"]["resourceVersion"] for n in versions} == versions


def test_pool_that_cannot_be_adopted_is_reported_once_and_left_alone(
    store: Store, world: World, leader: PoolPass
) -> None:
    world.pool("p1", "10.0.2.1")  # outside the subnet's ips, written before the subnet
    subnet(world)
    before = store.get("SpiderIPPool", "p1")
    report = leader.reconcile()
    assert report.errors == [
        'SpiderSubnet s1 cannot adopt its pool: SpiderIPPool "p1": spec.ips: 10.0.2.1 is not in the IPs '
        "of SpiderSubnet s1 (its ips minus excludeIPs)"
    ]
    assert store.get("SpiderIPPool", "p1") == before
    assert leader.reconcile().errors == []  # nothing changed: not reported again


def test_subnet_delete_cascades_to_its_pools(store: Store, world: World, leader: PoolPass) -> None:
    subnet(world)
    world.pool("busy", "10.0.1.1-10.0.1.9")
    world.pool("idle", "10.0.1.10-10.0.1.19")
    world.pool("other", "10.9.0.1-10.9.0.9", subnet="10.9.0.0/16")
    claim(store, "busy", "10.0.1.1")
    claim(store, "other", "10.9.0.1")
    other_before = store.get("SpiderIPPool", "other")

    message = admin.delete_object(store, "SpiderSubnet", "s1")
    assert message.startswith(
        f"{SS_REF} deleted (terminating until the 2 SpiderIPPools it owns are deleted: "
    )
    assert "busy, idle" in message
    assert store.get("SpiderSubnet", "s1")["metadata"]["deletionTimestamp"]
    assert not store.get("SpiderIPPool", "busy")["metadata"].get("deletionTimestamp")  # the leader's job

    report = leader.reconcile()
    assert report.errors == []
    assert "SpiderIPPool/idle" in report.deleted  # empty: gone at once
    busy = store.get("SpiderIPPool", "busy")
    assert busy["metadata"]["deletionTimestamp"] and busy["metadata"]["finalizers"] == [FINALIZER]
    assert exists(store, "SpiderSubnet", "s1")  # held by its finalizer while a pool is left
    with pytest.raises(Conflict):
        claim(store, "busy", "10.0.1.2")  # no new IPs from a pool being deleted
    assert [r.ip for r in store.records("busy")] == ["10.0.1.1"]
    assert leader.reconcile().deleted == []

    release(store, "busy", "10.0.1.1")
    report = leader.reconcile()
    assert sorted(report.deleted) == ["SpiderIPPool/busy", "SpiderSubnet/s1"]
    assert not exists(store, "SpiderIPPool", "busy") and not exists(store, "SpiderSubnet", "s1")
    assert store.get("SpiderIPPool", "other") == other_before
    assert [r.ip for r in store.records("other")] == ["10.9.0.1"]


def test_subnet_without_pools_goes_at_once(store: Store, world: World) -> None:
    subnet(world)
    world.pool("other", "10.9.0.1", subnet="10.9.0.0/16")
    assert admin.delete_object(store, "SpiderSubnet", "s1") == f"{SS_REF} deleted"
    assert not exists(store, "SpiderSubnet", "s1") and exists(store, "SpiderIPPool", "other")


def test_pool_written_while_its_subnet_terminates_is_not_owned(
    store: Store, world: World, leader: PoolPass
) -> None:
    subnet(world)
    world.pool("busy", "10.0.1.1")
    claim(store, "busy", "10.0.1.1")
    admin.delete_object(store, "SpiderSubnet", "s1")
    late = world.pool("late", "10.0.1.5")
    assert subnet_refs(late) == [] and LABEL_OWNER_SUBNET not in late["metadata"]["labels"]
    leader.reconcile()
    assert not store.get("SpiderIPPool", "late")["metadata"].get("deletionTimestamp")
    release(store, "busy", "10.0.1.1")
    leader.reconcile()
    assert not exists(store, "SpiderSubnet", "s1") and exists(store, "SpiderIPPool", "late")


def test_owned_pool_without_finalizer_keeps_its_records(store: Store, world: World) -> None:
    """A pool written straight to the store (no admission, no finalizer) that names the subnet: the GC
    gives it the finalizer before deleting it, so its records are not dropped with it."""
    s1 = subnet(world)
    store.create(
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {
                "name": "raw",
                "ownerReferences": [
                    {
                        "apiVersion": SPIDER_API,
                        "kind": "SpiderSubnet",
                        "name": "s1",
                        "uid": s1["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {"ipVersion": 4, "subnet": "10.0.0.0/16", "ips": ["10.0.1.1"]},
        }
    )
    claim(store, "raw", "10.0.1.1")
    store.delete("SpiderSubnet", "s1")
    assert OwnerGC(store).collect().updated == ["SpiderIPPool/raw"]
    raw = store.get("SpiderIPPool", "raw")
    assert raw["metadata"]["deletionTimestamp"] and raw["metadata"]["finalizers"] == [FINALIZER]
    assert [r.ip for r in store.records("raw")] == ["10.0.1.1"]
    assert PoolController(store).reconcile().deleted == []
    release(store, "raw", "10.0.1.1")
    assert sorted(PoolController(store).reconcile().deleted) == ["SpiderIPPool/raw", "SpiderSubnet/s1"]


def test_owner_gc_leaves_live_subnets_pools_alone(store: Store, world: World) -> None:
    subnet(world)
    world.pool("p1", "10.0.1.1")
    before = store.get("SpiderIPPool", "p1")
    report = OwnerGC(store).collect()
    assert report.updated == [] and report.errors == []
    assert store.get("SpiderIPPool", "p1") == before


def test_auto_pool_goes_with_its_subnet_and_is_not_made_again(store: Store, world: World) -> None:
    subnet(world)
    template = {
        "metadata": {"annotations": {"ipam.spidernet.io/subnet": json.dumps({"ipv4": ["s1"]})}},
        "spec": {"containers": []},
    }
    app = world.app("Deployment", "web", {"replicas": 2, "template": template})
    subnets = SubnetController(store)
    leader = PoolPass(store, subnets)
    assert subnets.reconcile(app).errors == []
    (auto,) = [p["metadata"]["name"] for p in store.list("SpiderIPPool")]
    claim(store, auto, "10.0.1.0")

    admin.delete_object(store, "SpiderSubnet", "s1")
    leader.reconcile()
    assert store.get("SpiderIPPool", auto)["metadata"]["deletionTimestamp"]
    report = subnets.reconcile(app)
    assert report.updated == []
    assert report.errors == [
        'Deployment "default/web": SpiderSubnet "s1" is being deleted; no auto pool is made or resized from it'
    ]
    release(store, auto, "10.0.1.0")
    leader.reconcile()
    assert subnets.reconcile(app).updated == []  # the subnet is gone: nothing to cut a pool from
    assert store.list("SpiderIPPool") == [] and not exists(store, "SpiderSubnet", "s1")
