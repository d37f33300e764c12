"""What ``python -m lab``'s kubectl-like verbs do to the store, shared by the CLI, the demo and tests.

Every verb only writes the objects a ``kubectl`` call would (the long-running controller,
``lab.controller``, acts on them); ``wait_settled`` waits as ``kubectl rollout status`` does, until
every workload has its pods and every pod is Running (or Succeeded), or carries the reason it cannot
run.  Errors are ``VerbError`` (or the store's own errors): one line naming the object and field.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipam.admin import apply_documents, delete_object, load_documents, object_ref
from ipam.errors import Conflict, IpamError, NotFound
from ipam.kinds import kind_info, resolve_kind
from ipam.records import Obj
from ipam.store.protocol import Store
from lab.workloads import WORKLOAD_KINDS, is_pod_ready, is_terminal

__all__ = [
    "PodState",
    "VerbError",
    "apply_file",
    "delete_file",
    "delete_named",
    "delete_pod",
    "format_pods",
    "label_node",
    "objects",
    "pod_state",
    "scale",
    "unsettled",
    "wait_settled",
]

DEFAULT_GRACE_SECONDS = 30


class VerbError(IpamError):
    """A user error of a lab verb (one line)."""


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise VerbError(f"{path}: {exc.strerror or exc}") from None


def apply_file(store: Store, path: Path) -> list[str]:
    """``kubectl apply -f``: every document admitted first (nothing written if one is refused)."""
    return list(apply_documents(store, load_documents(_read(path), source=str(path))))


def delete_pod(store: Store, name: str, namespace: str = "default") -> str:
    """A graceful pod delete: the pod becomes terminating; the controller tears its sandbox down
    (CNI DEL releases the IP) and then removes it; its owner replaces it."""
    pod = store.get("Pod", name, namespace)
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    store.delete(
        "Pod",
        name,
        namespace,
        grace_period_seconds=grace if isinstance(grace, int) else DEFAULT_GRACE_SECONDS,
    )
    return f'pod "{name}" deleted'


def delete_named(store: Store, kind: str, name: str, namespace: str | None = None) -> str:
    """``kubectl delete KIND NAME [-n NS]`` (kind, plural or short name)."""
    try:
        info = resolve_kind(kind)
    except KeyError as exc:
        raise VerbError(str(exc.args[0])) from None
    ns = (namespace or "default") if info.namespaced else ""
    if info.kind == "Pod":
        return delete_pod(store, name, ns)
    return delete_object(store, info.kind, name, ns, refuse_in_use=True)


def delete_file(store: Store, path: Path) -> list[str]:
    """``kubectl delete -f``: the file's objects, last first; absent ones are reported, not fatal."""
    lines: list[str] = []
    for doc in reversed(load_documents(_read(path), source=str(path))):
        info = kind_info(doc["kind"])
        name = doc["metadata"]["name"]
        ns = str(doc["metadata"].get("namespace") or "default") if info.namespaced else None
        try:
            lines.append(delete_named(store, info.kind, name, ns))
        except NotFound:
            lines.append(f"Error from server (NotFound): {object_ref(info, name)} not found")
    return list(reversed(lines))


def scale(store: Store, target: str, replicas: int, namespace: str = "default") -> str:
    """``kubectl scale KIND/NAME --replicas N``; a bare NAME means a Deployment or a StatefulSet."""
    if replicas < 0:
        raise VerbError(f"scale {target}: replicas: must be 0 or more, not {replicas}")
    if "/" in target:
        kind_name, _, name = target.partition("/")
        try:
            kinds: Sequence[str] = (resolve_kind(kind_name).kind,)
        except KeyError as exc:
            raise VerbError(str(exc.args[0])) from None
        if kinds[0] not in ("Deployment", "ReplicaSet", "StatefulSet"):
            raise VerbError(f"scale {target}: {kinds[0]} has no spec.replicas to scale")
    else:
        name, kinds = target, ("Deployment", "StatefulSet")
    for kind in kinds:
        for _ in range(8):
            try:
                obj = store.get(kind, name, namespace)
            except NotFound:
                break
            obj.setdefault("spec", {})["replicas"] = replicas
            try:
                store.update(obj)
            except Conflict:
                continue
            return f"{object_ref(kind_info(kind), name)} scaled"
    shown = " or ".join(kinds)
    raise VerbError(f'scale {target}: no {shown} "{name}" in namespace "{namespace}"')


def label_node(store: Store, node: str, assignments: Sequence[str], *, overwrite: bool = False) -> str:
    """``kubectl label node NODE key=value ... key-``."""
    changes: dict[str, str | None] = {}
    for item in assignments:
        if item.endswith("-") and "=" not in item:
            changes[item[:-1]] = None
            continue
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise VerbError(f"label node {node}: {item!r}: labels are key=value (or key- to remove)")
        changes[key] = value
    for _ in range(8):
        obj = store.get("Node", node)
        labels = dict(obj["metadata"].get("labels") or {})
        for key, change in changes.items():
            if change is not None and key in labels and labels[key] != change and not overwrite:
                raise VerbError(
                    f"node {node}: metadata.labels.{key}: already has a value ({labels[key]}), "
                    "and --overwrite is false"
                )
            if change is None:
                labels.pop(key, None)
            else:
                labels[key] = change
        obj["metadata"]["labels"] = labels
        try:
            store.update(obj)
        except Conflict:
            continue
        return f"node/{node} labeled"
    raise Conflict(f'Node "{node}": kept changing while being labelled; try again')


# ---- pods as kubectl shows them ---------------------------------------------------------------


@dataclass(frozen=True)
class PodState:
    """The STATUS column of ``kubectl get pods`` and why a pod is not running (if it is not)."""

    status: str
    reason: str = ""  # the failure message of a pod that cannot run now (scheduling or sandbox)


def pod_state(pod: Mapping[str, Any]) -> PodState:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return PodState("Terminating")
    phase = str(status.get("phase") or "Pending")
    if phase == "Succeeded":
        return PodState("Completed")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return PodState("Pending", str(cond.get("message") or cond.get("reason") or ""))
    for c in status.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting")
        if isinstance(waiting, Mapping):
            return PodState(str(waiting.get("reason") or phase), str(waiting.get("message") or ""))
    return PodState(phase)


def _age(created: str, now: float) -> str:
    try:
        stamp = time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return "<unknown>"
    secs = max(0, int(now - stamp))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h"


def format_pods(
    pods: Sequence[Mapping[str, Any]], *, now: float, wide: bool = True, namespaces: bool = False
) -> str:
    """``kubectl get pods`` columns (``-o wide`` adds IP and NODE, ``-A`` adds NAMESPACE)."""
    head = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    if wide:
        head += ["IP", "NODE"]
    if namespaces:
        head = ["NAMESPACE", *head]
    rows = [tuple(head)]
    for pod in pods:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        containers = status.get("containerStatuses") or []
        ready = sum(1 for c in containers if c.get("ready"))
        total = len(spec.get("containers") or []) or len(containers) or 1
        row = [
            str(meta.get("name", "")),
            f"{ready}/{total}",
            pod_state(pod).status,
            str(sum(int(c.get("restartCount", 0)) for c in containers)),
            _age(str(meta.get("creationTimestamp", "")), now),
        ]
        if wide:
            row += [str(status.get("podIP") or "<none>"), str(spec.get("nodeName") or "<none>")]
        if namespaces:
            row = [str(meta.get("namespace", "")), *row]
        rows.append(tuple(row))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


# ---- wait ---------------------------------------------------------------------------------------


def _workload_unsettled(obj: Obj) -> str | None:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    ref = f"{obj['kind'].lower()}/{meta.get('namespace')}/{meta['name']}"
    if meta.get("deletionTimestamp"):
        return None
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 1):
        return f"{ref}: not yet observed by the controller"
    kind = obj["kind"]
    if kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        want = spec.get("replicas", 1)
        if status.get("replicas") != want:
            return f"{ref}: {status.get('replicas', 0)} of {want} pods"
        if kind == "Deployment" and status.get("updatedReplicas") != want:
            return f"{ref}: {status.get('updatedReplicas', 0)} of {want} pods updated"
    if kind == "DaemonSet" and status.get("currentNumberScheduled") != status.get("desiredNumberScheduled"):
        return (
            f"{ref}: {status.get('currentNumberScheduled', 0)} of {status.get('desiredNumberScheduled')} pods"
        )
    return None


def _orphaned(obj: Obj, live: set[Any]) -> bool:
    """Its controller owner is gone: the garbage collector is about to delete it."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("kind") in WORKLOAD_KINDS:
            return ref.get("uid") not in live
    return False


def unsettled(store: Store, namespace: str | None = None) -> tuple[list[str], list[str]]:
    """(what is still moving, pods that cannot run and why).  Settled when the first list is empty."""
    moving: list[str] = []
    failing: list[str] = []
    with store.snapshot():
        workloads = [
            o for kind in WORKLOAD_KINDS if kind != "Job" for o in store.list(kind, namespace=namespace)
        ]
        jobs = store.list("Job", namespace=namespace)
        pods = store.list("Pod", namespace=namespace)
    live = {
        o["metadata"].get("uid") for o in [*workloads, *jobs] if not o["metadata"].get("deletionTimestamp")
    }
    for obj in workloads:
        why = _workload_unsettled(obj)
        if why:
            moving.append(why)
        elif _orphaned(obj, live):
            moving.append(
                f"{obj['kind'].lower()}/{obj['metadata'].get('namespace')}/{obj['metadata']['name']}: owner gone"
            )
    for job in jobs:
        status = job.get("status") or {}
        if not status.get("completionTime") and not status.get("active"):
            moving.append(f"job/{job['metadata'].get('namespace')}/{job['metadata']['name']}: not started")
    for pod in pods:
        meta = pod["metadata"]
        ref = f"pod/{meta.get('namespace')}/{meta['name']}"
        state = pod_state(pod)
        if _orphaned(pod, live):
            moving.append(f"{ref}: owner gone, to be deleted")
        elif state.reason:
            failing.append(f"{ref} {state.status}: {state.reason}")
        elif state.status == "Terminating" or not (is_terminal(pod) or is_pod_ready(pod)):
            moving.append(f"{ref}: {state.status}")
    return moving, failing


def wait_settled(
    store: Store,
    *,
    namespace: str | None = None,
    timeout: float = 120.0,
    interval: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Wait until nothing moves; returns the pods that cannot run (with their reason).  Raises
    TimeoutError naming what still moves."""
    deadline = clock() + timeout
    stable = 0
    while True:
        moving, failing = unsettled(store, namespace)
        # settled twice in a row: a write the controller is about to make can not slip between
        stable = stable + 1 if not moving else 0
        if stable >= 2:
            return failing
        if clock() >= deadline:
            shown = "; ".join(moving[:5]) + (f"; and {len(moving) - 5} more" if len(moving) > 5 else "")
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for: {shown}")
        sleep(interval)


def objects(store: Store, kind: str, name: str | None, namespace: str | None) -> Iterator[Obj]:
    """``kubectl get KIND [NAME]`` objects (NotFound for a missing NAME)."""
    info = resolve_kind(kind)
    ns = namespace if info.namespaced else None
    if name is not None:
        yield store.get(info.kind, name, (ns or "default") if info.namespaced else "")
        return
    yield from store.list(info.kind, namespace=ns)
