"""Fixtures for the node-agent process tests: real ``spiderbgp agent`` subprocesses on a SQLite file in
tmp_path, the ``spiderpool`` plugin file installed by ``spiderbgp install-cni`` and run as a subprocess
with CNI env + stdin, and the ``spiderbgp`` CLI as a subprocess.

Every agent is started by PID and killed by PID in the fixture's finally; nothing binds anything but a
unix socket in tmp_path and a loopback TCP port found free by binding port 0.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ipam.records import IPRecord, Obj
from ipam.store.sqlite import SqliteStore

BIN = Path(sys.executable).parent
SPIDERBGP = str(BIN / "spiderbgp")
POOL = "pool4"
NETWORK = "podnet"


def eventually(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``check`` until true; the seconds it took.  Fails naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def cli(db: Path, *argv: str, timeout: float = 30.0) -> Result:
    """One ``spiderbgp --store db ...`` run as a process."""
    proc = subprocess.run(
        [SPIDERBGP, "--store", str(db), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


# -- objects ------------------------------------------------------------------------------------------


def pool_doc(
    name: str = POOL, subnet: str = "10.244.0.0/16", ips: str = "10.244.100.10-10.244.100.250"
) -> Obj:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": subnet, "ips": [ips], "gateway": "10.244.0.1", "default": True},
    }


def pod_doc(name: str, node: str = "node1", namespace: str = "default") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running"},
    }


def namespace_doc(name: str = "default") -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def seed(db: Path, pods: Sequence[tuple[str, str]], *, pool: Obj | None = None) -> dict[str, str]:
    """Create the namespace, the pool and ``pods`` ((name, node) pairs) directly in the store; returns
    pod name -> UID."""
    store = SqliteStore(db)
    try:
        store.create(namespace_doc())
        store.create(pool or pool_doc())
        return {name: store.create(pod_doc(name, node))["metadata"]["uid"] for name, node in pods}
    finally:
        store.close()


def add_pods(db: Path, pods: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Create more pods ((name, node) pairs); pod name -> UID."""
    store = SqliteStore(db)
    try:
        return {name: store.create(pod_doc(name, node))["metadata"]["uid"] for name, node in pods}
    finally:
        store.close()


def read_store(db: Path) -> tuple[list[IPRecord], Obj]:
    """The pool's records and the pool object (its status counts), from a fresh connection."""
    store = SqliteStore(db)
    try:
        return store.records(POOL), store.get("SpiderIPPool", POOL)
    finally:
        store.close()


# -- the agent process --------------------------------------------------------------------------------


def agent_config(
    tmp: Path, node: str, db: Path, *, lease: bool = True, gc_trace: float | None = None
) -> dict[str, Any]:
    ipam: dict[str, Any] = {}
    if lease:
        ipam["leaderElection"] = {
            "leaseDurationSeconds": 3,
            "renewDeadlineSeconds": 2,
            "retryPeriodSeconds": 0.5,
        }
    if gc_trace is not None:
        ipam["gc"] = {"traceIntervalSeconds": gc_trace}
    return {
        "nodeName": node,
        "store": str(db),
        "socketPath": str(tmp / f"run-{node}" / "agent.sock"),
        "healthAddress": f"127.0.0.1:{free_port()}",
        "log": {"level": "info"},
        "ipam": ipam,
    }


@dataclass
class AgentProcess:
    """One ``spiderbgp agent --config`` subprocess."""

    config: dict[str, Any]
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    nofile: int | None = None  # the process's descriptor limit (set in the child before exec)

    @property
    def node(self) -> str:
        return str(self.config["nodeName"])

    @property
    def socket_path(self) -> Path:
        return Path(self.config["socketPath"])

    @property
    def health_url(self) -> str:
        return f"http://{self.config['healthAddress']}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [SPIDERBGP, "agent", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                preexec_fn=None if self.nofile is None else self._limit_descriptors,
            )
        self.exit_code = None

    def _limit_descriptors(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def http(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.health_url + path, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent {self.node} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.http("/readyz", timeout=1.0)[0] == 200 and self.socket_path.exists():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"agent {self.node} not ready within {timeout}s:\n{self.log()}")

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics: ``name{label="v",...}`` (labels sorted) -> value."""
        status, text = self.http("/metrics")
        assert status == 200, text
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def leader_metric(self) -> float:
        return self.metrics()["spiderbgp_leader"]

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.exit_code = self.proc.wait(timeout)
        return self.exit_code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def agents(tmp_path: Path, db: Path) -> Iterator[AgentFactory]:
    """``agents(node, **config_overrides)`` builds (not starts) an agent process; every one started is
    killed by PID at teardown, also on failure."""
    made: list[AgentProcess] = []

    def make(node: str = "node1", *, start: bool = True, **kw: Any) -> AgentProcess:
        overrides = kw.pop("overrides", {})
        config = {**agent_config(tmp_path, node, db, **kw), **overrides}
        agent = AgentProcess(config, tmp_path / f"agent-{node}.yaml", tmp_path / f"agent-{node}.log")
        made.append(agent)
        if start:
            agent.start()
            agent.wait_ready()
        return agent

    try:
        yield make
    finally:
        for agent in made:
            agent.kill()


# -- the plugin -----------------------------------------------------------------------------------------


@dataclass
class Plugin:
    """The installed ``spiderpool`` file, executed directly (its own ``#!python -IS`` line)."""

    path: Path
    timeout: float = 10.0
    calls: list[Result] = field(default_factory=list)

    def netconf(self, socket_path: Path, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
        return {
            "cniVersion": version,
            "name": NETWORK,
            "type": "ptp",
            "ipam": {
                "type": "spiderpool",
                "ipam_unix_socket_path": str(socket_path),
                "timeout": self.timeout,
                **ipam,
            },
        }

    def run(
        self,
        command: str,
        socket_path: Path,
        *,
        container: str,
        pod: str = "",
        uid: str = "",
        netns: str = "/var/run/netns/none",
        extra: Mapping[str, Any] | None = None,
    ) -> Result:
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod or container}"
        if uid:
            args += f";K8S_POD_UID={uid}"
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_IFNAME": "eth0",
            "CNI_NETNS": netns,
            "CNI_PATH": "/usr/lib/cni",
            "CNI_ARGS": args,
        }
        conf = {**self.netconf(socket_path), **(extra or {})}
        proc = subprocess.run(
            [str(self.path)],
            input=json.dumps(conf).encode(),
            env=env,
            capture_output=True,
            timeout=self.timeout + 10,
        )
        return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def add(self, socket_path: Path, pod: str, uid: str = "", container: str = "") -> Result:
        return self.run("ADD", socket_path, container=container or f"ctr-{pod}", pod=pod, uid=uid)

    def delete(self, socket_path: Path, pod: str, uid: str = "", container: str = "") -> Result:
        return self.run("DEL", socket_path, container=container or f"ctr-{pod}", pod=pod, uid=uid)


def added_ip(result: Result) -> str:
    """The bare address of a successful ADD result."""
    assert result.rc == 0, result
    return str(result.json["ips"][0]["address"]).partition("/")[0]


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    """Installed the way an operator does it: ``spiderbgp install-cni --dir``."""
    target = tmp_path / "cni-bin"
    proc = subprocess.run(
        [SPIDERBGP, "install-cni", "--dir", str(target)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    path = target / "spiderpool"
    assert os.access(path, os.X_OK)
    return Plugin(path)
