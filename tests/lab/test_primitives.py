"""lab.netns and lab.frr against the real kernel and a real FRR: namespaces, veth, routes, the
cleanup registry, and an FRR router that peers with a second FRR acting as a node."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab.frr import FrrRouter, wait_until
from lab.netns import (
    NS_PREFIX,
    ProcRef,
    Sandbox,
    add_address,
    add_route,
    addresses,
    link_names,
    list_netns,
    pids_in,
    run,
    set_sysctl,
    sweep,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def test_sandbox_builds_and_removes_everything(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with Sandbox() as sb:
        a, b = sb.netns("a"), sb.netns("b")
        assert a.name.startswith(f"{NS_PREFIX}{sb.token}-")
        sb.veth(a, "eth1", b, "eth1")
        add_address(a, "eth1", "192.0.2.1/24")
        add_address(b, "eth1", "192.0.2.2/24")
        add_route(b, "default", via="192.0.2.1")
        set_sysctl(a, "net.ipv4.ip_forward", 1)
        assert "eth1" in link_names(b)
        assert "192.0.2.2/24" in addresses(b, "eth1")
        assert run(a, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
        assert run(b, ["ping", "-c1", "-W1", "192.0.2.1"]).returncode == 0
        proc = sb.popen(b, ["sleep", "300"])
        ref = ProcRef.of(proc.pid)
        sb.add_path(scratch)
        names = [a.name, b.name]
    assert not ref.alive()
    assert not set(names) & set(list_netns())
    assert not scratch.exists()


def test_sandbox_cleans_up_when_the_body_fails() -> None:
    with pytest.raises(ZeroDivisionError), Sandbox() as sb:
        ns = sb.netns("x")
        proc = sb.popen(ns, ["sleep", "300"])
        ref = ProcRef.of(proc.pid)
        name = ns.name
        _ = 1 / 0
    assert name not in list_netns()
    assert not ref.alive()


def test_sweep_removes_a_crashed_labs_namespaces() -> None:
    sb = Sandbox()
    ns = sb.netns("orphan")
    # a process started outside the registry's books, as after a crash of the lab process
    child = subprocess.Popen(["ip", "netns", "exec", ns.name, "sleep", "300"])
    try:
        # `ip netns exec` enters the namespace a moment after Popen returns: sweep only once it is there
        deadline = time.monotonic() + 10
        while child.pid not in pids_in(ns) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sweep(sb.prefix) == [ns.name]
        child.wait(timeout=10)
        assert ns.name not in list_netns()
    finally:
        sb.close()
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def test_sweep_refuses_a_bare_prefix() -> None:
    with pytest.raises(ValueError):
        sweep(NS_PREFIX)


ROUTER_CONF = """\
frr defaults traditional
hostname r1
router bgp 65001
 bgp router-id 10.0.0.1
 no bgp ebgp-requires-policy
 bgp log-neighbor-changes
 neighbor 10.0.0.2 remote-as 65002
exit
"""

PEER_CONF = """\
frr defaults traditional
hostname r2
router bgp 65002
 bgp router-id 10.0.0.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 10.0.0.1 remote-as 65001
 address-family ipv4 unicast
  network 10.99.0.7/32
 exit-address-family
exit
"""


def test_frr_pair_peers_installs_and_restarts(tmp_path: Path) -> None:
    with Sandbox() as sb:
        r1, r2 = sb.netns("r1"), sb.netns("r2")
        sb.veth(r1, "eth1", r2, "eth1")
        add_address(r1, "eth1", "10.0.0.1/24")
        add_address(r2, "eth1", "10.0.0.2/24")
        router = FrrRouter(sb, r1, run_dir=tmp_path / "r1")
        peer = FrrRouter(sb, r2, run_dir=tmp_path / "r2")
        router.start(ROUTER_CONF)
        peer.start(PEER_CONF)
        assert router.state_dir.name == r1.name
        router.wait_established({"10.0.0.2"}, timeout=30)
        routes = wait_until(lambda: router.bgp_routes() or None, timeout=15, what="route")
        assert routes["10.99.0.7/32"].nexthop == "10.0.0.2"
        wait_until(lambda: "10.99.0.7/32" in router.kernel_routes(), timeout=10, what="FIB route")
        assert "router bgp 65001" in router.vtysh("show running-config")
        # a crash of the router's daemons, then a restart with the same config
        router.restart(sig=signal.SIGKILL)
        router.wait_established({"10.0.0.2"}, timeout=30)
        wait_until(lambda: "10.99.0.7/32" in router.bgp_routes(), timeout=15, what="route again")
        state_dir = router.state_dir
        pids = list(router.pids().values()) + list(peer.pids().values())
    assert not state_dir.exists()
    assert not any(p.alive() for p in pids)
