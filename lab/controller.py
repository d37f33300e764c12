"""The lab's long-running controller: control plane and kubelets of the lab's little cluster.

``python -m lab up`` starts one ``python -m lab.controller --run-dir DIR`` process.  It watches the
store (the revision moves on every write) and, on each change, does what kube-controller-manager,
kube-scheduler and the nodes' kubelets would:

* the workload controllers (``lab.workloads.plan``) for every namespace: Deployments, ReplicaSets,
  StatefulSets, DaemonSets, Jobs, and the garbage collection of objects whose owner is gone;
* a deleted (or terminating) Namespace takes every object in it, pods gracefully;
* the scheduler (``lab.scheduler``) places each unscheduled pod, or says why it cannot in the pod's
  ``PodScheduled`` condition, as kube-scheduler does;
* the kubelets (``lab.kubelet``) start the sandbox of every pod placed on a lab node, concurrently
  in a worker pool.  A pod whose CNI ADD fails stays ``Pending`` with its container waiting in
  ``ContainerCreating`` and the CNI error as the message, and is retried with exponential backoff
  (1 s doubling up to 30 s) without holding up any other pod.  A terminating pod's sandbox is torn
  down (CNI DEL: the IPAM releases its IP) and then the pod is removed (the grace-0 delete).  A Job's
  pod runs to completion once its network is up and becomes ``Succeeded``; its sandbox goes.

The pod runtime state (namespace, container ID, cached CNI result) is kept in
``<run dir>/controller/pods.json``, written only by this process, so a restarted controller tears
down what an earlier one started.  Stopping the controller leaves pods running, as stopping
kube-controller-manager would.

Why this module is past ~600 lines: it is the one process loop that owns the runtime state file and
the worker pool; the decisions it applies already live in pure modules (``lab.workloads``,
``lab.scheduler``), and what is left here is the I/O that reads and writes the same state.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipam.errors import AlreadyExists, Conflict, IpamError, NotFound
from ipam.kinds import KINDS
from ipam.records import Obj
from ipam.store.protocol import Store
from ipam.store.sqlite import SqliteStore
from lab.build import CONTROLLER_READY, Lab, LabError
from lab.events import auto_pool_reason
from lab.kubelet import CniError, Kubelet, PodRuntime, SharedPodServer, http_status
from lab.scheduler import HOSTNAME_LABEL, schedule
from lab.workloads import (
    NAME_ALPHABET,
    Action,
    Cluster,
    Create,
    Delete,
    Update,
    UpdateStatus,
    is_terminal,
    plan,
)

__all__ = ["BACKOFF_MAX", "BACKOFF_START", "Controller", "main", "owner_kind"]

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
# "try again later" (CNI code 11: an auto-pool being made, a pool being resized) is retried sooner, and
# shown on the pod only once it has lasted this long, so `wait` does not report a pod that is merely slow
TRY_AGAIN_START = 0.25
TRY_AGAIN_MAX = 2.0
TRY_AGAIN_QUIET = 10.0
CNI_TRY_AGAIN = 11
AUTO_POOL_MISSING = "does not exist yet"  # the IPAM's answer while an application's auto pool is missing
RESYNC_SECONDS = 5.0
READ_KINDS = ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "Node", "Namespace")
# what deleting a namespace removes (SpiderEndpoints are the IPAM's: its GC follows the pods)
NAMESPACED_KINDS = tuple(i.kind for i in KINDS if i.namespaced and i.kind not in ("Pod", "SpiderEndpoint"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def owner_kind(pod: Mapping[str, Any]) -> str:
    """The kind of the pod's controller owner ("" for a bare pod)."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller"):
            return str(ref.get("kind") or "")
    return ""


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


@dataclass(frozen=True)
class ProbeTarget:
    """A running pod with a readinessProbe, probed with ``GET path`` from its node."""

    key: str
    uid: str
    node: str
    ip: str
    path: str
    period: float
    next_at: float
    ready: bool


def readiness_probe(pod: Mapping[str, Any]) -> tuple[str, float, float] | None:
    """(path, period, initial delay) of the pod's first readinessProbe, if any.  The lab's pods serve
    HTTP on port 80 only, so every probe is an HTTP GET there (``httpGet.path``, default ``/``)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        probe = container.get("readinessProbe") if isinstance(container, Mapping) else None
        if isinstance(probe, Mapping):
            raw = probe.get("httpGet")
            http: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
            period = probe.get("periodSeconds", 10)
            delay = probe.get("initialDelaySeconds", 0)
            return (
                str(http.get("path") or "/"),
                float(period) if isinstance(period, int) and period > 0 else 10.0,
                float(delay) if isinstance(delay, int) and delay >= 0 else 0.0,
            )
    return None


@dataclass(frozen=True)
class _Failure:
    uid: str
    attempts: int
    next_try: float
    message: str
    since: float  # when this pod's sandbox first failed


class Controller:
    """One lab's controller.  ``turn()`` is one reconcile pass; ``run(stop)`` loops until ``stop``."""

    def __init__(
        self,
        lab: Lab,
        store: Store,
        kubelet: Kubelet,
        *,
        workers: int = 16,
        log: Callable[[str], None] = lambda line: None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.lab = lab
        self.store = store
        self.kubelet = kubelet
        self.log = log
        self.clock = clock
        self.rng = rng or random.Random()
        self.state_file = lab.controller_dir / CONTROLLER_READY
        self.runtimes: dict[str, PodRuntime] = self._load()
        self.inflight: set[str] = set()
        self.failures: dict[str, _Failure] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kubelet")
        self.probes: dict[str, ProbeTarget] = {}
        self.namespaces: set[str] = set()
        self.doomed: set[str] = set()  # namespaces deleted whose objects are still being removed
        self.refused: set[str] = set()  # refusals already logged

    # ---- state ---------------------------------------------------------------------------------

    def _load(self) -> dict[str, PodRuntime]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return {k: PodRuntime.from_json(k, v) for k, v in (data.get("pods") or {}).items()}

    def save(self) -> None:
        with self.lock:
            data = {"pods": {k: rt.to_json() for k, rt in sorted(self.runtimes.items())}}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{self.state_file.name}.{threading.get_ident()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.state_file)

    # ---- cluster objects -----------------------------------------------------------------------

    def ensure_cluster_objects(self) -> None:
        """Namespace ``default`` and one Ready Node per lab node (labels as a kubelet registers them;
        labels set later with ``label node`` are kept)."""
        self._create_if_absent({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        for node in self.lab.k8s_nodes:
            addrs = self.lab.node_addresses(node)
            obj: Obj = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node,
                    "labels": {
                        HOSTNAME_LABEL: node,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                    },
                },
            }
            status = {
                "addresses": [{"type": "InternalIP", "address": a} for a in addrs]
                + [{"type": "Hostname", "address": node}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": _now()}],
            }
            current = self._create_if_absent(obj)
            if (current.get("status") or {}).get("addresses") != status["addresses"]:
                current["status"] = status
                self.store.update_status(current)

    def _create_if_absent(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        try:
            return self.store.get(obj["kind"], meta["name"], meta.get("namespace", ""))
        except NotFound:
            return self.store.create(obj)

    # ---- one pass ------------------------------------------------------------------------------

    def turn(self) -> None:
        with self.store.snapshot():
            objs = {kind: self.store.list(kind) for kind in READ_KINDS}
        self._namespace_cleanup(objs["Namespace"])
        for action in plan(Cluster(objs), self._suffix):
            self._apply(action)
        pods = self._schedule(objs["Pod"], objs["Node"])
        self._sync_pods(pods)

    def _suffix(self) -> str:
        return "".join(self.rng.choice(NAME_ALPHABET) for _ in range(5))

    def _apply(self, action: Action) -> None:
        try:
            if isinstance(action, Create):
                obj = self.store.create(action.obj)
                self.log(f"{obj['kind'].lower()}/{_key(obj)} created")
            elif isinstance(action, Update):
                self.store.update(action.obj)
            elif isinstance(action, UpdateStatus):
                self.store.update_status(action.obj)
            elif isinstance(action, Delete):
                self.store.delete(
                    action.kind, action.name, action.namespace, grace_period_seconds=action.grace
                )
                self.log(f"{action.kind.lower()}/{action.namespace}/{action.name} deleted")
        except (Conflict, NotFound, AlreadyExists):
            self.wake.set()  # read again and decide again
        except IpamError as exc:  # refused (a template the store does not take): the others go on
            self._once(f"{type(action).__name__.lower()} refused: {exc}")

    def _once(self, line: str) -> None:
        """Log a refusal the first time only (the same pass repeats it until the object changes)."""
        if line not in self.refused:
            self.refused.add(line)
            self.log(line)

    def _namespace_cleanup(self, namespaces: Sequence[Obj]) -> None:
        live = {n["metadata"]["name"] for n in namespaces if not n["metadata"].get("deletionTimestamp")}
        self.doomed |= self.namespaces - live
        self.doomed |= {n["metadata"]["name"] for n in namespaces if n["metadata"].get("deletionTimestamp")}
        self.doomed -= live
        self.namespaces = live
        for ns in sorted(self.doomed):
            left = 0
            for kind in NAMESPACED_KINDS:
                for obj in self.store.list(kind, namespace=ns):
                    left += 1
                    self._apply(Delete(kind, ns, obj["metadata"]["name"]))
            for pod in self.store.list("Pod", namespace=ns):
                left += 1
                if not pod["metadata"].get("deletionTimestamp"):
                    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                    self._apply(Delete("Pod", ns, pod["metadata"]["name"], int(grace)))
            if not left:
                self.doomed.discard(ns)
                self.log(f"namespace/{ns}: every object removed")

    def _schedule(self, pods: Sequence[Obj], nodes: Sequence[Obj]) -> list[Obj]:
        """Place unscheduled pods; returns the pods as they stand after this pass."""
        placed = [copy.deepcopy(p) for p in pods]
        for i, pod in enumerate(placed):
            meta, spec = pod["metadata"], pod.get("spec") or {}
            if spec.get("nodeName") or meta.get("deletionTimestamp") or is_terminal(pod):
                continue
            where = schedule(pod, nodes, placed)
            if where.node:
                pod.setdefault("spec", {})["nodeName"] = where.node
                try:
                    placed[i] = self.store.update(pod)
                except (Conflict, NotFound):
                    spec.pop("nodeName", None)
                    self.wake.set()
                    continue
                except IpamError as exc:
                    spec.pop("nodeName", None)
                    self._once(f"pod/{_key(pod)}: placing it on {where.node} was refused: {exc}")
                    continue
                if _scheduled_message(pod.get("status") or {}) is not None:  # no longer unschedulable
                    cond = {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
                    self._write_status(placed[i], {"phase": "Pending", "conditions": [cond]})
                continue
            status = pod.get("status") or {}
            if _scheduled_message(status) != where.message:
                cond = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": where.message,
                    "lastTransitionTime": _now(),
                }
                self._write_status(pod, {"phase": "Pending", "conditions": [cond]})
                self.log(f"pod/{_key(pod)} unschedulable: {where.message}")
        return placed

    def _sync_pods(self, pods: Sequence[Obj]) -> None:
        nodes = set(self.lab.k8s_nodes)
        now = self.clock()
        seen: set[str] = set()
        for pod in pods:
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            if node not in nodes:
                if pod["metadata"].get("deletionTimestamp"):
                    # no kubelet runs it: nothing to tear down (the API server removes such pods at once)
                    self._submit(_key(pod), self._finish_delete, pod, None)
                elif node and not is_terminal(pod):
                    self._no_such_node(pod, node)
                continue
            key, uid = _key(pod), str(pod["metadata"].get("uid") or "")
            seen.add(key)
            with self.lock:
                if key in self.inflight:
                    continue
                runtime = self.runtimes.get(key)
                failure = self.failures.get(key)
            if pod["metadata"].get("deletionTimestamp"):
                self._submit(key, self._finish_delete, pod, runtime)
            elif is_terminal(pod):
                if runtime is not None:
                    self._submit(key, self._stop, runtime)
            elif runtime is not None and runtime.uid != uid:
                self._submit(key, self._stop, runtime)
            elif runtime is None and (failure is None or failure.uid != uid or failure.next_try <= now):
                self._submit(key, self._start, pod, node)
        with self.lock:
            orphans = [
                rt for key, rt in self.runtimes.items() if key not in seen and key not in self.inflight
            ]
        for runtime in orphans:
            self._submit(runtime.key, self._stop, runtime)

    def _no_such_node(self, pod: Obj, node: str) -> None:
        message = f'spec.nodeName: node "{node}" is not a node of this lab ({", ".join(self.lab.k8s_nodes)})'
        if _scheduled_message(pod.get("status") or {}) != message:
            cond = {"type": "PodScheduled", "status": "False", "reason": "NodeNotFound", "message": message}
            self._write_status(
                pod, {"phase": "Pending", "conditions": [{**cond, "lastTransitionTime": _now()}]}
            )
            self.log(f"pod/{_key(pod)}: {message}")

    def next_retry(self) -> float | None:
        with self.lock:
            times = [f.next_try for k, f in self.failures.items() if k not in self.inflight]
        return min(times) if times else None

    # ---- work done in the pool -----------------------------------------------------------------

    def _submit(self, key: str, fn: Callable[..., None], *args: Any) -> None:
        with self.lock:
            if key in self.inflight:
                return
            self.inflight.add(key)

        def work() -> None:
            try:
                fn(*args)
            except Exception as exc:  # one pod's trouble never stops the others
                self.log(f"pod/{key}: {type(exc).__name__}: {exc}")
            finally:
                with self.lock:
                    self.inflight.discard(key)
                self.wake.set()

        self.pool.submit(work)

    def _start(self, pod: Obj, node: str) -> None:
        key, uid = _key(pod), str(pod["metadata"].get("uid") or "")
        try:
            runtime = self.kubelet.start(pod, node)
        except CniError as exc:
            self._failed(pod, str(exc), exc.code)
            return
        except (OSError, LabError) as exc:
            self._failed(pod, str(exc), None)
            return
        with self.lock:
            self.runtimes[key] = runtime
            self.failures.pop(key, None)
        self.save()
        job = owner_kind(pod) == "Job"
        probe = None if job else readiness_probe(pod)
        fresh = self._write_status(pod, self._running_status(pod, runtime, ready=probe is None))
        if probe is not None and fresh is not None and runtime.ips:
            path, period, delay = probe
            with self.lock:
                self.probes[key] = ProbeTarget(
                    key, uid, node, runtime.ips[0], path, period, self.clock() + delay, False
                )
        self.log(f"pod/{key} running on {node} with IP {', '.join(runtime.ips) or '-'}")
        if job and fresh is not None and fresh["metadata"].get("uid") == uid:
            # the lab's Job containers have nothing to do once their network is up: they complete
            self._write_status(fresh, self._succeeded_status(fresh))
            self._stop(runtime)
            self.log(f"pod/{key} completed")

    def _failed(self, pod: Obj, message: str, code: int | None) -> None:
        key, uid = _key(pod), str(pod["metadata"].get("uid") or "")
        now = self.clock()
        if code == CNI_TRY_AGAIN and AUTO_POOL_MISSING in message:
            # "try again later" for an auto pool: say so at once when the pool cannot be made at all
            reason = auto_pool_reason(self.store, pod)
            if reason is not None:
                message, code = f"{reason} ({message})", None
        with self.lock:
            old = self.failures.get(key)
            if old is not None and old.uid != uid:
                old = None
            attempts = old.attempts + 1 if old is not None else 1
            since = old.since if old is not None else now
            if code == CNI_TRY_AGAIN:
                delay = min(TRY_AGAIN_START * 2 ** (attempts - 1), TRY_AGAIN_MAX)
            else:
                delay = min(BACKOFF_START * 2 ** (attempts - 1), BACKOFF_MAX)
            self.failures[key] = _Failure(uid, attempts, now + delay, message, since)
        if old is None or old.message != message:
            self.log(f"pod/{key}: {message} (retrying with backoff)")
        if code == CNI_TRY_AGAIN and now - since < TRY_AGAIN_QUIET:
            return
        if (pod.get("status") or {}).get("message") == message:
            return  # already shown: a write per retry would only wake every reader
        containers = (pod.get("spec") or {}).get("containers") or [{"name": "app"}]
        self._write_status(
            pod,
            {
                "phase": "Pending",
                "hostIP": _first(self.lab.node_addresses(str(pod["spec"]["nodeName"]))),
                "message": message,
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                ],
                "containerStatuses": [
                    {
                        "name": str(c.get("name", "app")),
                        "image": str(c.get("image", "")),
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "ContainerCreating", "message": message}},
                    }
                    for c in containers
                ],
            },
        )

    def _running_status(self, pod: Obj, runtime: PodRuntime, *, ready: bool) -> dict[str, Any]:
        host_ips = self.lab.node_addresses(runtime.node)
        containers = (pod.get("spec") or {}).get("containers") or [{"name": "app"}]
        return {
            "phase": "Running",
            "hostIP": _first(host_ips),
            "hostIPs": [{"ip": ip} for ip in host_ips],
            "podIP": _first(list(runtime.ips)),
            "podIPs": [{"ip": ip} for ip in runtime.ips],
            "startTime": _now(),
            "conditions": _ready_conditions(ready),
            "containerStatuses": [
                {
                    "name": str(c.get("name", "app")),
                    "image": str(c.get("image", "")),
                    "ready": ready,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": _now()}},
                }
                for c in containers
            ],
        }

    # ---- readiness probes ----------------------------------------------------------------------

    def probe_due(self) -> None:
        """Probe every pod whose probe is due; a change of answer flips its Ready condition."""
        now = self.clock()
        with self.lock:
            due = [t for t in self.probes.values() if t.next_at <= now and t.key not in self.inflight]
        for target in due:
            code = http_status(self.lab.ns(target.node).path, target.ip, target.path)
            ready = code is not None and 200 <= code < 400
            with self.lock:
                if self.probes.get(target.key) != target:
                    continue  # stopped or replaced meanwhile
                self.probes[target.key] = ProbeTarget(
                    **{**target.__dict__, "next_at": now + target.period, "ready": ready}
                )
            if ready != target.ready:
                self._set_ready(target, ready)

    def _set_ready(self, target: ProbeTarget, ready: bool) -> None:
        namespace, name = target.key.split("/", 1)
        try:
            pod = self.store.get("Pod", name, namespace)
        except NotFound:
            return
        status = dict(pod.get("status") or {})
        if pod["metadata"].get("uid") != target.uid or status.get("phase") != "Running":
            return
        status["conditions"] = _ready_conditions(ready)
        status["containerStatuses"] = [{**c, "ready": ready} for c in status.get("containerStatuses") or []]
        self._write_status(pod, status)
        self.log(f"pod/{target.key} {'ready' if ready else 'not ready'} (readiness probe GET {target.path})")

    def run_prober(self, stop: threading.Event, *, poll: float = 0.2) -> None:
        while not stop.wait(poll):
            try:
                self.probe_due()
            except IpamError as exc:
                self.log(f"prober: {exc}")

    @staticmethod
    def _succeeded_status(pod: Obj) -> dict[str, Any]:
        status = dict(pod.get("status") or {})
        status["phase"] = "Succeeded"
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True", "reason": "PodCompleted"},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted"},
            {"type": "Ready", "status": "False", "reason": "PodCompleted"},
        ]
        status["containerStatuses"] = [
            {
                **c,
                "ready": False,
                "started": False,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": _now()}},
            }
            for c in status.get("containerStatuses") or []
        ]
        return status

    def _write_status(self, pod: Obj, status: Mapping[str, Any]) -> Obj | None:
        """Replace the pod's status (the kubelet owns it); None when the pod is gone or replaced."""
        meta = pod["metadata"]
        for _ in range(5):
            try:
                fresh = self.store.get("Pod", meta["name"], meta.get("namespace") or "default")
            except NotFound:
                return None
            if fresh["metadata"].get("uid") != meta.get("uid"):
                return None
            fresh["status"] = dict(status)
            try:
                return self.store.update_status(fresh)
            except Conflict:
                continue
            except NotFound:
                return None
        return None

    def _stop(self, runtime: PodRuntime) -> None:
        with self.lock:
            self.probes.pop(runtime.key, None)
        error = self.kubelet.stop(runtime)
        if error:
            self.log(f"pod/{runtime.key}: warning: {error}")
        with self.lock:
            if self.runtimes.get(runtime.key) == runtime:
                del self.runtimes[runtime.key]
        self.save()

    def _finish_delete(self, pod: Obj, runtime: PodRuntime | None) -> None:
        """A terminating pod: its sandbox goes (CNI DEL releases the IP), then the object (grace 0)."""
        if runtime is not None:
            self._stop(runtime)
        with self.lock:
            self.failures.pop(_key(pod), None)
        meta = pod["metadata"]
        namespace = meta.get("namespace") or "default"
        try:
            fresh = self.store.get("Pod", meta["name"], namespace)
            if fresh["metadata"].get("uid") == meta.get("uid"):
                self.store.delete("Pod", meta["name"], namespace, grace_period_seconds=0)
                self.log(f"pod/{_key(pod)} deleted")
        except (NotFound, Conflict):
            pass

    # ---- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, poll: float = 0.1) -> None:
        """Reconcile whenever the store changes, a worker finishes, a retry is due, or every
        RESYNC_SECONDS, until ``stop`` is set."""
        last_rev: str | None = None
        last_turn = 0.0
        while not stop.is_set():
            try:
                rev = self.store.revision()
                due = self.next_retry()
                now = self.clock()
                if (
                    rev != last_rev
                    or self.wake.is_set()
                    or (due is not None and due <= now)
                    or now - last_turn >= RESYNC_SECONDS
                ):
                    self.wake.clear()
                    last_rev, last_turn = rev, now
                    self.turn()
                    # a pass reads every object: with many pods changing, passes stay at most a third
                    # of the time so the workers (and the rest of the machine) keep the CPU
                    stop.wait(min(1.0, 2 * (self.clock() - now)))
            except IpamError as exc:  # the store was busy or a write was refused: next pass decides again
                self.log(f"store: {exc}")
            except Exception as exc:  # one bad object or a netlink hiccup must not end the cluster
                self.log(f"reconcile: {type(exc).__name__}: {exc}")
                stop.wait(1.0)
            self.wake.wait(poll)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.save()


def _ready_conditions(ready: bool) -> list[dict[str, str]]:
    flag = "True" if ready else "False"
    not_ready = {} if ready else {"reason": "ContainersNotReady"}
    return [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": flag, **not_ready},
        {"type": "Ready", "status": flag, **not_ready},
    ]


def _first(values: Sequence[str]) -> str:
    return values[0] if values else ""


def _scheduled_message(status: Mapping[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("message") or "")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.controller")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    try:
        lab = Lab.load(args.run_dir, {})
        store = SqliteStore(lab.store_path)
    except (LabError, IpamError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    workload = SharedPodServer(lab)
    controller = Controller(lab, store, Kubelet(lab, workload), workers=args.workers, log=log)
    prober = threading.Thread(target=controller.run_prober, args=(stop,), name="prober", daemon=True)
    try:
        for node in lab.k8s_nodes:
            workload.ensure(node)
        controller.ensure_cluster_objects()
        controller.save()
        log(f"controller up: nodes {', '.join(lab.k8s_nodes)}, store {lab.store_path}")
        prober.start()
        controller.run(stop)
    finally:
        stop.set()
        controller.close()
        workload.close()
        store.close()
    log("controller stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
