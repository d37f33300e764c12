"""FRR (zebra + bgpd) inside one network namespace, with its own pathspace.

Each instance runs with ``-N <pathspace>``, so its vty sockets, pid files and the zebra API socket live
in ``/var/run/frr/<pathspace>/`` and ``vtysh -N <pathspace>`` reaches it from any namespace.  The
daemons start with an empty config file and the integrated config is pushed with ``vtysh -f`` (what
``vtysh -b`` does at boot).  Files the daemons touch (run dir, logs, configs) are owned by ``frr:frr``,
configs mode 0640.  See /work/shared/reference/lab-notes.md §4.1 and §6 for the why of each step.

Typical use::

    with Sandbox() as sb:
        ns = sb.netns("router")
        router = FrrRouter(sb, ns, run_dir=tmp / "router")
        router.start(config_text)
        router.wait_established({"172.16.13.11"}, timeout=20)
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lab.netns import Netns, ProcRef, Sandbox, ip_netns_exec, kill_procs

__all__ = ["FRR_SBIN", "FRR_STATE_ROOT", "BgpPath", "FrrError", "FrrRouter", "wait_until"]

FRR_SBIN = Path("/usr/lib/frr")
FRR_STATE_ROOT = Path("/var/run/frr")
VTYSH = "vtysh"
DAEMONS = ("zebra", "bgpd")

T = TypeVar("T")


class FrrError(RuntimeError):
    """A daemon did not start, or vtysh rejected a command."""


@dataclass(frozen=True)
class BgpPath:
    """The best path the router holds for one prefix."""

    prefix: str
    nexthop: str
    as_path: str
    stale: bool


def wait_until(probe: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str = "") -> T:
    """Call ``probe`` until it returns something other than None/False; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or 'condition'}")
        time.sleep(interval)


def _frr_ids() -> tuple[int, int]:
    ent = pwd.getpwnam("frr")
    return ent.pw_uid, ent.pw_gid


def _write_frr_file(path: Path, text: str) -> None:
    uid, gid = _frr_ids()
    path.write_text(text)
    os.chown(path, uid, gid)
    path.chmod(0o640)


class FrrRouter:
    """One FRR instance (zebra then bgpd) in ``ns``; every process and directory it makes is
    registered with ``sandbox`` so a failing test still cleans it up."""

    def __init__(
        self,
        sandbox: Sandbox,
        ns: Netns,
        *,
        run_dir: Path,
        pathspace: str | None = None,
        daemons: Sequence[str] = DAEMONS,
    ) -> None:
        self.sandbox = sandbox
        self.ns = ns
        self.pathspace = pathspace or ns.name
        self.state_dir = FRR_STATE_ROOT / self.pathspace
        self.run_dir = run_dir
        self.daemons = tuple(daemons)
        self.log_file = run_dir / "daemons.log"
        self.config_file = run_dir / "frr.conf"
        self._procs: dict[str, ProcRef] = {}

    # ---- life cycle -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the pathspace dir and run dir, owned by frr (registered for removal)."""
        uid, gid = _frr_ids()
        FRR_STATE_ROOT.mkdir(parents=True, exist_ok=True)
        os.chown(FRR_STATE_ROOT, uid, gid)
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)  # stale sockets from a crashed run of the same name
        self.state_dir.mkdir()
        os.chown(self.state_dir, uid, gid)
        self.sandbox.add_path(self.state_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.run_dir, uid, gid)
        # the daemons read their startup file after dropping to the frr user, who may not be able to
        # enter the run dir's parents (pytest's are 0700): it lives in the pathspace dir, frr's own
        _write_frr_file(self.state_dir / "empty.conf", "")

    def start(self, config: str | None = None, *, timeout: float = 15.0) -> None:
        """Prepare, start every daemon in order, then push ``config`` (integrated frr.conf text)."""
        self.prepare()
        for daemon in self.daemons:
            self.start_daemon(daemon, timeout=timeout)
        if config is not None:
            self.push_config(config)

    def start_daemon(self, daemon: str, *, timeout: float = 15.0) -> ProcRef:
        """Start one daemon (``-d -N pathspace``), wait for its vty socket, register its PID."""
        if daemon not in self.daemons:
            raise ValueError(f"FRR daemon {daemon!r} is not one of {self.daemons}")
        pid_file = self.state_dir / f"{daemon}.pid"
        vty = self.state_dir / f"{daemon}.vty"
        for stale in (pid_file, vty):
            stale.unlink(missing_ok=True)
        argv = [
            str(FRR_SBIN / daemon),
            "-d",
            "-N",
            self.pathspace,
            "-f",
            str(self.state_dir / "empty.conf"),
            "-A",
            "127.0.0.1",
            "--log",
            f"file:{self.log_file}",
            "-i",
            str(pid_file),
        ]
        res = subprocess.run(ip_netns_exec(self.ns, argv), capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise FrrError(f"FRR {daemon} in {self.ns}: exit {res.returncode}: {res.stderr.strip()}")
        wait_until(
            lambda: vty.exists() and pid_file.exists() and pid_file.read_text().strip().isdigit(),
            timeout=timeout,
            interval=0.05,
            what=f"FRR {daemon} vty socket {vty}",
        )
        if daemon == "zebra":
            api = self.state_dir / "zserv.api"
            wait_until(api.exists, timeout=timeout, interval=0.05, what=f"zebra API socket {api}")
        ref = ProcRef.of(int(pid_file.read_text().strip()))
        self._procs[daemon] = ref
        self.sandbox.add_proc(ref)
        return ref

    def stop_daemon(self, daemon: str, *, sig: int = signal.SIGTERM) -> None:
        """Stop one daemon: SIGKILL is immediate (a crash), anything else is TERM-then-KILL."""
        ref = self._procs.pop(daemon, None)
        if ref is None:
            return
        if sig == signal.SIGKILL:
            ref.signal(signal.SIGKILL)
            wait_until(lambda: not ref.alive(), timeout=5.0, interval=0.02, what=f"{daemon} to die")
        else:
            kill_procs([ref])

    def stop(self) -> None:
        """Stop bgpd then zebra and remove the pathspace dir (the sandbox would do it too)."""
        for daemon in reversed(self.daemons):
            self.stop_daemon(daemon)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def restart(self, config: str | None = None, *, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop every daemon (with ``sig``), start them again and push ``config`` (or the last one)."""
        text = config if config is not None else self.config_file.read_text()
        for daemon in reversed(self.daemons):
            self.stop_daemon(daemon, sig=sig)
        for daemon in self.daemons:
            self.start_daemon(daemon, timeout=timeout)
        self.push_config(text)

    def pids(self) -> dict[str, ProcRef]:
        return dict(self._procs)

    def reattach(self) -> None:
        """Pick up daemons started by an earlier process (``python -m lab up``) from their pid files."""
        for daemon in self.daemons:
            pid_file = self.state_dir / f"{daemon}.pid"
            try:
                self._procs[daemon] = ProcRef.of(int(pid_file.read_text().strip()))
            except (OSError, ValueError, ProcessLookupError):
                self._procs.pop(daemon, None)

    # ---- vtysh ------------------------------------------------------------------------------

    def push_config(self, text: str) -> None:
        """Write ``text`` as the run dir's frr.conf (frr:frr 0640) and load it with ``vtysh -f``."""
        _write_frr_file(self.config_file, text)
        res = subprocess.run(
            [VTYSH, "-N", self.pathspace, "-f", str(self.config_file)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if _is_vtysh_error(ln)]
        if res.returncode != 0 or errors:
            raise FrrError(f"FRR {self.pathspace}: config {self.config_file} rejected: {'; '.join(errors)}")

    def vtysh(self, *commands: str, check: bool = True, timeout: float = 15.0) -> str:
        """Run vtysh commands (each one a ``-c``) against this instance; returns stdout."""
        argv = [VTYSH, "-N", self.pathspace]
        for cmd in commands:
            argv += ["-c", cmd]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            msg = (res.stdout + res.stderr).strip().splitlines()
            raise FrrError(
                f"FRR {self.pathspace}: vtysh {' / '.join(commands)}: {msg[-1] if msg else res.returncode}"
            )
        return res.stdout

    def vtysh_json(self, command: str) -> Any:
        """Run one ``... json`` show command and parse its output."""
        if not command.rstrip().endswith("json"):
            command = f"{command} json"
        out = self.vtysh(command)
        try:
            return json.loads(out) if out.strip() else {}
        except json.JSONDecodeError as exc:
            raise FrrError(f"FRR {self.pathspace}: {command}: not JSON: {out[:200]!r}") from exc

    # ---- BGP views --------------------------------------------------------------------------

    def bgp_peers(self) -> dict[str, dict[str, Any]]:
        """``show bgp ipv4 unicast summary json`` peers: address -> {state, pfxRcd, ...}."""
        data = self.vtysh_json("show bgp ipv4 unicast summary json")
        peers = data.get("peers", {}) if isinstance(data, dict) else {}
        return {str(k): dict(v) for k, v in peers.items()}

    def established(self) -> set[str]:
        return {addr for addr, p in self.bgp_peers().items() if p.get("state") == "Established"}

    def wait_established(self, peers: Collection[str], *, timeout: float = 30.0) -> None:
        want = set(peers)
        wait_until(
            lambda: want <= self.established(),
            timeout=timeout,
            interval=0.3,
            what=f"BGP sessions {sorted(want)} Established on {self.pathspace}",
        )

    def bgp_routes(self, families: Sequence[str] = ("ipv4", "ipv6")) -> dict[str, BgpPath]:
        """The best path per prefix of ``show bgp <family> unicast json``, every family together
        (the lab is dual-stack: IPv6 pod routes come over the same sessions)."""
        routes: dict[str, BgpPath] = {}
        for family in families:
            data = self.vtysh_json(f"show bgp {family} unicast json")
            for prefix, paths in (data.get("routes") or {}).items():
                for path in paths:
                    if not path.get("bestpath"):
                        continue
                    hops = path.get("nexthops") or [{}]
                    hop = next((h for h in hops if h.get("scope", "global") == "global"), hops[0])
                    routes[prefix] = BgpPath(
                        prefix=prefix,
                        nexthop=str(hop.get("ip", "")),
                        as_path=str(path.get("path", "")),
                        stale=bool(path.get("stale", False)),
                    )
        return routes

    def kernel_routes(self, proto: str = "bgp", families: Sequence[int] = (4, 6)) -> dict[str, str]:
        """Kernel FIB routes of ``proto`` in the router's namespace: destination (with its prefix
        length) -> gateway, IPv4 and IPv6."""
        out: dict[str, str] = {}
        for family in families:
            res = subprocess.run(
                ["ip", "-n", self.ns.name, "-j", f"-{family}", "route", "show", "proto", proto],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            for r in json.loads(res.stdout or "[]"):
                dst = str(r.get("dst", ""))
                if "/" not in dst and dst != "default":
                    dst += "/128" if family == 6 else "/32"
                out[dst] = str(r.get("gateway", ""))
        return out


def _is_vtysh_error(line: str) -> bool:
    # vtysh -N complains about a missing /etc/frr/<pathspace>/vtysh.conf: harmless (lab-notes §6.5).
    if "vtysh.conf" in line:
        return False
    return line.startswith("%") or "Unknown command" in line or ("line " in line and "Error" in line)
