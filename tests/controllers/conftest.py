"""Fixtures for the controller tests: a real SqliteStore in tmp_path, a settable clock, and builders
for the Kubernetes objects the controllers read (pods, workloads, nodes, endpoints, records)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ipam import admin
from ipam.apiserver import format_timestamp
from ipam.kinds import SPIDER_API
from ipam.model import Endpoint, NicAllocation
from ipam.records import Claim, IPRecord, Obj
from ipam.store.protocol import Store
from ipam.store.sqlite import SqliteStore
from tests.kube.backend import kube_backend

NOW = 1_700_000_000.0


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db", clock=clock)
    try:
        yield s
    finally:
        s.close()


class World:
    """Writes objects into the store the way the API server / kubelet stand-in would."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def pool(self, name: str, ips: str, subnet: str = "10.0.0.0/16", **spec: Any) -> Obj:
        obj = {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": {"subnet": subnet, "ips": [ips], **spec},
        }
        return admin.apply_object(self.store, obj)[1]

    def subnet(self, name: str, subnet: str, ips: list[str], **spec: Any) -> Obj:
        obj = {
            "apiVersion": SPIDER_API,
            "kind": "SpiderSubnet",
            "metadata": {"name": name},
            "spec": {"subnet": subnet, "ips": ips, **spec},
        }
        return admin.apply_object(self.store, obj)[1]

    def node(self, name: str, ready: str = "True") -> Obj:
        return self.store.create(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": ready}]},
            }
        )

    def app(self, kind: str, name: str, spec: dict[str, Any], namespace: str = "default", **meta: Any) -> Obj:
        api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
        return self.store.create(
            {
                "apiVersion": api,
                "kind": kind,
                "metadata": {"name": name, "namespace": namespace, **meta},
                "spec": spec,
            }
        )

    def pod(
        self,
        name: str,
        *,
        owner: Obj | None = None,
        phase: str = "Running",
        pod_ips: tuple[str, ...] = (),
        node: str = "node1",
        namespace: str = "default",
        meta: dict[str, Any] | None = None,
        spec: dict[str, Any] | None = None,
        status: dict[str, Any] | None = None,
    ) -> Obj:
        metadata: dict[str, Any] = {"name": name, "namespace": namespace, **(meta or {})}
        if owner is not None:
            metadata["ownerReferences"] = [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                }
            ]
        return self.store.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": {"nodeName": node, "containers": [{"name": "c"}], **(spec or {})},
                "status": {
                    "phase": phase,
                    "podIPs": [{"ip": ip} for ip in pod_ips],
                    **(status or {}),
                },
            }
        )

    def allocate(
        self,
        pool: str,
        ip: str,
        namespace: str,
        name: str,
        uid: str,
        *,
        owner_kind: str = "Deployment",
        owner_name: str = "web",
        prefix: int = 16,
    ) -> IPRecord:
        """A record plus the pod's SpiderEndpoint, committed together as an allocation does."""
        usage = self.store.usage(pool)
        endpoint = Endpoint(
            namespace=namespace,
            name=name,
            uid=uid,
            node="node1",
            ips=(NicAllocation(interface="eth0", ipv4=f"{ip}/{prefix}", ipv4_pool=pool),),
            owner_controller_type=owner_kind,
            owner_controller_name=owner_name,
        )
        claim = Claim(
            pool=pool, pool_version=usage.resource_version, ip=ip, pod=f"{namespace}/{name}", pod_uid=uid
        )
        self.store.commit(claims=[claim], endpoint=endpoint.to_obj())
        return IPRecord(pool=pool, ip=ip, pod=f"{namespace}/{name}", pod_uid=uid)

    def claim_only(self, pool: str, ip: str, namespace: str, name: str, uid: str) -> IPRecord:
        usage = self.store.usage(pool)
        claim = Claim(
            pool=pool, pool_version=usage.resource_version, ip=ip, pod=f"{namespace}/{name}", pod_uid=uid
        )
        self.store.commit(claims=[claim])
        return IPRecord(pool=pool, ip=ip, pod=f"{namespace}/{name}", pod_uid=uid)

    def stamp(self, seconds_ago: float) -> str:
        return format_timestamp(self.clock.now - seconds_ago)

    def endpoint_exists(self, namespace: str, name: str) -> bool:
        return any(
            o["metadata"]["name"] == name for o in self.store.list("SpiderEndpoint", namespace=namespace)
        )

    def held(self, pool: str) -> set[str]:
        return {r.ip for r in self.store.records(pool)}


@pytest.fixture
def world(store: SqliteStore, clock: Clock) -> World:
    return World(store, clock)


@dataclass(frozen=True)
class _EmulatorOptions:
    history: int = 10_000


@pytest.fixture
def kube_store(tmp_path: Path) -> Iterator[Store]:
    """A KubeStore on a fresh Kubernetes API emulator: the backend where objects can be terminating
    (DELETE of an object with finalizers sets metadata.deletionTimestamp)."""
    with kube_backend(tmp_path, _EmulatorOptions()) as s:
        yield s
