"""A kubelet (plus the Deployment/StatefulSet controllers) stand-in for the lab.

It reads Deployments and StatefulSets from the store, keeps ReplicaSets and Pods in line with them
(annotations and labels from the pod template, ownerReferences, ``spec.nodeName`` spread over the lab's
nodes), and for every pod: makes a namespace ``sbgp-<token>-<pod>``, runs the node's CNI chain inside the
node's namespace the way libcni does (each plugin of the conflist in order, with ``prevResult``; DEL in
reverse order with the cached result), starts ``lab.podserver`` in the pod and writes the Pod status
(phase Running, podIP/podIPs, hostIP, Ready).  Deleting a pod goes as in Kubernetes: the API delete
with the pod's grace period (``spec.terminationGracePeriodSeconds``, 30 by default) leaves it
terminating, so the IPAM's CNI DEL releases its IP (the pod is no longer alive); then the pod's
namespace goes and the final delete (grace 0) removes the object.  The next ``reconcile`` replaces it
(StatefulSet pods keep their names) and finishes any pod left terminating.

Kubelet-local state (pod namespace, container ID, cached CNI result, server PID) lives in the lab's
state file, so each ``python -m lab`` command can pick up where the last one stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipam.errors import NotFound
from ipam.store import Obj, Store
from lab.build import REPO_ROOT, Lab
from lab.netns import Netns, ProcRef, ip_netns_exec, kill_procs, run

__all__ = [
    "CNI_BIN_DIR",
    "CNI_CONF_DIR",
    "CniError",
    "Kubelet",
    "PodRuntime",
    "pod_template_hash",
]

# kubelet's defaults: where it finds the CNI config and plugins (the topology binds them per node)
CNI_CONF_DIR = "/etc/cni/net.d"
CNI_BIN_DIR = "/opt/cni/bin"
REFERENCE_PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins, also in the node image
POD_IFNAME = "eth0"
POD_PORT = 80
DEFAULT_GRACE_SECONDS = 30  # a Pod's default spec.terminationGracePeriodSeconds
_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the consonants-and-digits set Kubernetes uses in names


class CniError(RuntimeError):
    """A CNI plugin failed: ``pod default/x: CNI ADD ptp: <its message>``; ``code`` is its CNI code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


CNI_TRY_AGAIN = 11
ADD_RETRY_SECONDS = 30.0  # like the kubelet, keep retrying a sandbox whose ADD said "try again later"


@dataclass(frozen=True)
class PodRuntime:
    """What the kubelet knows about one running pod beyond the Pod object."""

    key: str  # namespace/name
    uid: str
    node: str
    netns: str
    container_id: str
    ip: str
    server: tuple[int, int] | None
    cni_result: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "node": self.node,
            "netns": self.netns,
            "container_id": self.container_id,
            "ip": self.ip,
            "server": list(self.server) if self.server else None,
            "cni_result": dict(self.cni_result),
        }

    @classmethod
    def from_json(cls, key: str, data: Mapping[str, Any]) -> PodRuntime:
        server = data.get("server")
        return cls(
            key=key,
            uid=str(data["uid"]),
            node=str(data["node"]),
            netns=str(data["netns"]),
            container_id=str(data["container_id"]),
            ip=str(data.get("ip", "")),
            server=(int(server[0]), int(server[1])) if server else None,
            cni_result=dict(data.get("cni_result") or {}),
        )


def _encode(digest: bytes, length: int) -> str:
    return "".join(_HASH_ALPHABET[b % len(_HASH_ALPHABET)] for b in digest[:length])


def pod_template_hash(template: Mapping[str, Any]) -> str:
    """A stable 10-character name-safe hash of a pod template (the ReplicaSet name suffix)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return _encode(digest, 10)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _owner_ref(obj: Obj) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owned_by(pod: Obj, owner: Obj) -> bool:
    uid = owner["metadata"]["uid"]
    return any(ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or [])


def _replicas(obj: Obj) -> int:
    value = (obj.get("spec") or {}).get("replicas", 1)
    return int(value) if isinstance(value, int) and value >= 0 else 1


class Kubelet:
    """The stand-in.  ``log`` receives one human-readable line per action (the CLI prints them)."""

    def __init__(
        self,
        lab: Lab,
        store: Store,
        *,
        namespace: str = "default",
        rng: random.Random | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.lab = lab
        self.store = store
        self.namespace = namespace
        self.rng = rng or random.Random()
        self.log = log
        self.pods: dict[str, PodRuntime] = {
            key: PodRuntime.from_json(key, data) for key, data in lab.extra.get("pods", {}).items()
        }

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _save(self) -> None:
        self.lab.extra["pods"] = {key: rt.to_json() for key, rt in sorted(self.pods.items())}
        self.lab.save()

    def ensure_cluster_objects(self) -> None:
        """The Namespace and the Node objects (Ready, with the node's address) the IPAM reads."""
        self._create_if_absent(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        )
        for node in self.lab.k8s_nodes:
            addrs = self.lab.node_addresses(node)
            obj: Obj = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": a} for a in addrs]
                    + [{"type": "Hostname", "address": node}],
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": _now()}],
                },
            }
            created = self._create_if_absent(obj)
            if created is not None:
                created["status"] = obj["status"]
                self.store.update_status(created)

    def _create_if_absent(self, obj: Obj) -> Obj | None:
        meta = obj["metadata"]
        try:
            self.store.get(obj["kind"], meta["name"], meta.get("namespace", ""))
            return None
        except NotFound:
            return self.store.create(obj)

    # ---- controllers ---------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring ReplicaSets and Pods in line with every Deployment and StatefulSet, and drop pods
        whose owner is gone or whose runtime was lost."""
        ns = self.namespace
        for pod in self.store.list("Pod", namespace=ns):
            if pod["metadata"].get("deletionTimestamp"):  # a delete that stopped half-way: finish it
                self.delete_pod(pod["metadata"]["name"], replace=False)
        deployments = self.store.list("Deployment", namespace=ns)
        statefulsets = self.store.list("StatefulSet", namespace=ns)
        for deploy in deployments:
            self._sync_deployment(deploy)
        for sts in statefulsets:
            self._sync_statefulset(sts)
        owners = {o["metadata"]["uid"] for o in self.store.list("ReplicaSet", namespace=ns) + statefulsets}
        for pod in self.store.list("Pod", namespace=ns):
            refs = pod["metadata"].get("ownerReferences") or []
            if refs and not any(r.get("uid") in owners for r in refs):
                self.delete_pod(pod["metadata"]["name"], replace=False)
        for rs in self.store.list("ReplicaSet", namespace=ns):
            refs = rs["metadata"].get("ownerReferences") or []
            live = {d["metadata"]["uid"] for d in deployments}
            if refs and not any(r.get("uid") in live for r in refs):
                self.store.delete("ReplicaSet", rs["metadata"]["name"], ns)

    def _sync_deployment(self, deploy: Obj) -> None:
        ns, name = self.namespace, deploy["metadata"]["name"]
        template = (deploy.get("spec") or {}).get("template") or {}
        tmpl_hash = pod_template_hash(template)
        rs_name = f"{name}-{tmpl_hash}"
        replicas = _replicas(deploy)
        current: Obj | None = None
        for rs in self.store.list("ReplicaSet", namespace=ns):
            if not _owned_by(rs, deploy):
                continue
            if rs["metadata"]["name"] == rs_name:
                current = rs
            else:  # an old template: scale it away
                for pod in self._pods_of(rs):
                    self.delete_pod(pod["metadata"]["name"], replace=False)
                self.store.delete("ReplicaSet", rs["metadata"]["name"], ns)
        labels = {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": tmpl_hash}
        if current is None:
            current = self.store.create(
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": rs_name,
                        "namespace": ns,
                        "labels": labels,
                        "ownerReferences": [_owner_ref(deploy)],
                    },
                    "spec": {
                        "replicas": replicas,
                        "selector": {"matchLabels": labels},
                        "template": {
                            **template,
                            "metadata": {**(template.get("metadata") or {}), "labels": labels},
                        },
                    },
                }
            )
            self.log(f"replicaset.apps/{rs_name} created")
        elif _replicas(current) != replicas:
            current["spec"]["replicas"] = replicas
            current = self.store.update(current)
        pods = sorted(self._pods_of(current), key=lambda p: str(p["metadata"].get("creationTimestamp", "")))
        for pod in pods[replicas:][::-1]:
            self.delete_pod(pod["metadata"]["name"], replace=False)
        for _ in range(replicas - min(len(pods), replicas)):
            self._start_pod(self._unique_pod_name(rs_name), current, template, labels)
        self._write_status(current, replicas)
        self._write_status(deploy, replicas)

    def _sync_statefulset(self, sts: Obj) -> None:
        name = sts["metadata"]["name"]
        template = (sts.get("spec") or {}).get("template") or {}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        replicas = _replicas(sts)
        existing = {p["metadata"]["name"]: p for p in self._pods_of(sts)}
        for ordinal in sorted(
            (int(n.rsplit("-", 1)[1]) for n in existing if n.rsplit("-", 1)[1].isdigit()), reverse=True
        ):
            if ordinal >= replicas:
                self.delete_pod(f"{name}-{ordinal}", replace=False)
        for ordinal in range(replicas):
            pod_name = f"{name}-{ordinal}"
            if pod_name not in existing:
                pod_labels = {**labels, "statefulset.kubernetes.io/pod-name": pod_name}
                self._start_pod(pod_name, sts, template, pod_labels)
        self._write_status(sts, replicas)

    def _write_status(self, obj: Obj, replicas: int) -> None:
        fresh = self.store.get(obj["kind"], obj["metadata"]["name"], self.namespace)
        status = {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}
        if fresh.get("status") != status:
            fresh["status"] = status
            self.store.update_status(fresh)

    def _pods_of(self, owner: Obj) -> list[Obj]:
        """The owner's pods that are not terminating (as a ReplicaSet counts its active pods)."""
        return [
            p
            for p in self.store.list("Pod", namespace=self.namespace)
            if _owned_by(p, owner) and not p["metadata"].get("deletionTimestamp")
        ]

    def _unique_pod_name(self, prefix: str) -> str:
        taken = {p["metadata"]["name"] for p in self.store.list("Pod", namespace=self.namespace)}
        while True:
            name = f"{prefix}-{''.join(self.rng.choice(_HASH_ALPHABET) for _ in range(5))}"
            if name not in taken:
                return name

    def _pick_node(self) -> str:
        load = {n: 0 for n in self.lab.k8s_nodes}
        for rt in self.pods.values():
            if rt.node in load:
                load[rt.node] += 1
        return min(load, key=lambda n: (load[n], self.lab.k8s_nodes.index(n)))

    # ---- pods ----------------------------------------------------------------------------------

    def _add_with_retries(self, runtime: PodRuntime, pod: Obj) -> dict[str, Any]:
        """CNI ADD; on "try again later" (code 11, e.g. a SpiderSubnet auto pool not created yet) tear
        the attempt down with DEL and retry with backoff, as the kubelet re-creates a failed sandbox."""
        deadline = time.monotonic() + ADD_RETRY_SECONDS
        delay = 0.1
        while True:
            try:
                return self._cni("ADD", runtime, pod)
            except CniError as exc:
                if exc.code != CNI_TRY_AGAIN or time.monotonic() + delay > deadline:
                    raise
                with contextlib.suppress(CniError):
                    self._cni("DEL", runtime, pod)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _start_pod(
        self, name: str, owner: Obj, template: Mapping[str, Any], labels: Mapping[str, str]
    ) -> Obj:
        ns = self.namespace
        node = self._pick_node()
        tmeta = template.get("metadata") or {}
        pod = self.store.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": dict(labels),
                    "annotations": dict(tmeta.get("annotations") or {}),
                    "ownerReferences": [_owner_ref(owner)],
                },
                "spec": {**(template.get("spec") or {}), "nodeName": node},
                "status": {"phase": "Pending"},
            }
        )
        key = f"{ns}/{name}"
        uid = pod["metadata"]["uid"]
        container_id = uuid.uuid4().hex + uuid.uuid4().hex
        pod_ns = self.lab.sandbox.netns(name)
        runtime = PodRuntime(key, uid, node, pod_ns.name, container_id, "", None, {})
        self.pods[key] = runtime
        self._save()
        try:
            result = self._add_with_retries(runtime, pod)
        except CniError:
            with contextlib.suppress(NotFound):
                self.store.delete("Pod", name, ns)
            self._teardown(runtime, None, run_del=True)
            raise
        ips = [str(ip["address"]).split("/")[0] for ip in result.get("ips", [])]
        server = self._start_server(pod_ns, name)
        runtime = PodRuntime(key, uid, node, pod_ns.name, container_id, ips[0] if ips else "", server, result)
        self.pods[key] = runtime
        self._save()
        pod = self.store.get("Pod", name, ns)
        host_ips = self.lab.node_addresses(node)
        pod["status"] = {
            "phase": "Running",
            "hostIP": host_ips[0] if host_ips else "",
            "podIP": ips[0] if ips else "",
            "podIPs": [{"ip": ip} for ip in ips],
            "startTime": _now(),
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": c.get("name", "app"),
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": _now()}},
                }
                for c in (pod.get("spec") or {}).get("containers") or [{"name": "app"}]
            ],
        }
        pod = self.store.update_status(pod)
        self.log(f"pod/{name} created on {node} with IP {', '.join(ips) or '-'}")
        return pod

    def _start_server(self, pod_ns: Netns, name: str) -> tuple[int, int]:
        proc = self.lab.sandbox.popen(
            pod_ns,
            [sys.executable, "-m", "lab.podserver", "--name", name, "--port", str(POD_PORT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env={**self.lab.env, "PYTHONPATH": str(REPO_ROOT)},
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        proc.stdout.close()
        if line != "ready":
            raise CniError(f"pod {self.namespace}/{name}: HTTP server did not start (exit {proc.poll()})")
        ref = ProcRef.of(proc.pid)
        return ref.pid, ref.start_time

    def delete_pod(self, name: str, *, replace: bool = True) -> None:
        """Delete the Pod with its grace period (it becomes terminating), CNI DEL, stop the server,
        remove the namespace, then the final delete (grace 0); with ``replace`` the controllers run right
        after, as they would in Kubernetes."""
        ns = self.namespace
        key = f"{ns}/{name}"
        try:
            pod: Obj | None = self.store.get("Pod", name, ns)
        except NotFound:
            pod = None
        runtime = self.pods.get(key)
        if pod is None and runtime is None:
            raise NotFound("Pod", name, ns)
        # The IPAM keeps the IP of a pod that is still alive (a sandbox re-created); a terminating pod
        # is not, so CNI DEL after the graceful delete releases its IP.
        if pod is not None:
            grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
            with contextlib.suppress(NotFound):
                self.store.delete("Pod", name, ns, grace_period_seconds=int(grace))
        if runtime is not None:
            self._teardown(runtime, pod, run_del=True)
        if pod is not None:
            with contextlib.suppress(NotFound):
                self.store.delete("Pod", name, ns, grace_period_seconds=0)
        self.log(f'pod "{name}" deleted')
        if replace:
            self.reconcile()

    def _teardown(self, runtime: PodRuntime, pod: Obj | None, *, run_del: bool) -> None:
        if run_del:
            try:
                self._cni("DEL", runtime, pod)
            except CniError as exc:
                self.log(f"warning: {exc}")
        if runtime.server is not None:
            kill_procs([ProcRef(*runtime.server)], grace=1.0)
        self.lab.sandbox.remove_netns(Netns(runtime.netns), grace=1.0)
        if runtime.ip:
            # the bridge plugin shares cni0 between pods, so a node keeps this pod's MAC in its neighbour
            # table (REACHABLE for up to ~45 s); the lowest-free allocator hands the IP out again at once,
            # and traffic to the next pod would go to the dead MAC.  Forget it, as a new veth would.
            for node in self.lab.k8s_nodes:
                run(
                    Netns(self.lab.sandbox.name(node)),
                    ["ip", "neigh", "flush", "to", runtime.ip],
                    check=False,
                )
        self.pods.pop(runtime.key, None)
        self._save()

    def scale(self, name: str, replicas: int) -> str:
        """Set spec.replicas of the Deployment or StatefulSet ``name`` and reconcile."""
        for kind in ("Deployment", "StatefulSet"):
            try:
                obj = self.store.get(kind, name, self.namespace)
            except NotFound:
                continue
            obj["spec"]["replicas"] = replicas
            self.store.update(obj)
            self.reconcile()
            return f"{kind.lower()}.apps/{name} scaled"
        raise NotFound("Deployment", name, self.namespace)

    def down(self) -> None:
        """CNI DEL every pod (so the IPAM releases their IPs) and remove their namespaces."""
        for runtime in list(self.pods.values()):
            self._teardown(runtime, None, run_del=True)

    # ---- CNI, the libcni way -------------------------------------------------------------------

    def conflist(self, node: str) -> dict[str, Any]:
        """The node's network config: the first *.conflist of its CNI config dir, by name."""
        conf_dir = self.lab.host_path(node, CNI_CONF_DIR)
        candidates: list[Path] = []
        for container, host in self.lab.mounts(node):
            if container.startswith(CNI_CONF_DIR + "/") and container.endswith(".conflist"):
                candidates.append(Path(host))
        if conf_dir.is_dir():
            candidates += sorted(conf_dir.glob("*.conflist"))
        if not candidates:
            raise CniError(f"node {node}: no *.conflist in {CNI_CONF_DIR}")
        data = json.loads(sorted(candidates, key=lambda p: p.name)[0].read_text())
        if not isinstance(data, dict) or not isinstance(data.get("plugins"), list):
            raise CniError(f"node {node}: {CNI_CONF_DIR}: conflist has no plugins list")
        return data

    def cni_path(self, node: str) -> list[str]:
        return [str(self.lab.host_path(node, CNI_BIN_DIR)), REFERENCE_PLUGINS]

    def _cni(self, command: str, runtime: PodRuntime, pod: Obj | None) -> dict[str, Any]:
        conflist = self.conflist(runtime.node)
        plugins: Sequence[Mapping[str, Any]] = conflist["plugins"]
        cni_path = self.cni_path(runtime.node)
        namespace, name = runtime.key.split("/", 1)
        env = {
            "PATH": self.lab.env["PATH"],
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": runtime.container_id,
            "CNI_NETNS": str(Path("/var/run/netns") / runtime.netns),
            "CNI_IFNAME": POD_IFNAME,
            "CNI_PATH": ":".join(cni_path),
            "CNI_ARGS": (
                f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
                f"K8S_POD_INFRA_CONTAINER_ID={runtime.container_id};K8S_POD_UID={runtime.uid}"
            ),
        }
        order = list(plugins) if command == "ADD" else list(reversed(plugins))
        prev: dict[str, Any] | None = (
            dict(runtime.cni_result) if command == "DEL" and runtime.cni_result else None
        )
        for plugin in order:
            ptype = str(plugin.get("type", ""))
            binary = next((Path(d) / ptype for d in cni_path if (Path(d) / ptype).is_file()), None)
            if binary is None:
                raise CniError(
                    f"pod {runtime.key}: CNI {command}: plugin {ptype!r} not found in {':'.join(cni_path)}"
                )
            conf: dict[str, Any] = {
                "cniVersion": conflist.get("cniVersion"),
                "name": conflist.get("name"),
                **plugin,
            }
            if prev is not None:
                conf["prevResult"] = prev
            res = subprocess.run(
                ip_netns_exec(self.lab.ns(runtime.node), [str(binary)]),
                input=json.dumps(conf),
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
            if res.returncode != 0:
                raise CniError(
                    f"pod {runtime.key}: CNI {command} {ptype}: {_cni_message(res.stdout, res.stderr)}",
                    _cni_code(res.stdout),
                )
            if command == "ADD":
                prev = json.loads(res.stdout)
        return prev or {}


def _cni_code(stdout: str) -> int | None:
    try:
        err = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, int) else None


def _cni_message(stdout: str, stderr: str) -> str:
    try:
        err = json.loads(stdout)
        if isinstance(err, dict) and "msg" in err:
            details = f" ({err['details']})" if err.get("details") else ""
            return f"code {err.get('code')}: {err['msg']}{details}"
    except json.JSONDecodeError:
        pass
    text = (stdout + stderr).strip().splitlines()
    return text[-1] if text else "no output"
