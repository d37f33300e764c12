"""The lab's kubelet part: pod sandboxes on the lab's nodes.

For one pod, ``Kubelet.start`` makes the pod's network namespace ``sbgp-<token>-<namespace>.<name>``,
runs the node's CNI configuration inside the node the way libcni does (each plugin of the first
``*.conflist`` of ``/etc/cni/net.d`` in order, with ``prevResult``; ``CNI_PATH`` = the node's
``/opt/cni/bin`` plus the reference plugins), and starts the pod's workload (``PodWorkload``).  A
failed ADD is undone (DEL in reverse order, namespace removed) and raised as ``CniError`` carrying the
plugin's message, so the caller can keep the pod Pending and retry.  ``Kubelet.stop`` undoes a running
sandbox: workload stopped, CNI DEL with the cached result, namespace removed.

The pods' workload is ``SharedPodServer``: each node's one ``lab.podserver`` process serves every pod
of the node (GET / answers the pod's name, GET /healthz its readiness), so a thousand pods do not
need a thousand interpreters.

The kubelet decides nothing about which pods should run: the long-running controller
(``lab.controller``) calls it from its worker pool, and it is safe to call from several threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ipam.records import Obj
from lab.build import Lab
from lab.netns import Netns, ProcRef, create_netns, delete_netns, kill_procs, pids_in
from lab.podserver import NodePodServer, PodServerClient, PodServerError

__all__ = [
    "CNI_BIN_DIR",
    "CNI_CONF_DIR",
    "POD_IFNAME",
    "POD_PORT",
    "CniError",
    "Kubelet",
    "PodRuntime",
    "PodWorkload",
    "SharedPodServer",
    "http_status",
    "pod_netns",
    "served_name",
]

# kubelet's defaults: where it finds the CNI config and plugins (the topology binds them per node)
CNI_CONF_DIR = "/etc/cni/net.d"
CNI_BIN_DIR = "/opt/cni/bin"
REFERENCE_PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins, also in the node image
POD_IFNAME = "eth0"
POD_PORT = 80
CNI_TIMEOUT = 60.0


class CniError(RuntimeError):
    """A CNI plugin failed: ``CNI ADD spiderpool: code 11: <its message>``; ``code`` is its CNI code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PodRuntime:
    """What the kubelet knows about one running pod beyond the Pod object."""

    key: str  # namespace/name
    uid: str
    node: str
    netns: str
    container_id: str
    ips: tuple[str, ...] = ()
    server: tuple[int, int] | None = None
    cni_result: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "node": self.node,
            "netns": self.netns,
            "container_id": self.container_id,
            "ips": list(self.ips),
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
            ips=tuple(str(ip) for ip in data.get("ips") or []),
            server=(int(server[0]), int(server[1])) if server else None,
            cni_result=dict(data.get("cni_result") or {}),
        )


def pod_netns(lab: Lab, namespace: str, name: str) -> Netns:
    """The pod's network namespace (names are DNS labels, so ``<namespace>.<name>`` is unambiguous)."""
    return Netns(lab.sandbox.name(f"{namespace}.{name}"))


def served_name(key: str) -> str:
    """What a pod's HTTP server answers on ``GET /``: its name, or ``namespace/name`` outside
    namespace ``default`` (one node may run pods of the same name in two namespaces)."""
    namespace, _, name = key.partition("/")
    return name if namespace == "default" else key


class PodWorkload(Protocol):
    """What runs in a pod once its network is up: answers HTTP GET / with the pod's name."""

    def start(self, runtime: PodRuntime) -> tuple[int, int] | None:
        """Start serving; returns the (pid, start time) to remember, if a process of its own runs."""

    def stop(self, runtime: PodRuntime) -> None: ...


class SharedPodServer:
    """Every pod of a node served by that node's one ``lab.podserver`` process (started on first use,
    or found running from an earlier controller: pods keep being served across controller restarts)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._clients: dict[str, PodServerClient] = {}
        self._lock = threading.Lock()

    def control_path(self, node: str) -> Path:
        return self.lab.node_dir(node) / "pods.sock"

    def ensure(self, node: str) -> None:
        """Connect to the node's server, starting it if none answers."""
        self._client(node)

    def _client(self, node: str) -> PodServerClient:
        with self._lock:
            client = self._clients.get(node)
            if client is not None:
                return client
            path = self.control_path(node)
            try:
                client = NodePodServer.connect(path)
                client.pods()
            except (PodServerError, OSError):
                with (self.lab.node_dir(node) / "podserver.log").open("ab") as log:
                    NodePodServer.start(self.lab.ns(node), path, env=self.lab.env, log=log)
                client = NodePodServer.connect(path)
            self._clients[node] = client
            return client

    def _call(self, node: str, fn: str, *args: Any) -> Any:
        for attempt in (1, 2):
            client = self._client(node)
            try:
                return getattr(client, fn)(*args)
            except PodServerError:
                if attempt == 2 or _server_answers(client):
                    raise
                with self._lock:  # the server went away: start (or reach) a new one once
                    self._clients.pop(node, None)
                client.close()
        return None

    def start(self, runtime: PodRuntime) -> tuple[int, int] | None:
        try:
            self._call(runtime.node, "add", served_name(runtime.key), Netns(runtime.netns).path, POD_PORT)
        except PodServerError as exc:
            raise CniError(f"pod {runtime.key}: workload: {exc}") from None
        return None

    def stop(self, runtime: PodRuntime) -> None:
        with contextlib.suppress(PodServerError):
            self._call(runtime.node, "remove", served_name(runtime.key))

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _server_answers(client: PodServerClient) -> bool:
    try:
        client.pods()
    except (PodServerError, OSError):
        return False
    return True


def http_status(
    netns_path: str, ip: str, path: str, *, port: int = POD_PORT, timeout: float = 1.0
) -> int | None:
    """``GET path`` of ``ip`` from inside the network namespace at ``netns_path`` (as the node's
    kubelet probes its pods); the HTTP status, or None when nothing answered.

    Only the socket is made inside the namespace (``setns`` moves just the calling thread, which goes
    back at once); the socket stays there."""
    from pyroute2 import netns as pyroute2_netns

    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pyroute2_netns.setns(target, flags=0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            finally:
                pyroute2_netns.setns(home, flags=0)
        finally:
            os.close(target)
    except OSError:
        return None
    finally:
        os.close(home)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64).decode("latin-1")
        except OSError:
            return None
    parts = head.split(" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


class Kubelet:
    """Pod sandboxes on the lab's nodes (thread-safe: no shared mutable state)."""

    def __init__(self, lab: Lab, workload: PodWorkload) -> None:
        self.lab = lab
        self.workload = workload

    def start(self, pod: Obj, node: str) -> PodRuntime:
        """Network namespace, CNI ADD, workload.  Raises CniError after undoing a failed attempt."""
        meta = pod["metadata"]
        namespace, name = str(meta.get("namespace") or "default"), str(meta["name"])
        ns = pod_netns(self.lab, namespace, name)
        if Path(ns.path).exists():  # left by a crash: it is ours (the name carries the lab's token)
            _remove_netns(ns)
        create_netns(ns.name)
        runtime = PodRuntime(
            key=f"{namespace}/{name}",
            uid=str(meta.get("uid") or ""),
            node=node,
            netns=ns.name,
            container_id=uuid.uuid4().hex + uuid.uuid4().hex,
        )
        try:
            result = self.cni("ADD", runtime)
            ips = tuple(str(ip["address"]).split("/")[0] for ip in result.get("ips") or [])
            runtime = PodRuntime(
                runtime.key, runtime.uid, node, ns.name, runtime.container_id, ips, None, result
            )
            server = self.workload.start(runtime)
        except BaseException:
            with contextlib.suppress(CniError, OSError, subprocess.SubprocessError):
                self.cni("DEL", runtime)
            _remove_netns(ns)
            raise
        return PodRuntime(runtime.key, runtime.uid, node, ns.name, runtime.container_id, ips, server, result)

    def stop(self, runtime: PodRuntime) -> str | None:
        """Workload, CNI DEL, namespace.  Returns the DEL error (the sandbox goes anyway), if any."""
        error: str | None = None
        with contextlib.suppress(OSError):
            self.workload.stop(runtime)
        try:
            self.cni("DEL", runtime)
        except (CniError, OSError, subprocess.SubprocessError) as exc:
            error = str(exc)
        _remove_netns(Netns(runtime.netns))
        return error

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
        path = sorted(candidates, key=lambda p: p.name)[0]
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CniError(f"node {node}: {CNI_CONF_DIR}/{path.name}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("plugins"), list):
            raise CniError(f"node {node}: {CNI_CONF_DIR}/{path.name}: conflist has no plugins list")
        return data

    def cni_path(self, node: str) -> list[str]:
        return [str(self.lab.host_path(node, CNI_BIN_DIR)), REFERENCE_PLUGINS]

    def cni(self, command: str, runtime: PodRuntime) -> dict[str, Any]:
        conflist = self.conflist(runtime.node)
        plugins: Sequence[Mapping[str, Any]] = conflist["plugins"]
        cni_path = self.cni_path(runtime.node)
        namespace, name = runtime.key.split("/", 1)
        env = {
            **self.lab.node_env(runtime.node),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": runtime.container_id,
            "CNI_NETNS": Netns(runtime.netns).path,
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
                raise CniError(f"CNI {command}: plugin {ptype!r} not found in {':'.join(cni_path)}")
            conf: dict[str, Any] = {
                "cniVersion": conflist.get("cniVersion"),
                "name": conflist.get("name"),
                **plugin,
            }
            if prev is not None:
                conf["prevResult"] = prev
            res = subprocess.run(
                self.lab.host_argv(runtime.node, [str(binary)]),
                input=json.dumps(conf),
                capture_output=True,
                text=True,
                env=env,
                timeout=CNI_TIMEOUT,
                check=False,
            )
            if res.returncode != 0:
                raise CniError(
                    f"CNI {command} {ptype}: {_cni_message(res.stdout, res.stderr)}", _cni_code(res.stdout)
                )
            if command == "ADD":
                prev = json.loads(res.stdout)
        return prev or {}


def _remove_netns(ns: Netns) -> None:
    procs: list[ProcRef] = []
    for pid in pids_in(ns):
        with contextlib.suppress(ProcessLookupError):
            procs.append(ProcRef.of(pid))
    kill_procs(procs, grace=1.0)
    delete_netns(ns)


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
