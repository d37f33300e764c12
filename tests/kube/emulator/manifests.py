"""The project's Kubernetes manifests as the emulator reads them: the objects of ``configs/kubernetes``
(the kustomization's resources), the agent's identity (the DaemonSet's ServiceAccount) and the roles of
the other actors of a cluster that the tests play (``cluster_actors.yaml``)."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.kube.emulator.rbac import User, service_account

__all__ = [
    "BASE",
    "CLUSTER_ACTORS_GROUP",
    "agent_user",
    "base_objects",
    "cluster_actor_objects",
    "harness_user",
    "load",
]

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[3]
BASE = ROOT / "configs" / "kubernetes"
CLUSTER_ACTORS_GROUP = "spiderbgp-tests:cluster-actors"


def load(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@cache
def _base(base: Path) -> tuple[Obj, ...]:
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    out: list[Obj] = []
    for resource in kustomization["resources"]:
        out.extend(load(base / resource))
    return tuple(out)


def base_objects(base: Path = BASE) -> list[Obj]:
    """Every object the kustomization applies (fresh copies: callers may change them)."""
    return copy.deepcopy(list(_base(base)))


def agent_user(base: Path = BASE) -> User:
    """Who the agent is on a cluster: the ServiceAccount its DaemonSet runs as."""
    for obj in _base(base):
        if obj["kind"] == "DaemonSet":
            pod = obj["spec"]["template"]["spec"]
            return service_account(obj["metadata"]["namespace"], pod["serviceAccountName"])
    raise LookupError(f"no DaemonSet in {base}")


def harness_user(base: Path = BASE) -> User:
    """The agent's identity with the cluster actors' group: what a test store that also plays the
    kubelet, the controller-manager and the administrator (creating pods, pools, ...) runs as."""
    agent = agent_user(base)
    return User(agent.name, (*agent.groups, CLUSTER_ACTORS_GROUP))


def cluster_actor_objects() -> list[Obj]:
    return load(Path(__file__).with_name("cluster_actors.yaml"))
