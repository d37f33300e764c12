#!/usr/bin/env -S python3 -I -S
"""``hostroute``: the lab's CNI main plugin, wiring each pod as Calico's plugin does.

A veth pair per pod: ``eth0`` in the pod, ``cali<hash>`` on the node (``cali`` + 11 hex digits of the
SHA-1 of ``<namespace>.<pod>``, Calico's naming).  The pod gets its addresses as /32 and /128 and
routes everything through a link-local gateway: ``169.254.1.1 dev eth0 scope link`` plus ``default
via 169.254.1.1``, which the node answers by proxy ARP on the veth (``proxy_arp=1``, ``proxy_delay=0``),
and ``default via fe80::ecee:eeff:feee:eeee`` for IPv6, the link-local address of the node's end (its
MAC is ee:ee:ee:ee:ee:ee, as Calico sets it; DAD is off on both ends so it answers at once).  The
node gets one host route per address, ``<pod-ip> dev cali<hash> scope link``, added LAST, once the
pod's side is configured: that per-pod route is what the agent's ``requireHostRoute`` waits for
before it announces the address.  No L2 is shared between pods, so pods of any number of subnets and
of both families share a node, and a re-used address meets a new veth, never a stale neighbour entry.

Why not the reference ``ptp``: it needs a gateway in the IPAM result (without one it fails with
``failed to add IP addr (IP nil) to veth``) and Spiderpool pools usually have none.  Filling in
169.254.1.1 from an IPAM shim is not enough either: ptp installs the result's routes (the pod's
default route) before the route that makes an off-subnet gateway reachable, so ``default via
169.254.1.1`` fails with "network is unreachable", and a pod without a default route cannot answer
the client.  This plugin is the Calico behaviour the lab needs and nothing more.

IPAM is delegated the standard way: the ``ipam.type`` plugin from ``CNI_PATH`` gets the same
configuration and environment.  Configuration::

    {"type": "hostroute", "mtu": 1500, "ipam": {"type": "spiderpool", ...}}

Commands ADD, DEL, CHECK, VERSION (GC and STATUS go to the IPAM plugin).  Standard library only, no
project imports, and a handful of ``ip -batch`` calls: the node installs this one file as a plugin
binary, and it runs twice per pod (ADD, DEL), so start-up is most of its cost: it imports only C
modules and ``ctypes`` (``json``, ``subprocess``, ``dataclasses`` and ``typing`` would triple the
interpreter's own start-up, ~30 ms of CPU per call), reads and writes JSON with the ``_json``
accelerator and starts programs with ``posix_spawn``.
"""

from __future__ import annotations

import _json
import ctypes
import os
import sys

try:
    from _sha1 import sha1  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - a CPython built without its own hashes
    from hashlib import sha1

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

__all__ = [
    "HOST_MAC",
    "IPV4_GATEWAY",
    "IPV6_GATEWAY",
    "Address",
    "PluginError",
    "container_mac",
    "host_commands",
    "host_veth_name",
    "main",
    "pod_commands",
    "render_result",
]

IPV4_GATEWAY = "169.254.1.1"
HOST_MAC = "ee:ee:ee:ee:ee:ee"
IPV6_GATEWAY = "fe80::ecee:eeff:feee:eeee"  # the EUI-64 link-local address of HOST_MAC
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CLONE_NEWNET = 0x40000000

CODE_INCOMPATIBLE_VERSION = 1
CODE_INVALID_ENV = 4
CODE_IO_FAILURE = 5
CODE_DECODE = 6
CODE_INVALID_CONFIG = 7
CODE_INTERNAL = 999


class PluginError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


class Address:
    """A pod address (without prefix length) and its family."""

    __slots__ = ("ip", "v6")

    def __init__(self, ip: str, v6: bool) -> None:
        self.ip = ip
        self.v6 = v6

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Address) and (self.ip, self.v6) == (other.ip, other.v6)

    def __hash__(self) -> int:
        return hash((self.ip, self.v6))

    def __repr__(self) -> str:
        return f"Address({self.ip!r}, {self.v6!r})"

    @property
    def host_prefix(self) -> str:
        return f"{self.ip}/{128 if self.v6 else 32}"


class JSONError(ValueError):
    pass


_MAKE_SCANNER: Any = _json.make_scanner  # typeshed types it for json.JSONDecoder; any such object works


class _ScanContext:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}  # noqa: RUF012 - the C scanner keeps its own

    @staticmethod
    def parse_constant(name: str) -> object:
        raise JSONError(f"{name} is not valid JSON")


def json_loads(text: str) -> Any:
    """``json.loads`` through the C scanner; JSONError on bad input."""
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _MAKE_SCANNER(_ScanContext())(text, start)
    except StopIteration as stop:
        raise JSONError(f"expecting a JSON value at offset {stop.value}") from None
    except SystemError:  # a syntax error: its class lives in json.decoder, which is not loaded
        raise JSONError("invalid JSON") from None
    if text[end:].strip(" \t\n\r"):
        raise JSONError(f"extra data after the JSON value at offset {end}")
    return value


def json_dumps(value: object) -> str:
    def refuse(obj: object) -> object:
        raise TypeError(f"{type(obj).__name__} is not JSON serializable")

    encode = _json.make_encoder(
        {}, refuse, _json.encode_basestring_ascii, None, ": ", ", ", False, False, False
    )
    return "".join(encode(value, 0))


# ---- pure parts ------------------------------------------------------------------------------


def parse_cni_args(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def host_veth_name(cni_args: Mapping[str, str], container_id: str) -> str:
    """``cali`` + 11 hex digits, from ``<namespace>.<pod>`` as Calico names it (the container ID
    when the runtime passed no pod name)."""
    ns, pod = cni_args.get("K8S_POD_NAMESPACE"), cni_args.get("K8S_POD_NAME")
    key = f"{ns}.{pod}" if ns and pod else container_id
    return "cali" + str(sha1(key.encode()).hexdigest())[:11]


def container_mac(container_id: str) -> str:
    """A stable, locally administered unicast MAC for the pod's eth0."""
    digest = sha1(container_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, 0x58, *digest[:4]))


def addresses(ipam_result: Mapping[str, Any]) -> list[Address]:
    out: list[Address] = []
    for i, entry in enumerate(ipam_result.get("ips") or []):
        addr = str(entry.get("address", "")) if isinstance(entry, dict) else ""
        ip = addr.partition("/")[0]
        if not ip:
            raise PluginError(CODE_DECODE, f"IPAM result: ips[{i}].address missing")
        out.append(Address(ip, ":" in ip))
    if not out:
        raise PluginError(CODE_DECODE, "IPAM result: no IP address")
    return out


def _extra_routes(ipam_result: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """The IPAM result's routes other than default routes (those the plugin sets itself)."""
    routes: list[tuple[str, bool]] = []
    for r in ipam_result.get("routes") or []:
        dst = str(r.get("dst", "")) if isinstance(r, dict) else ""
        if dst and dst not in ("0.0.0.0/0", "::/0"):
            routes.append((dst, ":" in dst))
    return routes


def pod_commands(
    ifname: str, addrs: Sequence[Address], extra_routes: Sequence[tuple[str, bool]] = ()
) -> list[str]:
    """``ip -batch`` lines for the pod's side (run inside the pod's namespace)."""
    lines = [f"link set {ifname} up"]
    families = {a.v6 for a in addrs}
    for a in addrs:
        lines.append(f"addr add {a.host_prefix} dev {ifname}" + (" nodad" if a.v6 else ""))
    if False in families:
        lines.append(f"route add {IPV4_GATEWAY} dev {ifname} scope link")
        lines.append(f"route add 0.0.0.0/0 via {IPV4_GATEWAY} dev {ifname}")
    if True in families:
        lines.append(f"route add ::/0 via {IPV6_GATEWAY} dev {ifname}")
    for dst, v6 in extra_routes:
        if v6 in families:
            lines.append(f"route add {dst} via {IPV6_GATEWAY if v6 else IPV4_GATEWAY} dev {ifname}")
    return lines


def host_commands(host: str, addrs: Sequence[Address]) -> list[str]:
    """``ip -batch`` lines for the node's side, run once the pod's side is ready: the host routes
    appear last, so an address is announced only when the pod can take its traffic."""
    return [f"link set {host} up"] + [f"route add {a.host_prefix} dev {host} scope link" for a in addrs]


def host_sysctls(host: str, addrs: Sequence[Address]) -> list[tuple[str, str]]:
    """(path under /proc/sys, value) for the node: forwarding, proxy ARP for 169.254.1.1 without
    delay, and no DAD on the veth so its link-local address answers at once."""
    out = [("net/ipv4/ip_forward", "1")]
    if any(not a.v6 for a in addrs):
        out += [(f"net/ipv4/conf/{host}/proxy_arp", "1"), (f"net/ipv4/neigh/{host}/proxy_delay", "0")]
    if any(a.v6 for a in addrs):
        out += [("net/ipv6/conf/all/forwarding", "1"), (f"net/ipv6/conf/{host}/accept_dad", "0")]
    return out


def render_result(
    version: str,
    host: str,
    ifname: str,
    mac: str,
    netns: str,
    addrs: Sequence[Address],
    ipam_result: Mapping[str, Any],
) -> dict[str, Any]:
    legacy = version.startswith("0.")
    ips: list[dict[str, Any]] = []
    for a in addrs:
        entry: dict[str, Any] = {"version": "6" if a.v6 else "4"} if legacy else {}
        entry.update(
            {"address": a.host_prefix, "gateway": IPV6_GATEWAY if a.v6 else IPV4_GATEWAY, "interface": 1}
        )
        ips.append(entry)
    routes = [{"dst": "::/0" if v6 else "0.0.0.0/0"} for v6 in sorted({a.v6 for a in addrs})]
    routes += [{"dst": dst} for dst, _ in _extra_routes(ipam_result)]
    result: dict[str, Any] = {
        "cniVersion": version,
        "interfaces": [{"name": host, "mac": HOST_MAC}, {"name": ifname, "mac": mac, "sandbox": netns}],
        "ips": ips,
        "routes": routes,
    }
    if ipam_result.get("dns"):
        result["dns"] = ipam_result["dns"]
    return result


# ---- I/O -------------------------------------------------------------------------------------


def _spawn(
    argv: Sequence[str], data: bytes, env: Mapping[str, str] | None, capture: int
) -> tuple[int, bytes]:
    """Run ``argv`` with ``data`` on stdin; returns (exit status, what it wrote to fd ``capture``,
    1 or 2).  The other output goes to ours.  Looked up on PATH like ``subprocess`` does."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    actions = [
        (os.POSIX_SPAWN_DUP2, r_in, 0),
        (os.POSIX_SPAWN_DUP2, w_out, capture),
        (os.POSIX_SPAWN_CLOSE, w_in),
        (os.POSIX_SPAWN_CLOSE, r_out),
    ]
    try:
        pid = os.posix_spawnp(
            argv[0], list(argv), dict(os.environ if env is None else env), file_actions=actions
        )
    except OSError as exc:
        for fd in (r_in, w_in, r_out, w_out):
            os.close(fd)
        raise PluginError(CODE_INTERNAL, f"{argv[0]}: {exc.strerror}") from None
    os.close(r_in)
    os.close(w_out)
    try:  # noqa: SIM105 - contextlib would cost an import
        os.write(w_in, data)  # small (a network configuration, a few ip lines): fits the pipe
    except BrokenPipeError:
        pass
    os.close(w_in)
    chunks: list[bytes] = []
    while chunk := os.read(r_out, 65536):
        chunks.append(chunk)
    os.close(r_out)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def _ip_batch(lines: Sequence[str], where: str) -> None:
    rc, err = _spawn(["ip", "-batch", "-"], ("\n".join(lines) + "\n").encode(), None, 2)
    if rc != 0:
        detail = " ".join(err.decode(errors="replace").split()) or f"exit {rc}"
        raise PluginError(CODE_INTERNAL, f"{where}: {detail}")


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/proc/sys/net/ipv4/conf/{name}")


def _write_sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError as exc:
        raise PluginError(CODE_IO_FAILURE, f"sysctl {key.replace('/', '.')}: {exc.strerror}") from None


class _Netns:
    """Switch this (single-threaded) process into another network namespace and back."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def enter(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise PluginError(CODE_INVALID_ENV, f"CNI_NETNS {path}: {exc.strerror}") from None
        try:
            self._setns(fd, path)
        finally:
            os.close(fd)

    def leave(self) -> None:
        self._setns(self.home, "the node's namespace")

    def _setns(self, fd: int, what: str) -> None:
        if self.libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise PluginError(CODE_INVALID_ENV, f"CNI_NETNS {what}: setns: {os.strerror(err)}")


def _find(plugin: str, cni_path: str) -> str:
    for directory in cni_path.split(":"):
        candidate = os.path.join(directory, plugin)
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise PluginError(CODE_INVALID_CONFIG, f"ipam.type: plugin {plugin!r} not found in CNI_PATH {cni_path!r}")


def _ipam(command: str, conf: Mapping[str, Any], raw: bytes, env: Mapping[str, str]) -> tuple[int, bytes]:
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or "/" in ipam["type"]:
        raise PluginError(CODE_INVALID_CONFIG, "ipam.type: must name the IPAM plugin")
    return _spawn([_find(ipam["type"], env.get("CNI_PATH", ""))], raw, {**env, "CNI_COMMAND": command}, 1)


def _add(conf: Mapping[str, Any], raw: bytes, env: Mapping[str, str], version: str) -> int:
    for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
        if not env.get(key):
            raise PluginError(CODE_INVALID_ENV, f"{key}: is required")
    mtu = conf.get("mtu", 1500)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise PluginError(CODE_INVALID_CONFIG, f"mtu: must be 68..65535, got {mtu!r}")
    netns_path, ifname, cid = env["CNI_NETNS"], env["CNI_IFNAME"], env["CNI_CONTAINERID"]
    host = host_veth_name(parse_cni_args(env.get("CNI_ARGS", "")), cid)
    mac = container_mac(cid)
    rc, out = _ipam("ADD", conf, raw, env)
    if rc != 0:
        sys.stdout.buffer.write(out)
        return rc
    try:
        ipam_result = json_loads(out.decode())
        addrs = addresses(ipam_result)
        ns = _Netns()
        stale = ["link del " + host] if _link_exists(host) else []  # a sandbox re-created
        _ip_batch(
            [
                *stale,
                f"link add {host} address {HOST_MAC} mtu {mtu} type veth "
                f"peer name {ifname} address {mac} mtu {mtu} netns {netns_path}",
            ],
            f"node: veth {host}",
        )
        try:
            for key, value in host_sysctls(host, addrs):
                _write_sysctl(key, value)
            ns.enter(netns_path)
            try:
                if any(a.v6 for a in addrs) and os.path.exists(f"/proc/sys/net/ipv6/conf/{ifname}"):
                    _write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
                _ip_batch(pod_commands(ifname, addrs, _extra_routes(ipam_result)), f"pod: {ifname}")
            finally:
                ns.leave()
            _ip_batch(host_commands(host, addrs), f"node: {host}")
        except BaseException:
            _spawn(["ip", "link", "del", host], b"", None, 2)
            raise
    except (PluginError, JSONError) as exc:
        _ipam("DEL", conf, raw, env)
        if isinstance(exc, JSONError):
            raise PluginError(CODE_DECODE, f"IPAM result: {exc}") from None
        raise
    sys.stdout.write(json_dumps(render_result(version, host, ifname, mac, netns_path, addrs, ipam_result)))
    return 0


def _del(conf: Mapping[str, Any], raw: bytes, env: Mapping[str, str]) -> int:
    if not env.get("CNI_CONTAINERID"):
        raise PluginError(CODE_INVALID_ENV, "CNI_CONTAINERID: is required")
    host = host_veth_name(parse_cni_args(env.get("CNI_ARGS", "")), env["CNI_CONTAINERID"])
    if _link_exists(host):  # the pod's eth0 goes with it, and with them the host routes
        _ip_batch([f"link del {host}"], f"node: veth {host}")
    rc, out = _ipam("DEL", conf, raw, env)
    sys.stdout.buffer.write(out)
    return rc


def _check(conf: Mapping[str, Any], raw: bytes, env: Mapping[str, str]) -> int:
    host = host_veth_name(parse_cni_args(env.get("CNI_ARGS", "")), env.get("CNI_CONTAINERID", ""))
    if not _link_exists(host):
        raise PluginError(CODE_INTERNAL, f"node: veth {host} does not exist")
    rc, out = _ipam("CHECK", conf, raw, env)
    sys.stdout.buffer.write(out)
    return rc


def main(env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    command = env.get("CNI_COMMAND", "")
    if not command:
        sys.stderr.write(
            "hostroute: a CNI plugin (Calico-style veth + host route); see lab/cni_hostroute.py\n"
        )
        return 0
    raw = sys.stdin.buffer.read()
    version = "1.0.0"
    try:
        try:
            conf = json_loads(raw.decode(errors="replace")) if raw.strip() else {}
        except JSONError as exc:
            raise PluginError(CODE_DECODE, f"network configuration: {exc}") from None
        if not isinstance(conf, dict):
            raise PluginError(CODE_DECODE, "network configuration: must be a JSON object")
        version = str(conf.get("cniVersion") or version)
        if command == "VERSION":
            sys.stdout.write(
                json_dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})
            )
            return 0
        if version not in SUPPORTED_VERSIONS:
            raise PluginError(CODE_INCOMPATIBLE_VERSION, f"cniVersion: {version!r} is not supported")
        if command == "ADD":
            return _add(conf, raw, env, version)
        if command == "DEL":
            return _del(conf, raw, env)
        if command == "CHECK":
            return _check(conf, raw, env)
        rc, out = _ipam(command, conf, raw, env)  # GC, STATUS: the IPAM plugin's business
        sys.stdout.buffer.write(out)
        return rc
    except PluginError as err:
        sys.stdout.write(json_dumps({"cniVersion": version, "code": err.code, "msg": err.msg}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
