"""The lab's data plane: the per-node pod server (one process serving every pod namespace of a node)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.netns import Netns, Sandbox, list_netns, run
from lab.podserver import NodePodServer, PodServerClient, PodServerError, answer

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def test_answer_is_the_pod_name_and_healthz_follows_readiness() -> None:
    ok = answer("web-0", True, "GET", "/").decode()
    assert ok.startswith("HTTP/1.1 200 OK\r\n") and ok.endswith("\r\n\r\nweb-0\n")
    assert answer("web-0", True, "GET", "/healthz").startswith(b"HTTP/1.1 200 ")
    assert answer("web-0", False, "GET", "/healthz?x=1").startswith(b"HTTP/1.1 503 ")
    assert answer("web-0", False, "GET", "/").endswith(b"web-0\n")  # not ready still serves
    assert answer("web-0", True, "HEAD", "/").endswith(b"\r\n\r\n")
    assert answer("web-0", True, "POST", "/").startswith(b"HTTP/1.1 405 ")


@dataclass
class PodHost:
    sb: Sandbox
    node: Netns
    server: NodePodServer
    client: PodServerClient
    pods: dict[str, tuple[Netns, str, str]]  # name -> (netns, IPv4, IPv6)


def _fetch(ns: Netns, ip: str, path: str = "/") -> str | None:
    """GET http://ip/path from inside ``ns`` (lab.probe's fetch, run where the route is)."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "host = f'[{sys.argv[1]}]' if ':' in sys.argv[1] else sys.argv[1]\n"
        "try:\n"
        "    r = urllib.request.urlopen(f'http://{host}{sys.argv[2]}', timeout=3)\n"
        "    print(r.status, r.read().decode().strip())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.read().decode().strip())\n"
        "except OSError as e:\n"
        "    print('error', e)\n"
    )
    out = run(ns, [sys.executable, "-c", code, ip, path]).stdout.strip()
    return None if out.startswith("error") else out


@pytest.fixture(scope="module")
def podhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodHost]:
    """A node namespace with two pod namespaces behind veths (v4 /32 and v6 /128 host routes) and
    one pod server in the node."""
    control = tmp_path_factory.mktemp("pods") / "pods.sock"
    with Sandbox() as sb:
        node = sb.netns("node")
        run(node, ["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"])
        run(node, ["ip", "addr", "add", "fd00:99::ff/128", "dev", "lo"])
        pods: dict[str, tuple[Netns, str, str]] = {}
        for i, name in enumerate(("pod-a", "pod-b"), start=1):
            pod = sb.netns(name)
            sb.veth(node, f"cali{i}", pod, "eth0")
            v4, v6 = f"10.99.{i}.7", f"fd00:99::{i}"
            run(pod, ["ip", "addr", "add", f"{v4}/32", "dev", "eth0"])
            run(pod, ["ip", "addr", "add", f"{v6}/128", "dev", "eth0", "nodad"])
            run(node, ["ip", "route", "add", f"{v4}/32", "dev", f"cali{i}"])
            run(node, ["ip", "-6", "route", "add", f"{v6}/128", "dev", f"cali{i}"])
            # the pod routes of the lab's wiring: a link-local gateway on the node's end of the veth
            run(node, ["ip", "addr", "add", "169.254.1.1/32", "dev", f"cali{i}"])
            run(pod, ["ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])
            run(pod, ["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])
            run(pod, ["ip", "-6", "route", "add", "default", "via", f"fe80::{i}:ee", "dev", "eth0"])
            run(node, ["ip", "addr", "add", f"fe80::{i}:ee/64", "dev", f"cali{i}", "nodad"])
            pods[name] = (pod, v4, v6)
        server = NodePodServer.start(node, control, sandbox=sb)
        client = NodePodServer.connect(control)
        try:
            yield PodHost(sb, node, server, client, pods)
        finally:
            client.close()
            server.stop()
        prefix = sb.prefix
    assert not list_netns(prefix)


@root_only
@pytest.mark.netns
def test_one_node_server_serves_every_pod_over_both_families(podhost: PodHost) -> None:
    h = podhost
    for name, (ns, _, _) in h.pods.items():
        h.client.add(name, ns.path)
    assert h.client.pods() == ["pod-a", "pod-b"]
    for name, (_, v4, v6) in h.pods.items():
        assert _fetch(h.node, v4) == f"200 {name}"
        assert _fetch(h.node, v6) == f"200 {name}"
    # the listeners live in the pods' namespaces, not in the node's
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 80)) != 0
    assert run(h.node, ["ss", "-Htln", "sport = :80"]).stdout.strip() == ""
    # one process for all pods
    assert h.server.proc.alive()
    for name in h.pods:
        h.client.remove(name)


@root_only
@pytest.mark.netns
def test_readiness_remove_and_errors(podhost: PodHost) -> None:
    h = podhost
    ns_a, v4, v6 = h.pods["pod-a"]
    h.client.add("pod-a", ns_a.path)
    h.client.add("pod-a", ns_a.path)  # idempotent
    assert _fetch(h.node, v4, "/healthz") == "200 ok"
    h.client.set_ready("pod-a", False)
    assert _fetch(h.node, v4, "/healthz") == "503 not ready"
    assert _fetch(h.node, v6, "/") == "200 pod-a"
    h.client.set_ready("pod-a", True)
    assert _fetch(h.node, v6, "/healthz") == "200 ok"

    with pytest.raises(PodServerError, match=r"^pod ghost: netns /var/run/netns/nope: No such file"):
        h.client.add("ghost", "/var/run/netns/nope")
    with pytest.raises(PodServerError, match=r"^pod ghost: .*not a network namespace"):
        h.client.add("ghost", "/etc/hostname")
    with pytest.raises(PodServerError, match=r"^pod ghost: field 'port' must be 1..65535, got 0"):
        h.client.add("ghost", ns_a.path, port=0)
    with pytest.raises(PodServerError, match=r"^pod ghost: not served on this node"):
        h.client.set_ready("ghost", True)
    assert h.client.pods() == ["pod-a"]  # failed requests changed nothing

    assert h.client.remove("pod-a") is True
    assert h.client.remove("pod-a") is False
    assert _fetch(h.node, v4) is None
    assert h.client.pods() == []


def test_connect_to_a_missing_server_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PodServerError, match=r"^pod server .*nothing\.sock: No such file or directory$"):
        NodePodServer.connect(tmp_path / "nothing.sock")
