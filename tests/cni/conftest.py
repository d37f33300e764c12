"""Fixtures: the rendered plugin file, and a real agent endpoint (make_app + serve) on a temp socket."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cni.spiderpool import render_plugin_file
from ipam.sqlite_store import SqliteStore
from spiderbgp.cni_endpoint import make_app, serve, shutdown
from tests.cni.backend import StoreBackend, pool_object

PYTHON = os.path.realpath(sys.executable)


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


class Agent:
    """make_app(StoreBackend) served by serve() on a temp socket, in a thread with its own loop."""

    def __init__(self, socket_path: Path, store: SqliteStore, backend: StoreBackend) -> None:
        self.socket_path, self.store, self.backend = socket_path, store, backend
        self.observed: list[tuple[str, int, float]] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        app = make_app(self.backend, metrics=lambda op, code, s: self.observed.append((op, code, s)))
        self._runner = asyncio.run_coroutine_threadsafe(serve(app, str(self.socket_path)), self._loop).result(
            10
        )

    def stop(self) -> None:
        try:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(shutdown(self._runner), self._loop).result(30)
                self._runner = None
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    try:
        s.create(
            pool_object(
                "pool4",
                "10.244.100.0/24",
                ["10.244.100.10-10.244.100.13"],
                "10.244.100.1",
                routes=[{"dst": "10.99.0.0/16", "gw": "10.244.100.1"}],
                default=True,
            )
        )
        s.create(pool_object("pool6", "fd00:244::/64", ["fd00:244::10-fd00:244::13"], "fd00:244::1"))
        s.create(pool_object("tiny", "10.245.0.0/24", ["10.245.0.5"], "10.245.0.1"))
        yield s
    finally:
        s.close()


@pytest.fixture
def agent(tmp_path: Path, store: SqliteStore) -> Iterator[Agent]:
    a = Agent(tmp_path / "run" / "agent.sock", store, StoreBackend(store))
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
    command: str, container: str = "c1", ifname: str = "eth0", netns: str = "/var/run/netns/x", **extra: str
) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname, "CNI_NETNS": netns,
           "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{container};K8S_POD_UID=uid-{container}"}  # fmt: skip
    env.update(extra)
    return env
