"""A small builder of cluster state on a real store: pools through admission (as ``spiderbgp apply``
writes them), Pods, Namespaces, Nodes and workloads through the object store (as the lab's kubelet
stand-in writes them), and CNI-shaped requests for the IPAM service."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ipam.admin import apply_object
from ipam.errors import NotFound
from ipam.kinds import KINDS
from ipam.records import Obj
from ipam.service import AllocateRequest, ReleaseRequest
from ipam.store.protocol import Store

SPIDER_API = "spiderpool.spidernet.io/v2beta1"
HOLD = "sbgp.test/hold"

__all__ = ["HOLD", "SPIDER_API", "World", "dump"]


def dump(store: Store) -> dict[str, Any]:
    """Every object of every kind and every allocation record: compare two dumps to prove that an
    operation changed nothing."""
    objects: dict[str, Any] = {}
    records: dict[str, Any] = {}
    for info in KINDS:
        objects[info.kind] = store.list(info.kind)
    for pool in objects["SpiderIPPool"]:
        name = pool["metadata"]["name"]
        records[name] = store.records(name)
    return {"objects": objects, "records": records}


class World:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._containers = itertools.count(1)

    # -- IPAM objects ---------------------------------------------------------------------------

    def pool(self, name: str, subnet: str, ips: Sequence[str], **spec: Any) -> Obj:
        body = {"subnet": subnet, "ips": list(ips), **spec}
        _, written = apply_object(
            self.store,
            {"apiVersion": SPIDER_API, "kind": "SpiderIPPool", "metadata": {"name": name}, "spec": body},
        )
        return written

    def reserve(self, name: str, ips: Sequence[str]) -> Obj:
        _, written = apply_object(
            self.store,
            {
                "apiVersion": SPIDER_API,
                "kind": "SpiderReservedIP",
                "metadata": {"name": name},
                "spec": {"ips": list(ips)},
            },
        )
        return written

    def patch_pool(self, name: str, **spec: Any) -> Obj:
        obj = self.store.get("SpiderIPPool", name)
        obj["spec"].update(spec)
        _, written = apply_object(self.store, obj)
        return written

    def _terminate(self, kind: str, name: str, namespace: str = "") -> None:
        """Delete an object held by a finalizer, so it stays, terminating (both stores follow the API
        server's deletion rules)."""
        obj = self.store.get(kind, name, namespace)
        obj["metadata"]["finalizers"] = [*obj["metadata"].get("finalizers", []), HOLD]
        self.store.update(obj)
        self.store.delete(kind, name, namespace)
        held = self.store.get(kind, name, namespace)
        assert held["metadata"].get("deletionTimestamp"), f"{kind} {name} is not terminating"

    def terminate_pool(self, name: str) -> None:
        self._terminate("SpiderIPPool", name)

    # -- Kubernetes objects ---------------------------------------------------------------------

    def namespace(
        self,
        name: str,
        *,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Obj:
        meta: dict[str, Any] = {"name": name}
        if annotations:
            meta["annotations"] = dict(annotations)
        if labels:
            meta["labels"] = dict(labels)
        return self.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})

    def node(self, name: str, labels: Mapping[str, str] | None = None) -> Obj:
        return self.store.create(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": dict(labels or {})}}
        )

    def pod(
        self,
        name: str,
        namespace: str = "default",
        *,
        node: str = "node1",
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        owner: Mapping[str, Any] | None = None,
        phase: str = "Running",
    ) -> Obj:
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            meta["annotations"] = dict(annotations)
        if labels:
            meta["labels"] = dict(labels)
        if owner:
            meta["ownerReferences"] = [{**owner, "controller": True}]
        return self.store.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
                "status": {"phase": phase},
            }
        )

    def delete_pod(self, name: str, namespace: str = "default") -> None:
        self.store.delete("Pod", name, namespace)

    def terminate_pod(self, name: str, namespace: str = "default") -> None:
        """The pod stays, with a deletionTimestamp (held by a finalizer)."""
        self._terminate("Pod", name, namespace)

    def set_phase(
        self, name: str, phase: str, namespace: str = "default", restart_policy: str = "Never"
    ) -> None:
        obj = self.store.get("Pod", name, namespace)
        obj["spec"]["restartPolicy"] = restart_policy
        self.store.update(obj)
        obj = self.store.get("Pod", name, namespace)
        obj["status"]["phase"] = phase
        self.store.update_status(obj)

    def deployment(self, name: str, namespace: str = "default", replicas: int = 1) -> dict[str, Any]:
        """A Deployment and its ReplicaSet; returns the owner reference for the pods."""
        dep = self.store.create(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"replicas": replicas},
            }
        )
        rs_name = f"{name}-5d8f7c9b4"
        rs = self.store.create(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "namespace": namespace,
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": name,
                            "uid": dep["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": {"replicas": replicas},
            }
        )
        return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name, "uid": rs["metadata"]["uid"]}

    def statefulset(self, name: str, namespace: str = "default", replicas: int = 1) -> dict[str, Any]:
        sts = self.store.create(
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"replicas": replicas},
            }
        )
        return {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "uid": sts["metadata"]["uid"]}

    def scale_statefulset(self, name: str, replicas: int, namespace: str = "default") -> None:
        obj = self.store.get("StatefulSet", name, namespace)
        obj["spec"]["replicas"] = replicas
        self.store.update(obj)

    # -- requests -------------------------------------------------------------------------------

    def uid(self, name: str, namespace: str = "default") -> str:
        return str(self.store.get("Pod", name, namespace)["metadata"]["uid"])

    def add(
        self,
        name: str,
        namespace: str = "default",
        *,
        nic: str = "eth0",
        container: str | None = None,
        uid: str | None = None,
        v4: Sequence[str] = (),
        v6: Sequence[str] = (),
        network: str = "",
    ) -> AllocateRequest:
        return AllocateRequest(
            container_id=container or f"c{next(self._containers):04d}",
            nic=nic,
            pod_namespace=namespace,
            pod_name=name,
            pod_uid=self._uid_or(name, namespace) if uid is None else uid,
            default_v4_pools=tuple(v4),
            default_v6_pools=tuple(v6),
            network=network,
        )

    def delete_request(
        self, add: AllocateRequest, *, container: str | None = None, uid: str | None = None
    ) -> ReleaseRequest:
        return ReleaseRequest(
            container_id=add.container_id if container is None else container,
            nic=add.nic,
            pod_namespace=add.pod_namespace,
            pod_name=add.pod_name,
            pod_uid=add.pod_uid if uid is None else uid,
        )

    def _uid_or(self, name: str, namespace: str) -> str:
        try:
            return self.uid(name, namespace)
        except NotFound:
            return ""

    def endpoint(self, name: str, namespace: str = "default") -> Obj | None:
        try:
            return self.store.get("SpiderEndpoint", name, namespace)
        except NotFound:
            return None

    def held(self, pool: str) -> dict[str, tuple[str, str]]:
        """ip -> (pod, podUid) of a pool, from the records."""
        return {r.ip: (r.pod, r.pod_uid) for r in self.store.records(pool)}

    def allocated_ips_status(self, pool: str) -> dict[str, Any]:
        raw = self.store.get("SpiderIPPool", pool).get("status", {}).get("allocatedIPs")
        return json.loads(raw) if raw else {}
