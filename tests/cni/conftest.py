"""Fixtures: the rendered plugin file, and the real agent backend served on a temp socket.

The agent here is what ``spiderbgp.agent`` serves: ``make_app(IpamBackend(IpamService(SqliteStore)))``
behind ``serve()``, the service called from a ThreadPoolExecutor, and NodeIpEvents that record what the
route announcer would be told.  Pools are written through admission (``ipam.admin``, as
``spiderbgp apply`` does); Namespaces and Pods through the store (as the lab's kubelet stand-in does),
so the UID in CNI_ARGS is the one the store gave the pod.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ipam import admin
from ipam.errors import AlreadyExists, NotFound
from ipam.records import Obj
from ipam.service import IpamService, IpamSettings
from ipam.store.sqlite import SqliteStore
from spiderbgp.cni_endpoint import CniSocket, SocketLimits, make_app, serve, shutdown
from spiderbgp.ipam_backend import IpamBackend, NodeIpEvents
from spiderbgp.plugin_package import render_plugin_file

PYTHON = os.path.realpath(sys.executable)
NODE = "node1"
NAMESPACE = "default"

POOLS_YAML = """\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: pool4}
spec:
  subnet: 10.244.100.0/24
  ips: [10.244.100.10-10.244.100.13]
  gateway: 10.244.100.1
  routes: [{dst: 10.99.0.0/16, gw: 10.244.100.1}]
  default: true
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: pool6}
spec:
  subnet: fd00:244::/64
  ips: [fd00:244::10-fd00:244::13]
  gateway: fd00:244::1
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: tiny}
spec:
  subnet: 10.245.0.0/24
  ips: [10.245.0.5]
  gateway: 10.245.0.1
"""


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNI bin dir holding only our rendered ``spiderpool`` file (shebang: this interpreter)."""
    path = tmp_path_factory.mktemp("cni-bin")
    plugin = path / "spiderpool"
    plugin.write_text(render_plugin_file(PYTHON))
    plugin.chmod(0o755)
    return path


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Plugin:
    path: Path

    def run(
        self, env: Mapping[str, str], stdin: bytes | str | dict[str, Any] = b"", timeout: float = 20
    ) -> Result:
        data = (
            json.dumps(stdin).encode()
            if isinstance(stdin, dict)
            else stdin.encode()
            if isinstance(stdin, str)
            else stdin
        )
        proc = subprocess.run(
            [PYTHON, "-I", "-S", str(self.path)],
            input=data,
            env=dict(env),
            capture_output=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture(scope="session")
def plugin(plugin_dir: Path) -> Plugin:
    return Plugin(plugin_dir / "spiderpool")


@dataclass
class NodeEvents:
    """Records what the agent tells the route announcer about this node's addresses."""

    added: list[dict[str, str]] = field(default_factory=list)
    removed: list[list[str]] = field(default_factory=list)

    def sink(self) -> NodeIpEvents:
        return NodeIpEvents(
            added=lambda ips: self.added.append(dict(ips)),
            removed=lambda ips: self.removed.append(list(ips)),
        )


class Cluster:
    """Cluster objects on the store: pools through admission, Namespaces and Pods as the kubelet writes
    them (bound to ``NODE``, phase Running)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def apply(self, yaml_text: str) -> list[str]:
        return list(admin.apply_documents(self.store, admin.load_documents(yaml_text, source="test")))

    def namespace(self, name: str, annotations: Mapping[str, str] | None = None) -> Obj:
        obj: Obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        if annotations:
            obj["metadata"]["annotations"] = dict(annotations)
        try:
            return self.store.create(obj)
        except AlreadyExists:
            return self.store.get("Namespace", name)

    def pod(
        self,
        name: str,
        namespace: str = NAMESPACE,
        *,
        annotations: Mapping[str, str] | None = None,
        node: str = NODE,
    ) -> str:
        """Create the Pod (and its Namespace); returns the UID the store gave it."""
        self.namespace(namespace)
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            meta["annotations"] = dict(annotations)
        obj = self.store.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
                "status": {"phase": "Running"},
            }
        )
        return str(obj["metadata"]["uid"])

    def uid(self, name: str, namespace: str = NAMESPACE) -> str:
        return str(self.store.get("Pod", name, namespace)["metadata"]["uid"])

    def delete_pod(self, name: str, namespace: str = NAMESPACE) -> None:
        """The pod is gone (deleted from the API): a DEL that names its UID now releases its IPs."""
        self.store.delete("Pod", name, namespace)

    def ips(self, pool: str) -> list[str]:
        return [r.ip for r in self.store.records(pool)]


class Agent:
    """The real CNI backend of the agent (IpamBackend over IpamService over SqliteStore), served by
    ``make_app`` + ``serve`` on a temp socket, in a thread with its own event loop."""

    def __init__(
        self,
        socket_path: Path,
        store: SqliteStore,
        *,
        settings: IpamSettings | None = None,
        limits: SocketLimits | None = None,
    ) -> None:
        self.socket_path, self.store, self.limits = socket_path, store, limits
        self.cluster = Cluster(store)
        self.events = NodeEvents()
        self.observed: list[tuple[str, int, float]] = []
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ipam")
        self.service = IpamService(store, node_name=NODE, settings=settings)
        self.backend = IpamBackend(self.service, executor=self.executor, events=self.events.sink())
        self._loop = asyncio.new_event_loop()
        self._runner: CniSocket | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def operations(self) -> list[tuple[str, int]]:
        """(operation, CNI code or 0) of every request the endpoint answered."""
        return [(op, code) for op, code, _ in self.observed]

    def start(self) -> None:
        self._thread.start()
        app = make_app(self.backend, metrics=lambda op, code, s: self.observed.append((op, code, s)))
        served = serve(app, str(self.socket_path), limits=self.limits)
        self._runner = asyncio.run_coroutine_threadsafe(served, self._loop).result(10)

    @property
    def served(self) -> CniSocket:
        assert self._runner is not None
        return self._runner

    def stop(self) -> None:
        try:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(shutdown(self._runner), self._loop).result(30)
                self._runner = None
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self.executor.shutdown(wait=True)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    try:
        Cluster(s).apply(POOLS_YAML)
        yield s
    finally:
        s.close()


@pytest.fixture
def agent(tmp_path: Path, store: SqliteStore) -> Iterator[Agent]:
    a = Agent(tmp_path / "run" / "agent.sock", store)
    a.start()
    try:
        yield a
    finally:
        a.stop()


def netconf(socket_path: Path | str, version: str = "1.1.0", **ipam: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "podnet",
        "type": "ptp",
        "ipam": {"type": "spiderpool", "ipam_unix_socket_path": str(socket_path), **ipam},
    }


def cni_env(
    command: str,
    container: str = "c1",
    ifname: str = "eth0",
    netns: str = "/var/run/netns/x",
    *,
    uid: str = "",
    pod: str = "",
    namespace: str = NAMESPACE,
    **extra: str,
) -> dict[str, str]:
    """The runtime's environment for pod ``pod`` (default ``pod-<container>``) with UID ``uid``
    (K8S_POD_UID is left out when empty, as some runtimes do)."""
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod or f'pod-{container}'}"
    if uid:
        args += f";K8S_POD_UID={uid}"
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname, "CNI_NETNS": netns,
           "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": args}  # fmt: skip
    env.update(extra)
    return env


def pod_env(agent: Agent, command: str, container: str = "c1", **kw: Any) -> dict[str, str]:
    """cni_env for pod ``pod-<container>``, created in the store on first use (UID passed along)."""
    name = kw.pop("pod", "") or f"pod-{container}"
    namespace = kw.get("namespace", NAMESPACE)
    try:
        uid = agent.cluster.uid(name, namespace)
    except NotFound:
        uid = agent.cluster.pod(name, namespace)
    return cni_env(command, container, uid=uid, pod=name, **kw)


def records(store: SqliteStore, pools: Sequence[str] = ("pool4",)) -> list[tuple[str, str]]:
    return [(r.ip, r.pod) for p in pools for r in store.records(p)]


@contextmanager
def write_lock(store: SqliteStore) -> Iterator[None]:
    """Another process's writer holding the database (BEGIN IMMEDIATE on its own connection): reads go
    on, every commit waits for the lock until the store's busy timeout."""
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
