"""The lab's data plane: the per-node pod server (one process serving every pod namespace of a node),
the Calico-style ``hostroute`` CNI plugin, and (marker ``lab``) pods of several subnets and both
families on the seed lab."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bgp_speaker.kernel import NetlinkRouteSource, RouteChange, RoutesByLink, RouteTable
from ipam.store.sqlite import SqliteStore
from lab import cni_hostroute as hostroute
from lab.build import Lab
from lab.frr import wait_until
from lab.invariants import check_invariants, fetch_pages
from lab.netns import Netns, Sandbox, list_netns, run
from lab.podserver import NodePodServer, PodServerClient, PodServerError, answer
from lab.verbs import apply_file, delete_named, scale, wait_settled

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
    assert run(h.node, ["ss", "-Htln", "sport = :80"]).stdout.strip() == ""
    # one process serves all pods: every pod's listeners (IPv4 and IPv6) belong to the node's server
    for ns, _, _ in h.pods.values():
        owners = re.findall(r"pid=(\d+)", run(ns, ["ss", "-Htlnp", "sport = :80"]).stdout)
        assert owners == [str(h.server.proc.pid)] * 2
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


@root_only
@pytest.mark.netns
def test_a_pod_recreated_under_the_same_path_is_served_in_its_new_namespace(tmp_path: Path) -> None:
    """The lab names a pod's namespace after the pod, so a StatefulSet pod re-created comes back
    under the same path: the server must listen in the new namespace, not keep the old one."""

    def listeners(ns: Netns) -> list[str]:
        return re.findall(r"pid=(\d+)", run(ns, ["ss", "-Htlnp", "sport = :80"]).stdout)

    with Sandbox() as sb:
        node, pod = sb.netns("node"), sb.netns("web-1")
        server = NodePodServer.start(node, tmp_path / "pods.sock", sandbox=sb)
        with NodePodServer.connect(tmp_path / "pods.sock") as client:
            client.add("web-1", pod.path)
            client.add("web-1", pod.path)  # the same namespace again: nothing changes
            assert listeners(pod) == [str(server.proc.pid)] * 2
            sb.remove_netns(pod)
            again = sb.netns("web-1")
            assert again.path == pod.path
            client.add("web-1", again.path)
            assert listeners(again) == [str(server.proc.pid)] * 2
            assert client.pods() == ["web-1"]


def test_connect_to_a_missing_server_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PodServerError, match=r"^pod server .*nothing\.sock: No such file or directory$"):
        NodePodServer.connect(tmp_path / "nothing.sock")


# ---- the hostroute CNI plugin (Calico-style wiring) ------------------------------------------

REFERENCE_PLUGINS = Path("/usr/lib/cni")
HOSTROUTE = Path(__file__).resolve().parents[2] / "lab" / "cni_hostroute.py"


def test_hostroute_names_and_commands_are_calicos() -> None:
    args = hostroute.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx-0")
    # Calico: "cali" + the first 11 hex digits of sha1("<namespace>.<pod>")
    assert hostroute.host_veth_name(args, "c1") == "cali" + hashlib.sha1(b"default.nginx-0").hexdigest()[:11]
    assert hostroute.host_veth_name({}, "c1") == "cali" + hashlib.sha1(b"c1").hexdigest()[:11]
    mac = hostroute.container_mac("c1")
    assert mac.startswith("0a:58:") and len(mac.split(":")) == 6
    addrs = hostroute.addresses({"ips": [{"address": "10.244.1.5/16"}, {"address": "fd00:10::5/64"}]})
    assert [a.host_prefix for a in addrs] == ["10.244.1.5/32", "fd00:10::5/128"]
    assert hostroute.pod_commands("eth0", addrs, [("192.0.2.0/24", False)]) == [
        "link set eth0 up",
        "addr add 10.244.1.5/32 dev eth0",
        "addr add fd00:10::5/128 dev eth0 nodad",
        "route add 169.254.1.1 dev eth0 scope link",
        "route add 0.0.0.0/0 via 169.254.1.1 dev eth0",
        "route add ::/0 via fe80::ecee:eeff:feee:eeee dev eth0",
        "route add 192.0.2.0/24 via 169.254.1.1 dev eth0",
    ]
    # the host routes come last, after the link is up
    assert hostroute.host_commands("caliX", addrs) == [
        "link set caliX up",
        "route add 10.244.1.5/32 dev caliX scope link",
        "route add fd00:10::5/128 dev caliX scope link",
    ]
    legacy = hostroute.render_result("0.4.0", "caliX", "eth0", mac, "/ns", addrs[:1], {})
    assert legacy["ips"] == [
        {"version": "4", "address": "10.244.1.5/32", "gateway": "169.254.1.1", "interface": 1}
    ]
    assert legacy["routes"] == [{"dst": "0.0.0.0/0"}]
    with pytest.raises(hostroute.PluginError, match="no IP address"):
        hostroute.addresses({"ips": []})
    # JSON through the C accelerator (the plugin does not import json)
    assert hostroute.json_loads(' {"a": [1, 2.5, null, true], "b": "\\u00e9"} ') == {
        "a": [1, 2.5, None, True],
        "b": "\u00e9",
    }
    assert json.loads(hostroute.json_dumps({"ips": [{"address": "10.0.0.1/32"}]})) == {
        "ips": [{"address": "10.0.0.1/32"}]
    }
    for bad in ('{"a":', "1 2", "", "NaN", "[1,]"):
        with pytest.raises(hostroute.JSONError):
            hostroute.json_loads(bad)


@dataclass
class PluginHosts:
    node: Netns
    pod: Netns
    bin_dir: Path


@pytest.fixture
def plugin_hosts(tmp_path: Path) -> Iterator[PluginHosts]:
    if not (REFERENCE_PLUGINS / "static").exists():
        pytest.skip("needs containernetworking-plugins in /usr/lib/cni")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "hostroute"
    plugin.write_bytes(HOSTROUTE.read_bytes())
    plugin.chmod(0o755)
    with Sandbox() as sb:
        node, pod = sb.netns("node"), sb.netns("pod")
        # the node's uplink: a veth with the node's addresses and default routes (proxy ARP answers
        # for 169.254.1.1 only when the node routes it elsewhere, as a real node does)
        for line in (
            "link add up0 type veth peer name up1",
            "link set up1 up",
            "link set up0 up",
            "addr add 10.0.0.1/32 dev up0",
            "addr add fd00::1/128 dev up0 nodad",
            "route add 0.0.0.0/0 dev up0",
            "route add ::/0 dev up0",
        ):
            run(node, ["ip", *line.split()])
        yield PluginHosts(node, pod, bin_dir)


def _plugin(h: PluginHosts, command: str, conf: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "ctr-1",
        "CNI_NETNS": h.pod.path,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{h.bin_dir}:{REFERENCE_PLUGINS}",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    res = subprocess.run(
        ["ip", "netns", "exec", h.node.name, str(h.bin_dir / "hostroute")],
        input=json.dumps(conf),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return res.returncode, json.loads(res.stdout) if res.stdout.strip() else {}


def _netconf(**ipam: object) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "t",
        "type": "hostroute",
        "mtu": 1400,
        "ipam": {"type": "static", **ipam},
    }


@root_only
@pytest.mark.netns
def test_hostroute_wires_a_dual_stack_pod_like_calico(plugin_hosts: PluginHosts) -> None:
    h = plugin_hosts
    conf = _netconf(addresses=[{"address": "10.244.7.9/16"}, {"address": "fd00:10:244::9/64"}])
    rc, result = _plugin(h, "ADD", conf)
    assert rc == 0, result
    veth = "cali" + hashlib.sha1(b"default.web-0").hexdigest()[:11]
    assert [i["name"] for i in result["interfaces"]] == [veth, "eth0"]
    assert [i["address"] for i in result["ips"]] == ["10.244.7.9/32", "fd00:10:244::9/128"]
    pod_addrs = run(h.pod, ["ip", "-br", "addr", "show", "eth0"]).stdout
    assert "10.244.7.9/32" in pod_addrs and "fd00:10:244::9/128" in pod_addrs
    assert "default via 169.254.1.1 dev eth0" in run(h.pod, ["ip", "route"]).stdout
    assert "default via fe80::ecee:eeff:feee:eeee dev eth0" in run(h.pod, ["ip", "-6", "route"]).stdout
    assert f"10.244.7.9 dev {veth} scope link" in run(h.node, ["ip", "route"]).stdout
    assert f"fd00:10:244::9 dev {veth}" in run(h.node, ["ip", "-6", "route"]).stdout
    assert "mtu 1400" in run(h.pod, ["ip", "link", "show", "eth0"]).stdout
    # traffic both ways, both families: the pod's replies go through the link-local gateway
    assert run(h.node, ["ping", "-c1", "-W2", "10.244.7.9"], check=False).returncode == 0
    assert run(h.node, ["ping", "-c1", "-W2", "fd00:10:244::9"], check=False).returncode == 0

    rc, _ = _plugin(h, "DEL", conf)
    assert rc == 0
    assert veth not in run(h.node, ["ip", "-br", "link"]).stdout
    assert "10.244.7.9" not in run(h.node, ["ip", "route"]).stdout
    assert "eth0" not in run(h.pod, ["ip", "-br", "link"]).stdout
    assert _plugin(h, "DEL", conf)[0] == 0  # DEL twice is fine


@root_only
@pytest.mark.netns
def test_hostroute_errors_are_one_line_and_leave_nothing(plugin_hosts: PluginHosts) -> None:
    h = plugin_hosts
    rc, err = _plugin(h, "ADD", {**_netconf(addresses=[{"address": "10.244.7.9/16"}]), "mtu": 5})
    assert rc == 1 and err["code"] == 7 and err["msg"] == "mtu: must be 68..65535, got 5"
    rc, err = _plugin(h, "ADD", {**_netconf(), "ipam": {"type": "nonexistent"}})
    assert (
        rc == 1
        and err["code"] == 7
        and str(err["msg"]).startswith("ipam.type: plugin 'nonexistent' not found")
    )
    rc, err = _plugin(h, "ADD", _netconf(addresses=[{"address": "not-an-ip"}]))
    assert rc != 0 and err.get("msg")  # the IPAM plugin's own error, passed through
    assert "cali" not in run(h.node, ["ip", "-br", "link"]).stdout
    assert "eth0" not in run(h.pod, ["ip", "-br", "link"]).stdout


# ---- the agent's view of a deleted pod veth -------------------------------------------------


def test_routes_of_a_deleted_link_are_deleted_with_it() -> None:
    links = RoutesByLink()
    a = RouteChange("add", ipaddress.ip_network("10.244.1.5/32"), True, oif=7)
    b = RouteChange("add", ipaddress.ip_network("fd00::5/128"), True, oif=7)
    links.note(a)
    links.note(b)
    links.note(RouteChange("del", b.dst, True, oif=7))  # IPv6: the kernel says so itself
    links.note(RouteChange("add", ipaddress.ip_network("10.244.1.6/32"), True, oif=8))
    assert links.gone(7) == [RouteChange("del", a.dst, True, oif=7)]
    assert links.gone(7) == []


@root_only
@pytest.mark.netns
def test_the_agents_route_watch_forgets_a_pods_host_route_when_its_veth_goes() -> None:
    """The kernel flushes a deleted veth's IPv4 routes without telling (no RTM_DELROUTE); the next pod
    usually gets the same address, so a stale entry would make it "ready" before its own route."""
    with Sandbox() as sb:
        node = sb.netns("node")
        run(node, ["ip", "link", "add", "cali1", "type", "veth", "peer", "name", "cali1p"])
        run(node, ["ip", "link", "set", "cali1", "up"])
        run(node, ["ip", "route", "add", "10.244.1.5/32", "dev", "cali1", "scope", "link"])
        pod_ip = ipaddress.ip_address("10.244.1.5")

        async def scenario() -> None:
            table = RouteTable()
            gen = NetlinkRouteSource(netns=node.name).watch()
            try:
                table.apply(await asyncio.wait_for(gen.__anext__(), 10))
                assert table.is_local(pod_ip)
                await asyncio.to_thread(run, node, ["ip", "link", "del", "cali1"])
                while table.is_local(pod_ip):
                    table.apply(await asyncio.wait_for(gen.__anext__(), 10))
            finally:
                await gen.aclose()

        asyncio.run(scenario())


# ---- on the seed lab (marker lab): several subnets and both families per node, route gating, 100 pods


@dataclass
class SeedLab:
    lab: Lab
    store: SqliteStore


CONFIGS = Path(__file__).resolve().parents[2] / "configs"

PINNED = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      annotations:
        ipam.spidernet.io/ippool: '{pools}'
      labels:
        app: {name}
    spec:
      nodeSelector:
        kubernetes.io/hostname: node1
      containers:
        - name: web
          image: nginx
"""


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedLab]:
    """The seed lab with its controller, as ``python -m lab up`` builds it; removed even on failure."""
    run_dir = tmp_path_factory.mktemp("dataplane") / "run"
    lab = Lab.create(run_dir=run_dir, env={})
    store: SqliteStore | None = None
    prefix = lab.sandbox.prefix
    try:
        lab.up(timeout=90)
        store = SqliteStore(lab.store_path)
        apply_file(store, CONFIGS / "nginx-ippool-v4.yaml")
        yield SeedLab(lab, store)
    finally:
        if store is not None:
            store.close()
        lab.down()
    assert not list_netns(prefix), "the lab left namespaces behind"


def _running(s: SeedLab, prefix: str) -> dict[str, dict[str, Any]]:
    return {
        p["metadata"]["name"]: p
        for p in s.store.list("Pod", namespace="default")
        if p["metadata"]["name"].startswith(prefix)
        and (p.get("status") or {}).get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
    }


def _pod_ips(pod: dict[str, Any]) -> list[str]:
    return [str(x["ip"]) for x in (pod.get("status") or {}).get("podIPs") or []]


def _assert_invariants(s: SeedLab) -> None:
    problems = check_invariants(s.lab, s.store, timeout=60)
    assert problems == [], "\n".join(problems)


def _apply_text(s: SeedLab, tmp_path: Path, text: str) -> None:
    path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(text)
    apply_file(s.store, path)


@root_only
@pytest.mark.lab
@pytest.mark.slow
def test_two_ipv4_subnets_and_ipv6_on_one_node_each_reached_from_the_client(
    seed: SeedLab, tmp_path: Path
) -> None:
    s = seed
    apply_file(s.store, CONFIGS / "dual-stack.yaml")
    _apply_text(s, tmp_path, PINNED.format(name="one", replicas=2, pools='{"ipv4":["nginx-ippool-v4"]}'))
    _apply_text(
        s,
        tmp_path,
        PINNED.format(name="two", replicas=2, pools='{"ipv4":["dual-ippool-v4"],"ipv6":["dual-ippool-v6"]}'),
    )
    assert wait_settled(s.store, timeout=180) == []
    on_node1 = {
        name: _pod_ips(p)
        for name, p in {**_running(s, "one-"), **_running(s, "two-")}.items()
        if (p.get("spec") or {}).get("nodeName") == "node1"
    }
    assert len(on_node1) == 4
    ips = [ip for v in on_node1.values() for ip in v]
    assert {ip.split(".")[1] for ip in ips if ":" not in ip} == {"244", "245"}  # two IPv4 subnets
    assert sum(":" in ip for ip in ips) == 2 and all(
        ip.startswith("fd00:10:245::") for ip in ips if ":" in ip
    )
    # Calico-style: one host route per address towards the pod's own veth, no bridge
    node1 = s.lab.ns("node1")
    v4_routes = run(node1, ["ip", "-4", "route"]).stdout
    v6_routes = run(node1, ["ip", "-6", "route"]).stdout
    for ip in ips:
        assert re.search(
            rf"^{re.escape(ip)} dev cali[0-9a-f]{{11}} ", v6_routes if ":" in ip else v4_routes, re.M
        ), ip
    assert "cni0" not in run(node1, ["ip", "-br", "link"]).stdout
    # the router learns each /32 and /128 with the node's next hop (fd00:13::11 for IPv6) ...
    want = {f"{ip}/{128 if ':' in ip else 32}": "fd00:13::11" if ":" in ip else "172.16.13.11" for ip in ips}
    wait_until(
        lambda: {p: r.nexthop for p, r in s.lab.router.bgp_routes().items() if p in want} == want,
        timeout=60,
        what="the pods' routes on the router",
    )
    # ... and the client reaches every address, IPv4 and IPv6, and gets the pod's name
    names = {ip: name for name, v in on_node1.items() for ip in v}
    answered: dict[str, str | None] = {}
    wait_until(
        lambda: answered.update(fetch_pages(s.lab, ips, timeout=3)) or answered == names,
        timeout=30,
        what="every pod's answer to the client",
    )
    _assert_invariants(s)
    for name in ("one", "two"):
        delete_named(s.store, "Deployment", name)
    assert wait_settled(s.store, timeout=120) == []


@root_only
@pytest.mark.lab
@pytest.mark.slow
def test_an_address_is_announced_only_while_its_pods_host_route_exists(seed: SeedLab, tmp_path: Path) -> None:
    """requireHostRoute end to end: the router loses a running pod's /32 and /128 when the node's
    host routes go, keeps them away while later pods of the same node are announced, and gets them
    back only when the routes are back."""
    s = seed
    apply_file(s.store, CONFIGS / "dual-stack.yaml")  # the pools (unchanged if an earlier test made them)
    pools = '{"ipv4":["dual-ippool-v4"],"ipv6":["dual-ippool-v6"]}'
    _apply_text(s, tmp_path, PINNED.format(name="gate", replicas=1, pools=pools))
    assert wait_settled(s.store, timeout=120) == []
    (pod,) = _running(s, "gate-").values()
    ips = _pod_ips(pod)
    prefixes = {f"{ip}/{128 if ':' in ip else 32}" for ip in ips}
    router, node1 = s.lab.router, s.lab.ns("node1")
    wait_until(lambda: prefixes <= set(router.bgp_routes()), timeout=60, what="the pod's routes")
    fam = {ip: "-6" if ":" in ip else "-4" for ip in ips}
    routes = {
        ip: run(node1, ["ip", fam[ip], "route", "show", ip]).stdout.split()[2] for ip in ips
    }  # its veth
    assert all(dev.startswith("cali") for dev in routes.values()), routes

    for ip, dev in routes.items():
        run(node1, ["ip", fam[ip], "route", "del", ip, "dev", dev])
    wait_until(lambda: not prefixes & set(router.bgp_routes()), timeout=60, what="the withdrawal")
    # still allocated to the running pod, only the host route is missing
    held = {r.ip for name in ("dual-ippool-v4", "dual-ippool-v6") for r in s.store.records(name)}
    assert set(ips) <= held
    # a later pod of the same node is announced; the routeless one still is not
    scale(s.store, "gate", 2)
    assert wait_settled(s.store, timeout=120) == []
    (other,) = (p for n, p in _running(s, "gate-").items() if n != pod["metadata"]["name"])
    later = {f"{ip}/{128 if ':' in ip else 32}" for ip in _pod_ips(other)}
    wait_until(lambda: later <= set(router.bgp_routes()), timeout=60, what="the later pod's routes")
    assert not prefixes & set(router.bgp_routes())

    for ip, dev in routes.items():
        run(node1, ["ip", fam[ip], "route", "add", ip, "dev", dev, "scope", "link"])
    wait_until(lambda: prefixes <= set(router.bgp_routes()), timeout=60, what="the routes back")
    _assert_invariants(s)
    delete_named(s.store, "Deployment", "gate")
    assert wait_settled(s.store, timeout=120) == []


@root_only
@pytest.mark.lab
@pytest.mark.slow
def test_a_hundred_pods_come_up_routable_and_go_away_clean(seed: SeedLab, tmp_path: Path) -> None:
    s = seed
    apply_file(s.store, CONFIGS / "nginx-deployment.yaml")
    scale(s.store, "nginx", 100)
    assert wait_settled(s.store, timeout=400) == []
    pods = _running(s, "nginx-")
    assert len(pods) == 100
    assert {(p.get("spec") or {}).get("nodeName") for p in pods.values()} == {"node1", "node2"}
    _assert_invariants(s)  # 100 /32s on the router with their nodes' next hops, 100 answers
    scale(s.store, "nginx", 2)
    assert wait_settled(s.store, timeout=300) == []
    kept = {f"{ip}/32" for p in _running(s, "nginx-").values() for ip in _pod_ips(p)}
    wait_until(
        lambda: {p for p in s.lab.router.bgp_routes() if p.startswith("10.244.")} == kept,
        timeout=120,
        what="98 withdrawals",
    )
    _assert_invariants(s)
