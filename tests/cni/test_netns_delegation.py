"""The reference ``bridge`` and ``ptp`` plugins delegating IPAM to our rendered plugin, in namespaces.

Each test makes a node namespace and a pod namespace (``sbgp-<token>-node``/``-pod``), runs the main
plugin inside the node namespace with our plugin first in CNI_PATH against the agent's real backend,
and checks the pod's interface, addresses and routes.  A DEL while the Pod object still exists tears
the interface down and keeps the IP (sandbox re-creation); once the pod is gone a DEL naming its UID
releases it, and the announcer is told both times what changed.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cni.conftest import Agent, netconf

pytestmark = pytest.mark.netns

CNI_DIR = Path("/usr/lib/cni")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20).stdout


@dataclass
class Hosts:
    node: str
    pod: str


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or not (CNI_DIR / "bridge").exists():
        pytest.skip("needs root and containernetworking-plugins in /usr/lib/cni")
    token = secrets.token_hex(3)
    h = Hosts(node=f"sbgp-{token}-node", pod=f"sbgp-{token}-pod")
    made: list[str] = []
    try:
        for ns in (h.node, h.pod):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        yield h
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def run_main_plugin(
    hosts: Hosts, plugin_dir: Path, kind: str, command: str, conf: dict[str, Any], uid: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"ctr-{hosts.pod}",
        "CNI_NETNS": f"/var/run/netns/{hosts.pod}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{plugin_dir}:{CNI_DIR}",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={hosts.pod};K8S_POD_UID={uid}",
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    return subprocess.run(
        ["ip", "netns", "exec", hosts.node, str(CNI_DIR / kind)],
        input=json.dumps(conf),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def pod_state(hosts: Hosts) -> tuple[list[str], list[tuple[str, str | None]]]:
    links = json.loads(ip("-n", hosts.pod, "-j", "addr", "show"))
    addrs = [
        f"{a['local']}/{a['prefixlen']}"
        for link in links
        if link["ifname"] == "eth0"
        for a in link.get("addr_info", [])
        if a["family"] == "inet"
    ]
    routes = [(r["dst"], r.get("gateway")) for r in json.loads(ip("-n", hosts.pod, "-j", "route", "show"))]
    return addrs, routes


@pytest.mark.parametrize(
    ("kind", "version"), [("bridge", "0.3.1"), ("bridge", "1.0.0"), ("ptp", "0.4.0"), ("ptp", "1.0.0")]
)
def test_reference_plugin_gets_ip_routes_from_spiderpool(
    hosts: Hosts, plugin_dir: Path, agent: Agent, kind: str, version: str
) -> None:
    conf = netconf(agent.socket_path, version)
    conf["type"] = kind
    conf["ipMasq"] = False
    if kind == "bridge":
        conf.update(bridge="sbgpbr0", isGateway=True)
    uid = agent.cluster.pod(hosts.pod)
    added = False
    try:
        res = run_main_plugin(hosts, plugin_dir, kind, "ADD", conf, uid)
        assert res.returncode == 0, res.stdout + res.stderr
        added = True
        result = json.loads(res.stdout)
        assert result["cniVersion"] == version
        assert [i["address"] for i in result["ips"]] == ["10.244.100.10/24"]
        addrs, routes = pod_state(hosts)
        assert addrs == ["10.244.100.10/24"]
        assert ("default", "10.244.100.1") in routes and ("10.99.0.0/16", "10.244.100.1") in routes
        assert [(r.ip, r.pod_uid) for r in agent.store.records("pool4")] == [("10.244.100.10", uid)]
        assert agent.events.added == [{"10.244.100.10": "10.244.100.0/24"}]
        ping = subprocess.run(
            ["ip", "netns", "exec", hosts.pod, "ping", "-c1", "-W2", "10.244.100.1"],
            capture_output=True,
            timeout=20,
        )
        assert ping.returncode == 0, ping.stdout
        # CHECK through the reference plugin (0.4.0+ only) consults our plugin as well
        if version != "0.3.1":
            check = run_main_plugin(hosts, plugin_dir, kind, "CHECK", {**conf, "prevResult": result}, uid)
            assert check.returncode == 0, check.stdout + check.stderr
            assert ("check", 0) in agent.operations
        # the sandbox goes away while the pod lives on: interface gone, IP kept for the next sandbox
        res = run_main_plugin(hosts, plugin_dir, kind, "DEL", conf, uid)
        assert res.returncode == 0, res.stdout + res.stderr
        added = False
        assert pod_state(hosts)[0] == []
        assert agent.cluster.ips("pool4") == ["10.244.100.10"] and agent.events.removed == []
        # the next sandbox of the same pod gets the same address
        res = run_main_plugin(hosts, plugin_dir, kind, "ADD", conf, uid)
        assert res.returncode == 0, res.stdout + res.stderr
        added = True
        assert pod_state(hosts)[0] == ["10.244.100.10/24"]
        # the pod is deleted: DEL releases the IP, the announcer withdraws it
        agent.cluster.delete_pod(hosts.pod)
        res = run_main_plugin(hosts, plugin_dir, kind, "DEL", conf, uid)
        assert res.returncode == 0, res.stdout + res.stderr
        added = False
        assert pod_state(hosts)[0] == []
        assert agent.store.records("pool4") == [] and agent.store.list("SpiderEndpoint") == []
        assert agent.events.removed == [["10.244.100.10"]]
        assert (
            run_main_plugin(hosts, plugin_dir, kind, "DEL", conf, uid).returncode == 0
        )  # DEL again: still fine
    finally:
        if added:
            run_main_plugin(hosts, plugin_dir, kind, "DEL", conf, uid)
