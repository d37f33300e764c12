"""Network-namespace primitives for the lab and for tests: namespaces, veth pairs, addresses,
routes, sysctls, commands run inside a namespace, and a cleanup registry.

Everything this module makes carries the prefix ``sbgp-`` plus a short unique token
(``sbgp-3f9a-node1``), so parallel runs never collide and a user can see and sweep what a lab left.
Nothing is ever added to the root namespace: every netlink call goes to a namespace given by name.

``Sandbox`` is the registry: it creates namespaces and processes, remembers them (with each
process's start time, so a recycled PID is never killed), and ``close()`` undoes everything in
reverse order, also when a test failed half-way.  Use it as a context manager::

    with Sandbox() as sb:
        a, b = sb.netns("a"), sb.netns("b")
        sb.veth(a, "eth0", b, "eth0")
        add_address(a, "eth0", "10.0.0.1/24")
        proc = sb.popen(a, ["sleep", "60"])
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pyroute2 import IPRoute, netns

__all__ = [
    "NETNS_DIR",
    "NS_PREFIX",
    "Netns",
    "ProcRef",
    "Sandbox",
    "add_address",
    "add_route",
    "addresses",
    "delete_netns",
    "ip_netns_exec",
    "kill_procs",
    "link_names",
    "list_netns",
    "new_token",
    "pids_in",
    "run",
    "set_link",
    "set_sysctl",
    "sweep",
]

NS_PREFIX = "sbgp-"
NETNS_DIR = Path("/var/run/netns")


@dataclass(frozen=True)
class Netns:
    """A named network namespace (its bind mount lives at /var/run/netns/<name>)."""

    name: str

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ProcRef:
    """A process identified by PID *and* kernel start time (clock ticks since boot): a PID that the
    kernel recycled for another program does not match, so it is never signalled by mistake."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcRef:
        """The process now running as ``pid``.  Raises ProcessLookupError if there is none."""
        start = _start_time(pid)
        if start is None:
            raise ProcessLookupError(pid)
        return cls(pid, start)

    def alive(self) -> bool:
        """True while the same process exists and is not a zombie."""
        stat = _read_stat(self.pid)
        return stat is not None and stat[1] != "Z" and stat[2] == self.start_time

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the process is still the same one; False when it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True


def _read_stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, starttime) from /proc/<pid>/stat, or None when the PID does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm_end = raw.rindex(")")
    fields = raw[comm_end + 2 :].split()
    # after the comm: state is field 3 of the stat line, starttime field 22.
    return raw[raw.index("(") + 1 : comm_end], fields[0], int(fields[19])


def _start_time(pid: int) -> int | None:
    stat = _read_stat(pid)
    return None if stat is None else stat[2]


def new_token(nbytes: int = 2) -> str:
    """A short random hex token that no existing ``sbgp-`` namespace uses yet."""
    taken = set(list_netns(NS_PREFIX))
    while True:
        token = secrets.token_hex(nbytes)
        if not any(name.startswith(f"{NS_PREFIX}{token}-") for name in taken):
            return token


def list_netns(prefix: str = NS_PREFIX) -> list[str]:
    """Names of the named namespaces starting with ``prefix``, sorted."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def create_netns(name: str) -> Netns:
    """Create a namespace (``sbgp-`` names only) and bring its loopback up."""
    if not name.startswith(NS_PREFIX):
        raise ValueError(f"namespace {name!r}: lab namespaces must start with {NS_PREFIX!r}")
    # `ip netns add` + `ip -n NAME link set lo up` cost ~10 ms; pyroute2's netns.create and an
    # IPRoute inside the new namespace each fork a helper (~30 ms together), which adds up when a
    # lab starts hundreds of pods
    if Path(NETNS_DIR / name).exists():
        raise FileExistsError(f"namespace {name!r} already exists")
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise OSError(f"namespace {name!r}: ip netns add: {res.stderr.strip()}")
    ns = Netns(name)
    try:
        run(None, ["ip", "-n", name, "link", "set", "lo", "up"])
    except BaseException:
        delete_netns(ns)  # nobody holds it yet: a namespace that failed to come up must not leak
        raise
    return ns


def pids_in(ns: Netns | str) -> list[int]:
    """PIDs of the processes whose network namespace is ``ns`` (like ``ip netns pids``)."""
    name = str(ns)
    res = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    return [int(tok) for tok in res.stdout.split() if tok.isdigit()]


def delete_netns(ns: Netns | str) -> None:
    """Remove a namespace's name.  Processes still inside must be killed first (see ``sweep``)."""
    name = str(ns)
    if not name.startswith(NS_PREFIX):
        raise ValueError(f"namespace {name!r}: refusing to delete a namespace without {NS_PREFIX!r}")
    with contextlib.suppress(FileNotFoundError, OSError):
        netns.remove(name)


def kill_procs(procs: Sequence[ProcRef], *, grace: float = 3.0) -> None:
    """SIGTERM each process, wait up to ``grace`` seconds, then SIGKILL the ones still alive."""
    live = [p for p in procs if p.signal(signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        _reap_children()
        live = [p for p in live if p.alive()]
        if live:
            time.sleep(0.05)
    for p in live:
        p.signal(signal.SIGKILL)
    end = time.monotonic() + 2.0
    while any(p.alive() for p in live) and time.monotonic() < end:
        _reap_children()
        time.sleep(0.02)


def _reap_children() -> None:
    """Collect exited children of this process so they do not linger as zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sweep(prefix: str, *, grace: float = 3.0) -> list[str]:
    """Kill every process inside the namespaces named ``prefix``* and delete them; returns the names.

    Only for prefixes of namespaces this lab made (``sbgp-<token>-``): whatever runs inside such a
    namespace was started by the lab that owns the token."""
    if not prefix.startswith(NS_PREFIX) or len(prefix) <= len(NS_PREFIX):
        raise ValueError(f"sweep prefix {prefix!r} must be {NS_PREFIX!r} plus a token")
    names = list_netns(prefix)
    procs = [ref for name in names for pid in pids_in(name) if (ref := _ref_or_none(pid)) is not None]
    kill_procs(procs, grace=grace)
    for name in names:
        delete_netns(name)
    return names


def _ref_or_none(pid: int) -> ProcRef | None:
    try:
        return ProcRef.of(pid)
    except ProcessLookupError:
        return None


# ---- netlink inside one namespace -------------------------------------------------------------


@contextlib.contextmanager
def _ipr(ns: Netns) -> Iterator[Any]:
    with IPRoute(netns=ns.name) as ipr:
        yield ipr


def _index(ipr: Any, ns: Netns, dev: str) -> int:
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise LookupError(f"namespace {ns}: no interface {dev!r}")
    return int(found[0])


def set_link(ns: Netns, dev: str, *, up: bool, master: str | None = None, mtu: int | None = None) -> None:
    """Bring ``dev`` up or down; optionally enslave it to bridge ``master`` and set its MTU."""
    with _ipr(ns) as ipr:
        idx = _index(ipr, ns, dev)
        kwargs: dict[str, Any] = {"state": "up" if up else "down"}
        if master is not None:
            kwargs["master"] = _index(ipr, ns, master)
        if mtu is not None:
            kwargs["mtu"] = mtu
        ipr.link("set", index=idx, **kwargs)


def add_bridge(ns: Netns, name: str) -> None:
    """Create a Linux bridge inside ``ns`` and bring it up."""
    with _ipr(ns) as ipr:
        ipr.link("add", ifname=name, kind="bridge")
    set_link(ns, name, up=True)


def add_address(ns: Netns, dev: str, cidr: str) -> None:
    """Add ``cidr`` (``"172.16.13.1/24"``, IPv4 or IPv6) to ``dev`` inside ``ns``."""
    address, _, plen = cidr.partition("/")
    family_len = 128 if ":" in address else 32
    with _ipr(ns) as ipr:
        ipr.addr("add", index=_index(ipr, ns, dev), address=address, prefixlen=int(plen or family_len))


def addresses(ns: Netns, dev: str | None = None) -> list[str]:
    """Addresses (``"ip/len"``) inside ``ns``, of one device or of all."""
    with _ipr(ns) as ipr:
        kwargs: dict[str, Any] = {}
        if dev is not None:
            kwargs["index"] = _index(ipr, ns, dev)
        return [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(**kwargs)]


def link_names(ns: Netns) -> list[str]:
    with _ipr(ns) as ipr:
        return [str(link.get("IFLA_IFNAME")) for link in ipr.get_links()]


def add_route(ns: Netns, dst: str, *, via: str | None = None, dev: str | None = None) -> None:
    """Add (or replace) a route inside ``ns``; ``dst`` may be ``"default"``."""
    kwargs: dict[str, Any] = {"dst": "0.0.0.0/0" if dst == "default" else dst}
    if via is not None:
        kwargs["gateway"] = via
    with _ipr(ns) as ipr:
        if dev is not None:
            kwargs["oif"] = _index(ipr, ns, dev)
        ipr.route("replace", **kwargs)


def ip_netns_exec(ns: Netns | None, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside ``ns`` (unchanged for ``None`` = this namespace)."""
    return list(argv) if ns is None else ["ip", "netns", "exec", ns.name, *argv]


def set_sysctl(ns: Netns, key: str, value: str | int) -> None:
    """Set a per-namespace sysctl such as ``net.ipv4.ip_forward`` inside ``ns``."""
    run(ns, ["sysctl", "-q", "-w", f"{key}={value}"])


def run(
    ns: Netns | None,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion inside ``ns`` and capture its output (text).

    With ``check`` a non-zero exit raises ``subprocess.CalledProcessError`` whose message includes the
    command's stderr."""
    res = subprocess.run(
        ip_netns_exec(ns, argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=None if env is None else dict(env),
        cwd=cwd,
        check=False,
    )
    if check and res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
    return res


# ---- the registry ------------------------------------------------------------------------------


class Sandbox:
    """Creates namespaces, veth pairs and processes under one token and undoes all of it on close().

    Cleanup order on close: callbacks registered with ``defer`` (last first), then the processes this
    sandbox started (SIGTERM, then SIGKILL), then anything still running inside its namespaces, then
    the namespaces, then registered paths.  Each step keeps going when one item fails."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or new_token()
        self.prefix = f"{NS_PREFIX}{self.token}-"
        self._namespaces: list[Netns] = []
        self._procs: list[ProcRef] = []
        self._popens: list[subprocess.Popen[Any]] = []
        self._paths: list[Path] = []
        self._deferred: list[Callable[[], object]] = []
        self.closed = False

    # persistence: a lab built by one command is torn down by another
    def snapshot(self) -> dict[str, Any]:
        """What ``restore`` needs to undo this sandbox from another process (JSON-ready)."""
        return {
            "token": self.token,
            "namespaces": [ns.name for ns in self._namespaces],
            "procs": [[p.pid, p.start_time] for p in self._procs],
            "paths": [str(p) for p in self._paths],
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> Sandbox:
        """A sandbox that owns what ``snapshot`` listed (processes are matched by start time)."""
        sb = cls(token=str(data["token"]))
        sb._namespaces = [Netns(str(n)) for n in data.get("namespaces", [])]
        sb._procs = [ProcRef(int(pid), int(start)) for pid, start in data.get("procs", [])]
        sb._paths = [Path(str(p)) for p in data.get("paths", [])]
        return sb

    # context manager
    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # naming
    def name(self, short: str) -> str:
        """The full namespace-style name for ``short``: ``sbgp-<token>-<short>``."""
        return f"{self.prefix}{short}"

    @property
    def namespaces(self) -> list[Netns]:
        return list(self._namespaces)

    @property
    def procs(self) -> list[ProcRef]:
        return list(self._procs)

    # making things
    def netns(self, short: str) -> Netns:
        """Create namespace ``sbgp-<token>-<short>`` with loopback up, and remember it."""
        ns = create_netns(self.name(short))
        self._namespaces.append(ns)
        return ns

    def adopt_netns(self, ns: Netns) -> None:
        """Take over cleanup of a namespace made elsewhere (it must carry this sandbox's prefix)."""
        if not ns.name.startswith(self.prefix):
            raise ValueError(f"namespace {ns}: not under this sandbox's prefix {self.prefix!r}")
        self._namespaces.append(ns)

    def forget_netns(self, ns: Netns) -> None:
        """Stop tracking a namespace that the caller deleted itself."""
        self._namespaces = [n for n in self._namespaces if n != ns]

    def remove_netns(self, ns: Netns, *, grace: float = 2.0) -> None:
        """Kill what runs inside ``ns`` (it is one of ours) and delete it now."""
        procs = [r for pid in pids_in(ns) if (r := _ref_or_none(pid)) is not None]
        kill_procs(procs, grace=grace)
        delete_netns(ns)
        self.forget_netns(ns)

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str, *, mtu: int | None = None) -> None:
        """A veth pair with end ``a_if`` in ``a`` and ``b_if`` in ``b``, both up.  The pair is made
        inside ``a`` and one end is moved, so nothing ever appears in the root namespace; it goes away
        with either namespace."""
        with _ipr(a) as ipr:
            peer: dict[str, Any] = {"ifname": b_if, "net_ns_fd": b.name}
            ipr.link("add", ifname=a_if, kind="veth", peer=peer)
        set_link(a, a_if, up=True, mtu=mtu)
        set_link(b, b_if, up=True, mtu=mtu)

    def popen(
        self,
        ns: Netns | None,
        argv: Sequence[str],
        *,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.STDOUT,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside ``ns`` and register it for cleanup.  ``ip netns exec``
        exec()s the program, so the returned PID is the program's own."""
        proc = subprocess.Popen(
            ip_netns_exec(ns, argv),
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        self._popens.append(proc)
        ref = _ref_or_none(proc.pid)
        if ref is not None:
            self._procs.append(ref)
        return proc

    def add_proc(self, ref: ProcRef) -> None:
        """Register a process started another way (a daemon that forked, read from its pid file)."""
        self._procs.append(ref)

    def stop_proc(self, ref: ProcRef, *, grace: float = 3.0) -> None:
        """Stop one registered process now (TERM, then KILL) and forget it."""
        kill_procs([ref], grace=grace)
        self._procs = [p for p in self._procs if p != ref]
        self._reap_popens()

    def add_path(self, path: str | Path) -> Path:
        """Remove this file or directory tree on close."""
        p = Path(path)
        self._paths.append(p)
        return p

    def defer(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` first thing on close (last registered, first called)."""
        self._deferred.append(fn)

    def _reap_popens(self) -> None:
        for proc in self._popens:
            proc.poll()
        self._popens = [p for p in self._popens if p.returncode is None]

    def close(self) -> None:
        """Undo everything (idempotent).  Errors of single steps are collected and re-raised at the
        end as one RuntimeError, after every other step ran."""
        if self.closed:
            return
        self.closed = True
        errors: list[str] = []
        for fn in reversed(self._deferred):
            try:
                fn()
            except Exception as exc:  # keep cleaning up; report at the end
                errors.append(f"deferred {getattr(fn, '__name__', fn)}: {exc}")
        kill_procs(list(reversed(self._procs)))
        for proc in self._popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
        for ns in reversed(self._namespaces):
            try:
                procs = [r for pid in pids_in(ns) if (r := _ref_or_none(pid)) is not None]
                kill_procs(procs)
                delete_netns(ns)
            except Exception as exc:
                errors.append(f"namespace {ns}: {exc}")
        for path in reversed(self._paths):
            _remove_path(path)
        if errors:
            raise RuntimeError("sandbox cleanup: " + "; ".join(errors))


def _remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():  # fifo, socket
        path.unlink(missing_ok=True)
