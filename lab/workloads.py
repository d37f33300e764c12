"""The lab's workload controllers (kube-controller-manager's part), as pure functions.

``plan(cluster, suffix)`` looks at one consistent snapshot of the store and returns what the
controllers would write next, as actions the long-running controller (``lab.controller``) applies:

* Deployment -> one ReplicaSet per pod template (``<name>-<pod-template-hash>``); a changed template
  gets a new ReplicaSet and the old ones go (their pods with them);
* ReplicaSet -> its ``replicas`` pods ``<rs>-<5 chars>``; extra pods go, not-yet-running ones first;
* StatefulSet -> pods ``<name>-<ordinal>`` for ordinals ``0..replicas-1``; a pod is re-created under the
  same name only once the old one is gone, so its identity (and its fixed IP) is kept;
* DaemonSet -> one pod per Ready node its pod template fits (nodeSelector, required node affinity);
* Job -> pods until ``completions`` of them Succeeded, ``parallelism`` at a time;
* garbage collection: a pod (or ReplicaSet) whose controller owner is gone is deleted, as
  Kubernetes' garbage collector does.

Status of each workload (replicas, readyReplicas, ...) is written the way ``kubectl rollout status``
reads it.  Nothing here does I/O; ``suffix`` makes the random part of pod names (injected so tests
get stable names).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipam.records import Obj
from lab.scheduler import node_fits

__all__ = [
    "NAME_ALPHABET",
    "WORKLOAD_KINDS",
    "Action",
    "Cluster",
    "Create",
    "Delete",
    "Update",
    "UpdateStatus",
    "is_pod_ready",
    "is_terminal",
    "plan",
    "pod_template_hash",
]

WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job")
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the consonants-and-digits set Kubernetes uses in names
DEFAULT_GRACE_SECONDS = 30  # a Pod's default spec.terminationGracePeriodSeconds


@dataclass(frozen=True)
class Create:
    obj: Obj


@dataclass(frozen=True)
class Update:
    """Write metadata and spec (``obj`` carries the resourceVersion read)."""

    obj: Obj


@dataclass(frozen=True)
class UpdateStatus:
    obj: Obj


@dataclass(frozen=True)
class Delete:
    kind: str
    namespace: str
    name: str
    grace: int | None = None  # Pods: the grace period (they become terminating first)


Action = Create | Update | UpdateStatus | Delete


@dataclass(frozen=True)
class Cluster:
    """The objects the controllers read, per kind (a consistent snapshot)."""

    objects: Mapping[str, Sequence[Obj]] = field(default_factory=dict)

    def of(self, kind: str) -> Sequence[Obj]:
        return self.objects.get(kind, ())


def pod_template_hash(template: Mapping[str, Any]) -> str:
    """A stable 10-character name-safe hash of a pod template (the ReplicaSet name suffix)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(NAME_ALPHABET[b % len(NAME_ALPHABET)] for b in digest[:10])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _ns(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("namespace") or "")


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("name") or "")


def _uid(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("uid") or "")


def _terminating(obj: Mapping[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _is_active(pod: Mapping[str, Any]) -> bool:
    return not _terminating(pod) and not is_terminal(pod)


def _replicas(obj: Mapping[str, Any]) -> int:
    value = (obj.get("spec") or {}).get("replicas", 1)
    return value if isinstance(value, int) and value >= 0 else 1


def _owner_ref(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": _name(obj),
        "uid": _uid(obj),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller, when that is one of the lab's workload kinds (the lab
    collects nothing that a controller it does not run owns)."""
    for ref in _meta(obj).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("kind") in WORKLOAD_KINDS:
            return str(ref.get("uid") or "")
    return None


def _owned(objs: Iterable[Obj], owner: Mapping[str, Any]) -> list[Obj]:
    uid = _uid(owner)
    return [o for o in objs if _controller_uid(o) == uid]


def _template(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    template = (obj.get("spec") or {}).get("template") or {}
    return template if isinstance(template, Mapping) else {}


def _new_pod(
    name: str,
    owner: Mapping[str, Any],
    template: Mapping[str, Any],
    labels: Mapping[str, str],
    *,
    node: str | None = None,
) -> Obj:
    tmeta = template.get("metadata") or {}
    spec = dict(template.get("spec") or {})
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": _ns(owner),
            "labels": dict(labels),
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [_owner_ref(owner)],
        },
        "spec": spec,
        "status": {"phase": "Pending"},
    }


def _pod_delete(pod: Mapping[str, Any]) -> Delete:
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    return Delete(
        "Pod", _ns(pod), _name(pod), int(grace) if isinstance(grace, int) else DEFAULT_GRACE_SECONDS
    )


def _status_action(obj: Obj, status: Mapping[str, Any]) -> list[Action]:
    old = obj.get("status") or {}
    merged = {**old, **status}
    if merged == old:
        return []
    return [UpdateStatus({**obj, "status": merged})]


def _replica_status(obj: Obj, pods: Sequence[Obj]) -> list[Action]:
    active = [p for p in pods if _is_active(p)]
    ready = sum(1 for p in active if is_pod_ready(p))
    return _status_action(
        obj,
        {
            "observedGeneration": _meta(obj).get("generation", 1),
            "replicas": len(active),
            "updatedReplicas": len(active),
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    )


def _unique_name(prefix: str, taken: set[str], suffix: Callable[[], str]) -> str:
    while True:
        name = f"{prefix}-{suffix()}"
        if name not in taken:
            taken.add(name)
            return name


# ---- the controllers --------------------------------------------------------------------------


def _scaled(value: object, total: int, default: str, *, round_up: bool) -> int:
    """A maxSurge / maxUnavailable value: an integer, or a percentage of ``total``."""
    text = str(value if isinstance(value, int | str) else default)
    if text.endswith("%") and text[:-1].isdigit():
        share = total * int(text[:-1])
        return -(-share // 100) if round_up else share // 100
    return int(text) if text.isdigit() else _scaled(default, total, default, round_up=round_up)


def _rollout_bounds(deploy: Mapping[str, Any], replicas: int) -> tuple[int, int] | None:
    """(maxSurge, maxUnavailable) of a RollingUpdate Deployment (25 % each by default, as in
    Kubernetes), or None for ``strategy.type: Recreate``."""
    strategy = (deploy.get("spec") or {}).get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return None
    rolling = strategy.get("rollingUpdate") or {}
    surge = _scaled(rolling.get("maxSurge"), replicas, "25%", round_up=True)
    unavailable = _scaled(rolling.get("maxUnavailable"), replicas, "25%", round_up=False)
    return surge, (unavailable if surge or unavailable else 1)


def _new_replicaset(deploy: Obj, name: str, labels: Mapping[str, str], replicas: int) -> Obj:
    template = _template(deploy)
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": _ns(deploy),
            "labels": dict(labels),
            "annotations": {"deployment.kubernetes.io/desired-replicas": str(_replicas(deploy))},
            "ownerReferences": [_owner_ref(deploy)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                **template,
                "metadata": {**(template.get("metadata") or {}), "labels": dict(labels)},
            },
        },
    }


def _sync_deployment(deploy: Obj, rss: Sequence[Obj], pods: Sequence[Obj]) -> list[Action]:
    """One ReplicaSet per pod template.  A new template rolls out as Kubernetes does it: with
    RollingUpdate the new ReplicaSet grows while at most ``maxSurge`` extra pods exist, and the old
    ones shrink while at least ``replicas - maxUnavailable`` pods stay Ready; with Recreate the old
    pods go first.  Old ReplicaSets are deleted once they have no pods left."""
    template = _template(deploy)
    tmpl_hash = pod_template_hash(template)
    rs_name = f"{_name(deploy)}-{tmpl_hash}"
    replicas = _replicas(deploy)
    labels = {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": tmpl_hash}
    owned = [rs for rs in _owned(rss, deploy) if not _terminating(rs)]
    current = next((rs for rs in owned if _name(rs) == rs_name), None)
    olds = [rs for rs in owned if _name(rs) != rs_name]

    def active(rs: Obj) -> list[Obj]:
        return [p for p in _owned(pods, rs) if _is_active(p)]

    def ready(rs: Obj) -> int:
        return sum(1 for p in active(rs) if is_pod_ready(p))

    bounds = _rollout_bounds(deploy, replicas)
    old_pods = sum(len(active(rs)) for rs in olds)
    if bounds is None:  # Recreate: the new pods only once every old one is gone
        want_new = replicas if old_pods == 0 else 0
    elif not olds:
        want_new = replicas
    else:
        surge, _ = bounds
        have_new = _replicas(current) if current is not None else 0
        want_new = min(replicas, max(have_new, replicas + surge - sum(_replicas(rs) for rs in olds)))
    actions: list[Action] = []
    if current is None:
        actions.append(Create(_new_replicaset(deploy, rs_name, labels, want_new)))
    elif _replicas(current) != want_new:
        actions.append(Update({**current, "spec": {**current["spec"], "replicas": want_new}}))
    # how many Ready old pods may go now without dropping under replicas - maxUnavailable
    room = sum(ready(rs) for rs in owned) - (replicas - bounds[1]) if bounds is not None else 0
    for rs in sorted(olds, key=lambda r: str(_meta(r).get("creationTimestamp") or "")):
        have = _replicas(rs)
        if have == 0 and not active(rs):
            actions.append(Delete("ReplicaSet", _ns(rs), _name(rs)))
            continue
        if bounds is None:
            take = have
        else:
            unready = max(0, have - ready(rs))  # pods not serving anyway go at once
            take = min(have, unready + max(0, room))
            room -= max(0, take - unready)
        if take:
            actions.append(Update({**rs, "spec": {**rs["spec"], "replicas": have - take}}))
    all_active = [p for rs in owned for p in active(rs)]
    ready_all = sum(1 for p in all_active if is_pod_ready(p))
    status = {
        "observedGeneration": _meta(deploy).get("generation", 1),
        "replicas": len(all_active),
        "updatedReplicas": len(active(current)) if current is not None else 0,
        "readyReplicas": ready_all,
        "availableReplicas": ready_all,
    }
    return actions + _status_action(deploy, status)


def _sync_replicaset(
    rs: Obj, pods: Sequence[Obj], taken: set[str], suffix: Callable[[], str]
) -> list[Action]:
    mine = [p for p in _owned(pods, rs) if _is_active(p)]
    replicas = _replicas(rs)
    actions: list[Action] = []
    if len(mine) > replicas:
        # as the ReplicaSet controller ranks them: unscheduled, then not ready, then the youngest go first
        ranked = sorted(
            mine,
            key=lambda p: (
                bool((p.get("spec") or {}).get("nodeName")),
                is_pod_ready(p),
                _inverse(str(_meta(p).get("creationTimestamp") or "")),
            ),
        )
        actions += [_pod_delete(p) for p in ranked[: len(mine) - replicas]]
    template = _template(rs)
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    for _ in range(replicas - len(mine)):
        actions.append(Create(_new_pod(_unique_name(_name(rs), taken, suffix), rs, template, labels)))
    return actions + _replica_status(rs, mine)


def _inverse(text: str) -> tuple[int, ...]:
    """A sort key that orders strings descending."""
    return tuple(-ord(c) for c in text)


def _ordinal(name: str, sts_name: str) -> int | None:
    prefix, _, tail = name.rpartition("-")
    return int(tail) if prefix == sts_name and tail.isdigit() else None


def _sync_statefulset(sts: Obj, pods: Sequence[Obj]) -> list[Action]:
    """Pods ``<name>-0..replicas-1``.  With the default ``podManagementPolicy: OrderedReady`` a pod is
    created only once every lower ordinal is Ready, and the highest extra one goes first, one at a
    time; ``Parallel`` creates and deletes them all at once."""
    name = _name(sts)
    replicas = _replicas(sts)
    template = _template(sts)
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    parallel = (sts.get("spec") or {}).get("podManagementPolicy") == "Parallel"
    mine = _owned(pods, sts)
    by_name = {_name(p): p for p in mine}
    actions: list[Action] = []
    extras = sorted(
        (p for p in mine if not _terminating(p) and (_ordinal(_name(p), name) or 0) >= replicas),
        key=lambda p: -(_ordinal(_name(p), name) or 0),
    )
    extras += [p for p in mine if _ordinal(_name(p), name) is None and not _terminating(p)]
    if parallel:
        actions += [_pod_delete(p) for p in extras]
    elif extras and not any(_terminating(p) for p in mine):
        actions.append(_pod_delete(extras[0]))
    for ordinal in range(replicas):
        pod_name = f"{name}-{ordinal}"
        pod = by_name.get(pod_name)
        if pod is None:  # a terminating one must be gone first: the name is the identity
            pod_labels = {
                **labels,
                "statefulset.kubernetes.io/pod-name": pod_name,
                "apps.kubernetes.io/pod-index": str(ordinal),
            }
            actions.append(Create(_new_pod(pod_name, sts, template, pod_labels)))
            if not parallel:
                break
        elif not parallel and (_terminating(pod) or not is_pod_ready(pod)):
            break
    return actions + _replica_status(sts, mine)


def _sync_daemonset(
    ds: Obj, pods: Sequence[Obj], nodes: Sequence[Obj], taken: set[str], suffix: Callable[[], str]
) -> list[Action]:
    template = _template(ds)
    spec = template.get("spec") or {}
    wanted = [
        _name(n)
        for n in nodes
        if node_fits(spec, n)
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (n.get("status") or {}).get("conditions") or []
        )
    ]
    mine = [p for p in _owned(pods, ds) if _is_active(p)]
    on_node: dict[str, list[Obj]] = {}
    for pod in mine:
        on_node.setdefault(str((pod.get("spec") or {}).get("nodeName") or ""), []).append(pod)
    actions: list[Action] = []
    for node, node_pods in on_node.items():
        extra = node_pods if node not in wanted else node_pods[1:]
        actions += [_pod_delete(p) for p in extra]
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    for node in wanted:
        if node not in on_node:
            actions.append(
                Create(_new_pod(_unique_name(_name(ds), taken, suffix), ds, template, labels, node=node))
            )
    ready = sum(1 for p in mine if is_pod_ready(p))
    return actions + _status_action(
        ds,
        {
            "observedGeneration": _meta(ds).get("generation", 1),
            "desiredNumberScheduled": len(wanted),
            "currentNumberScheduled": len([n for n in on_node if n in wanted]),
            "updatedNumberScheduled": len([n for n in on_node if n in wanted]),
            "numberReady": ready,
            "numberAvailable": ready,
            "numberMisscheduled": len([n for n in on_node if n not in wanted]),
        },
    )


def _sync_job(job: Obj, pods: Sequence[Obj], taken: set[str], suffix: Callable[[], str]) -> list[Action]:
    spec = job.get("spec") or {}
    completions = spec.get("completions", 1) if isinstance(spec.get("completions", 1), int) else 1
    parallelism = spec.get("parallelism", 1) if isinstance(spec.get("parallelism", 1), int) else 1
    mine = _owned(pods, job)
    succeeded = sum(1 for p in mine if (p.get("status") or {}).get("phase") == "Succeeded")
    failed = sum(1 for p in mine if (p.get("status") or {}).get("phase") == "Failed")
    active = [p for p in mine if _is_active(p)]
    actions: list[Action] = []
    status: dict[str, Any] = {"active": len(active), "succeeded": succeeded, "failed": failed}
    old = job.get("status") or {}
    status["startTime"] = old.get("startTime") or _now()
    if succeeded >= completions:
        status["completionTime"] = old.get("completionTime") or _now()
        status["conditions"] = old.get("conditions") or [
            {"type": "Complete", "status": "True", "lastTransitionTime": _now()}
        ]
    else:
        template = _template(job)
        labels = {
            **((template.get("metadata") or {}).get("labels") or {}),
            "job-name": _name(job),
            "batch.kubernetes.io/job-name": _name(job),
            "controller-uid": _uid(job),
        }
        for _ in range(max(0, min(parallelism, completions - succeeded) - len(active))):
            actions.append(Create(_new_pod(_unique_name(_name(job), taken, suffix), job, template, labels)))
    return actions + _status_action(job, status)


def _garbage(cluster: Cluster) -> list[Action]:
    """Pods and ReplicaSets whose controller owner no longer exists (or is being deleted)."""
    live = {_uid(o) for kind in WORKLOAD_KINDS for o in cluster.of(kind) if not _terminating(o)}
    actions: list[Action] = []
    for rs in cluster.of("ReplicaSet"):
        owner = _controller_uid(rs)
        if owner is not None and owner not in live and not _terminating(rs):
            actions.append(Delete("ReplicaSet", _ns(rs), _name(rs)))
    for pod in cluster.of("Pod"):
        owner = _controller_uid(pod)
        if owner is not None and owner not in live and not _terminating(pod):
            actions.append(_pod_delete(pod))
    return actions


def plan(cluster: Cluster, suffix: Callable[[], str]) -> list[Action]:
    """Everything the workload controllers would write now, given ``cluster``."""
    pods = list(cluster.of("Pod"))
    rss = list(cluster.of("ReplicaSet"))
    nodes = list(cluster.of("Node"))
    taken = {f"{_ns(p)}/{_name(p)}" for p in pods}
    names: dict[str, set[str]] = {}
    for key in taken:
        ns, _, name = key.partition("/")
        names.setdefault(ns, set()).add(name)
    actions: list[Action] = []
    for deploy in cluster.of("Deployment"):
        if not _terminating(deploy):
            actions += _sync_deployment(deploy, rss, pods)
    for rs in rss:
        if not _terminating(rs):
            actions += _sync_replicaset(rs, pods, names.setdefault(_ns(rs), set()), suffix)
    for sts in cluster.of("StatefulSet"):
        if not _terminating(sts):
            actions += _sync_statefulset(sts, pods)
    for ds in cluster.of("DaemonSet"):
        if not _terminating(ds):
            actions += _sync_daemonset(ds, pods, nodes, names.setdefault(_ns(ds), set()), suffix)
    for job in cluster.of("Job"):
        if not _terminating(job):
            actions += _sync_job(job, pods, names.setdefault(_ns(job), set()), suffix)
    return actions + _garbage(cluster)
