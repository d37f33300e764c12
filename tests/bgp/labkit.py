"""A small BGP lab for the speaker's tests and the benchmark: a router namespace running a real BGP
daemon (FRR, BIRD or GoBGP) and a node namespace where the speaker's ExaBGP runs.

    router  r-node 172.16.13.1/24  fd00:13::1/64          FRR / BIRD / GoBGP, AS 23000
      | veth
    node    eth0   172.16.13.11/24 fd00:13::11/64         ExaBGP (the speaker), AS 64512
            pods   a veth "pods" (peer "podpeer") that carries the pods' host routes

Everything lives in namespaces ``sbgp-<token>-*`` made through lab.netns.Sandbox, and every process
and file is registered with the sandbox, so a failing test still cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bgp_speaker.config import BgpConfig, parse_bgp_config
from bgp_speaker.kernel import NetlinkRouteSource
from bgp_speaker.speaker import BgpSpeaker
from lab.frr import FrrRouter, wait_until
from lab.netns import Netns, ProcRef, Sandbox, add_address, ip_netns_exec, run, set_sysctl

ROUTER_V4 = "172.16.13.1"
NODE_V4 = "172.16.13.11"
ROUTER_V6 = "fd00:13::1"
NODE_V6 = "fd00:13::11"
ROUTER_AS = 23000
NODE_AS = 64512
VENV_BIN = Path(sys.executable).parent


def frr_config(
    neighbors: Sequence[str] = (NODE_V4,),
    *,
    password: str | None = None,
    ipv6: bool = False,
    ttl_security: int | None = None,
    hostname: str = "router",
) -> str:
    """An integrated frr.conf for the router: eBGP to each neighbor, short timers, no policy needed."""
    lines = [
        "frr version 8.4",
        "frr defaults traditional",
        f"hostname {hostname}",
        "!",
        f"router bgp {ROUTER_AS}",
        f" bgp router-id {ROUTER_V4}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        " bgp log-neighbor-changes",
        " timers bgp 3 9",
    ]
    for n in neighbors:
        lines.append(f" neighbor {n} remote-as {NODE_AS}")
        lines.append(f" neighbor {n} timers connect 1")
        if password is not None:
            lines.append(f" neighbor {n} password {password}")
        if ttl_security is not None:
            lines.append(f" neighbor {n} ttl-security hops {ttl_security}")
    lines.append(" address-family ipv4 unicast")
    lines += [f"  neighbor {n} activate" for n in neighbors]
    lines.append(" exit-address-family")
    if ipv6:
        lines.append(" address-family ipv6 unicast")
        lines += [f"  neighbor {n} activate" for n in neighbors]
        lines.append(" exit-address-family")
    lines += ["exit", ""]
    return "\n".join(lines)


def speaker_config(
    runtime_dir: Path, *, peers: Sequence[Mapping[str, Any]] | None = None, **top: Any
) -> BgpConfig:
    """Our bgp section for the node, with test-friendly timers; ``top`` overrides top-level keys."""
    raw: dict[str, Any] = {
        "asn": NODE_AS,
        "nextHop": NODE_V4,
        "runtimeDir": str(runtime_dir),
        "reconcileInterval": 0,
        "announceWhen": "allocated",  # no Pod objects here: the speaker's own tests gate on routes only
        "peers": list(peers) if peers is not None else [{"address": ROUTER_V4, "asn": ROUTER_AS}],
    }
    raw.update(top)
    for p in raw["peers"]:
        p.setdefault("holdTime", 9)
        p.setdefault("gracefulRestart", 0)
    return parse_bgp_config(raw, source="test")


class RouteMonitor:
    """``ip -ts monitor route`` inside a namespace, recorded with our own receive times."""

    def __init__(self, sandbox: Sandbox, ns: Netns, *, family: str = "-4") -> None:
        self.lines: list[tuple[float, str]] = []
        self._ns, self._family = ns, family
        self._proc = sandbox.popen(
            ns, ["ip", family, "-ts", "monitor", "route"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self._ref = ProcRef.of(self._proc.pid)
        assert self._proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True)
        self._thread.start()
        self._subscribed(ns, family)

    def _subscribed(self, ns: Netns, family: str) -> None:
        """Return once ``ip monitor`` has subscribed: a canary route added now is seen (then removed),
        so a test asserting that a route was never deleted has watched for real."""
        try:
            self._canary(ns, family)
        except TimeoutError:
            self.stop()
            raise

    def caught_up(self) -> None:
        """Return once every route change made so far in the namespace is in ``lines``: a canary
        route added now is seen (netlink delivers in order), then removed."""
        self._canary(self._ns, self._family)

    def _canary(self, ns: Netns, family: str) -> None:
        canary = "2001:db8:ffff::fe" if family == "-6" else "203.0.113.254"
        seen = len(self.lines)
        run(ns, ["ip", family, "route", "add", "blackhole", canary])
        try:
            wait_until(
                lambda: any(canary in ln and "Deleted" not in ln for _, ln in self.lines[seen:]),
                timeout=10,
                interval=0.01,
                what=f"`ip monitor` in {ns.name} seeing the canary route {canary}",
            )
        finally:
            run(ns, ["ip", family, "route", "del", "blackhole", canary], check=False)

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.append((time.time(), raw.decode(errors="replace").rstrip()))

    def deleted(self, prefix: str) -> list[str]:
        host = prefix.removesuffix("/32").removesuffix("/128")
        return [ln for _, ln in self.lines if "Deleted" in ln and re.search(rf"\b{re.escape(host)}\b", ln)]

    def added_at(self, prefix: str) -> float | None:
        host = prefix.removesuffix("/32").removesuffix("/128")
        for t, ln in self.lines:
            if "Deleted" not in ln and re.search(rf"(^|\] ){re.escape(host)} ", ln):
                return t
        return None

    def stop(self) -> None:
        self._ref.signal(15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=2)
        self._thread.join(timeout=2)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


@dataclass
class BgpLab:
    sandbox: Sandbox
    router_ns: Netns
    node_ns: Netns
    work: Path
    router: FrrRouter | None = None
    speakers: list[BgpSpeaker] = field(default_factory=list)

    @property
    def runtime_dir(self) -> Path:
        return self.work / "rt"

    def start_frr(self, config: str | None = None) -> FrrRouter:
        self.router = FrrRouter(self.sandbox, self.router_ns, run_dir=self.work / "frr")
        self.router.start(config if config is not None else frr_config())
        return self.router

    def speaker(self, config: BgpConfig, **kwargs: Any) -> BgpSpeaker:
        kwargs.setdefault("cli", False)
        kwargs.setdefault("backoff", (0.2, 2.0))
        kwargs.setdefault("exabgp_command", self.exabgp_command(VENV_BIN / "exabgp"))
        sp = BgpSpeaker(config, route_source=NetlinkRouteSource(netns=self.node_ns.name), **kwargs)
        self.speakers.append(sp)
        return sp

    def exabgp_command(self, program: Path) -> list[str]:
        """``program server`` in the node's namespace (``program``: ExaBGP, or a wrapper of it)."""
        return ip_netns_exec(self.node_ns, [str(program), "server"])

    def add_host_route(self, ip: str) -> None:
        """What the CNI ptp plugin does on the node: a host route to the pod through a veth."""
        scope = [] if ":" in ip else ["scope", "host"]
        run(self.node_ns, ["ip", "route", "replace", ip, "dev", "pods", *scope])

    def del_host_route(self, ip: str) -> None:
        run(self.node_ns, ["ip", "route", "del", ip], check=False)

    def router_routes(self, family: str = "-4") -> dict[str, str]:
        """The router namespace's kernel routes learnt over BGP (any daemon): dst -> gateway."""
        res = run(None, ["ip", "-n", self.router_ns.name, "-j", family, "route", "show", "proto", "bgp"])
        res_all = json.loads(res.stdout or "[]")
        if not res_all:  # BIRD installs with proto bird, GoBGP does not install at all
            res = run(None, ["ip", "-n", self.router_ns.name, "-j", family, "route", "show", "proto", "bird"])
            res_all = json.loads(res.stdout or "[]")
        out: dict[str, str] = {}
        for r in res_all:
            dst = str(r.get("dst", ""))
            if "/" not in dst and dst != "default":
                dst += "/128" if ":" in dst else "/32"
            out[dst] = str(r.get("gateway", ""))
        return out

    def wait_router_routes(
        self,
        want: Callable[[dict[str, str]], bool],
        *,
        family: str = "-4",
        timeout: float = 15.0,
        what: str = "",
    ) -> dict[str, str]:
        return wait_until(
            lambda: r if want(r := self.router_routes(family)) else None,
            timeout=timeout,
            interval=0.05,
            what=what or "router kernel routes",
        )


@contextlib.contextmanager
def bgp_lab(*, ipv6: bool = False) -> Iterator[BgpLab]:
    """Build the two namespaces (no daemon yet); tear everything down afterwards."""
    with Sandbox() as sb:
        work = Path(f"/tmp/sbgp-{sb.token}-{secrets.token_hex(2)}")
        work.mkdir(mode=0o755)
        sb.add_path(work)
        router_ns = sb.netns("router")
        node_ns = sb.netns("node")
        sb.veth(router_ns, "r-node", node_ns, "eth0")
        add_address(router_ns, "r-node", f"{ROUTER_V4}/24")
        add_address(node_ns, "eth0", f"{NODE_V4}/24")
        if ipv6:
            run(router_ns, ["ip", "-6", "addr", "add", f"{ROUTER_V6}/64", "dev", "r-node", "nodad"])
            run(node_ns, ["ip", "-6", "addr", "add", f"{NODE_V6}/64", "dev", "eth0", "nodad"])
            set_sysctl(router_ns, "net.ipv6.conf.all.forwarding", 1)
        set_sysctl(router_ns, "net.ipv4.ip_forward", 1)
        run(node_ns, ["ip", "route", "add", "default", "via", ROUTER_V4])
        # the node's side of the pods: a veth whose routes stand in for the CNI's host routes
        run(node_ns, ["ip", "link", "add", "pods", "type", "veth", "peer", "name", "podpeer"])
        run(node_ns, ["ip", "link", "set", "pods", "up"])
        run(node_ns, ["ip", "link", "set", "podpeer", "up"])
        yield BgpLab(sandbox=sb, router_ns=router_ns, node_ns=node_ns, work=work)


async def stop_speakers(lab: BgpLab) -> None:
    """Stop every speaker, each even when another failed to stop; then raise the first failure, so
    a teardown that leaves something behind fails the test instead of passing quietly."""
    failures: list[BaseException] = []
    for sp in lab.speakers:
        try:
            await asyncio.wait_for(sp.stop(withdraw=False), 15)
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise RuntimeError(f"{len(failures)} speaker(s) failed to stop: {failures[0]!r}") from failures[0]


def start_bird(lab: BgpLab, config: str) -> tuple[Path, subprocess.Popen[bytes]]:
    """BIRD 2 in the router namespace, foreground, its own control socket; returns (socket, proc)."""
    d = lab.work / "bird"
    d.mkdir(exist_ok=True)
    conf, sock = d / "bird.conf", d / "bird.ctl"
    conf.write_text(config)
    with open(d / "bird.log", "wb") as logf:
        proc = lab.sandbox.popen(
            lab.router_ns,
            ["bird", "-f", "-c", str(conf), "-s", str(sock), "-P", str(d / "bird.pid")],
            stdout=logf,
        )
    wait_until(sock.exists, timeout=10, interval=0.05, what="bird control socket")
    return sock, proc


def birdc(sock: Path, *args: str) -> str:
    return subprocess.run(
        ["birdc", "-s", str(sock), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def start_gobgp(lab: BgpLab, config: str, *, api_port: int = 50061) -> subprocess.Popen[bytes]:
    d = lab.work / "gobgp"
    d.mkdir(exist_ok=True)
    conf = d / "gobgpd.toml"
    conf.write_text(config)
    argv = [
        "gobgpd",
        "-f",
        str(conf),
        "-t",
        "toml",
        "--api-hosts",
        f"127.0.0.1:{api_port}",
        "--log-level",
        "warn",
    ]
    with open(d / "gobgpd.log", "wb") as logf:
        proc = lab.sandbox.popen(lab.router_ns, argv, stdout=logf)
    wait_until(
        lambda: run(lab.router_ns, ["gobgp", "-p", str(api_port), "global"], check=False).returncode == 0,
        timeout=10,
        interval=0.1,
        what="gobgpd API",
    )
    return proc


def gobgp_rib(lab: BgpLab, *, api_port: int = 50061) -> dict[str, Any]:
    res = run(lab.router_ns, ["gobgp", "-p", str(api_port), "global", "rib", "-a", "ipv4", "-j"])
    data = json.loads(res.stdout or "{}")
    return data if isinstance(data, dict) else {}


def hosts(base: str, count: int, *, start: int = 0) -> list[str]:
    net = ipaddress.ip_network(base)
    return [str(net.network_address + start + i) for i in range(count)]


def require_root() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None
