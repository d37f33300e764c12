"""The ``spiderpool`` CNI IPAM plugin: env + stdin -> one request to the node agent -> CNI result.

CNI spec 1.1.0; results for cniVersion 0.3.0, 0.3.1, 0.4.0 (each IP carries ``"version"``), 1.0.0 and
1.1.0.  Commands VERSION, ADD, DEL, CHECK, GC and STATUS; without ``CNI_COMMAND`` an "about" text goes
to stderr.  Errors are the spec's error JSON on stdout and exit status 1, never a traceback.

The container runtime starts this file once per call, so start-up time is the whole cost: it imports
only modules the interpreter already has or C modules (``_json``, ``_socket``), and speaks the one
HTTP/1.1 exchange it needs by itself instead of through ``http.client`` (whose import alone costs
~20 ms: email parsing and ssl).  ``spiderbgp.plugin_package`` builds the installed single file from
``cni/wire.py`` and this module, whole, with the program's bytecode embedded (scripts are never
cached as ``.pyc``).

Decisions (see docs/agent-api.md):
- DEL while the agent is unreachable fails with code 11 so the runtime retries it; the agent's IP GC
  reclaims whatever a runtime that gives up leaves behind.
- Static IP requests (``args.cni.ips``, ``CNI_ARGS`` ``IP=``) are refused: pin IPs with Spiderpool's
  pod annotations instead.
"""

from __future__ import annotations

import posix  # the C module behind os: importing os would cost a millisecond of start-up
import sys

from cni.wire import (
    CNI_VERSIONS,
    CODE_DECODE,
    CODE_INCOMPATIBLE_VERSION,
    CODE_INVALID_CONFIG,
    CODE_INVALID_ENV,
    CODE_IO_FAILURE,
    CODE_PLUGIN_INTERNAL,
    CODE_PROTOCOL,
    CODE_TRY_AGAIN,
    CODE_UNAVAILABLE,
    CODE_UNAVAILABLE_LIMITED,
    CODE_UNSUPPORTED_FIELD,
    ERROR_MESSAGES,
    MAX_BODY_BYTES,
    PATH_ADD,
    PATH_CHECK,
    PATH_DEL,
    PATH_GC,
    PATH_STATUS,
    AddRequest,
    AddResponse,
    Attachment,
    CheckRequest,
    DelRequest,
    ErrorResponse,
    GcRequest,
    StatusRequest,
    _Record,
    id_problem,
    interface_name_problem,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO, NoReturn, TextIO

PLUGIN_NAME = "spiderpool"
SUPPORTED_VERSIONS = CNI_VERSIONS
CURRENT_VERSION = "1.1.0"
DEFAULT_SOCKET_PATH = "/run/spiderbgp/agent.sock"
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
LOG_LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "fatal": 50, "panic": 50}
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
ABOUT = (
    f"spiderpool CNI IPAM plugin (spiderbgp): allocates pod IPs from the node agent at {DEFAULT_SOCKET_PATH}"
)

# Required environment variables per command.  CNI_PATH is optional for ADD/DEL/CHECK: this IPAM
# plugin delegates to nothing (the spec lists it as optional there); GC requires it per the spec.
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
_CNI_ARGS_KEYS = (
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
)
_IPAM_KEYS = (
    "type",
    "default_ipv4_ippool",
    "default_ipv6_ippool",
    "clean_gateway",
    "ipam_unix_socket_path",
    "timeout",
    "log_level",
    "log_file_path",
)
# Spiderpool's own netconf keys for its log rotation: accepted (so its configs keep working), no effect.
_IPAM_KEYS_IGNORED = ("log_file_max_size", "log_file_max_age", "log_file_max_count")


class PluginError(Exception):
    """A CNI error result: ``code`` per the spec (100+ ours), ``msg`` short, ``details`` the one line."""

    def __init__(self, code: int, details: str, msg: str = "") -> None:
        super().__init__(details)
        self.code = code
        self.msg = msg or ERROR_MESSAGES.get(code, "error")
        self.details = details


def c_module(name: str) -> Any:
    """The C module ``name``, loaded by its file name from the interpreter's ``lib-dynload`` directory
    when it is a shared library there, else imported (ImportError when it does not exist).

    ``import`` would look for it along ``sys.path`` first, and set up a finder for ``lib-dynload``
    (~0.2 ms of the plugin's start-up); the path is what that search would find.
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    if name not in sys.builtin_module_names:
        try:
            bootstrap = sys.modules["_frozen_importlib"]
            external = sys.modules["_frozen_importlib_external"]
            directory = next(p for p in sys.path if p.endswith("/lib-dynload"))
            path = f"{directory}/{name}{external.EXTENSION_SUFFIXES[0]}"
            posix.stat(path)
            loader = external.ExtensionFileLoader(name, path)
            return bootstrap._load(external.spec_from_file_location(name, path, loader=loader))
        except Exception:  # any surprise in that shortcut: the import statement decides
            pass
    return __import__(name)


# --- JSON through the C accelerator (``json`` itself would import ``re`` and ``enum``) -----------


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}  # noqa: RUF012 - read by the C scanner, which keeps its own memo

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")


def _refuse(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def json_loads(text: str) -> object:
    """``json.loads`` with the same C scanner, minus NaN/Infinity; ValueError (or RecursionError) on
    bad input, nothing else.

    The scanner raises its syntax errors as ``json.decoder.JSONDecodeError``, which it looks up in
    ``sys.modules`` without importing: while ``json.decoder`` is not loaded (the plugin never loads
    it) such an error comes out as a SystemError without a message.  Then the text is parsed again by
    ``json`` itself, imported only on this error path, for the message with line and column.
    """
    try:
        _json = c_module("_json")
    except ImportError:  # pragma: no cover - CPython always has it
        return _stdlib_json_loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _json.make_scanner(_ScanContext())(text, start)
    except StopIteration as stop:
        raise ValueError(f"expecting a JSON value at offset {stop.value}") from None
    except SystemError:
        return _stdlib_json_loads(text)
    if text[end:].strip(" \t\n\r"):
        raise ValueError(f"extra data after the JSON value at offset {end}")
    return value


def _stdlib_json_loads(text: str) -> object:
    import json

    return json.loads(text, parse_constant=_ScanContext.parse_constant)


def json_dumps(value: object) -> str:
    """Compact ASCII JSON (``json.dumps(value, separators=(",", ":"))``)."""
    try:
        _json = c_module("_json")
    except ImportError:  # pragma: no cover
        import json

        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    encode = _json.make_encoder(
        {}, _refuse, _json.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return "".join(encode(value, 0))


# --- parsed invocation ---------------------------------------------------------------------------


class CniArgs(_Record):
    """The ``CNI_ARGS`` keys we read (Kubernetes runtimes send them with ``IgnoreUnknown=1``)."""

    __slots__ = ("infra_container_id", "pod_name", "pod_namespace", "pod_uid")
    pod_namespace: str
    pod_name: str
    pod_uid: str
    infra_container_id: str

    def __init__(
        self, *, pod_namespace: str = "", pod_name: str = "", pod_uid: str = "", infra_container_id: str = ""
    ) -> None:
        self._init(
            pod_namespace=pod_namespace,
            pod_name=pod_name,
            pod_uid=pod_uid,
            infra_container_id=infra_container_id,
        )


class Env(_Record):
    """The CNI environment of one call, validated for its command."""

    __slots__ = ("args", "command", "container_id", "if_name", "netns", "path")
    command: str
    container_id: str
    netns: str
    if_name: str
    path: str
    args: CniArgs

    def __init__(
        self,
        *,
        command: str,
        container_id: str = "",
        netns: str = "",
        if_name: str = "",
        path: str = "",
        args: CniArgs | None = None,
    ) -> None:
        self._init(
            command=command,
            container_id=container_id,
            netns=netns,
            if_name=if_name,
            path=path,
            args=args or CniArgs(),
        )


class IpamConf(_Record):
    """The ``.ipam`` section of the network configuration."""

    __slots__ = (
        "clean_gateway",
        "default_ipv4_ippool",
        "default_ipv6_ippool",
        "log_file_path",
        "log_level",
        "socket_path",
        "timeout",
    )
    default_ipv4_ippool: tuple[str, ...]
    default_ipv6_ippool: tuple[str, ...]
    clean_gateway: bool
    socket_path: str
    timeout: float
    log_level: str
    log_file_path: str

    def __init__(
        self,
        *,
        default_ipv4_ippool: tuple[str, ...] = (),
        default_ipv6_ippool: tuple[str, ...] = (),
        clean_gateway: bool = False,
        socket_path: str = DEFAULT_SOCKET_PATH,
        timeout: float = DEFAULT_TIMEOUT,
        log_level: str = "info",
        log_file_path: str = "",
    ) -> None:
        self._init(
            default_ipv4_ippool=default_ipv4_ippool,
            default_ipv6_ippool=default_ipv6_ippool,
            clean_gateway=clean_gateway,
            socket_path=socket_path,
            timeout=timeout,
            log_level=log_level,
            log_file_path=log_file_path,
        )


class NetConf(_Record):
    """The network configuration on stdin: what we read of it, plus the raw object."""

    __slots__ = ("cni_version", "ipam", "name", "prev_result", "raw", "valid_attachments")
    cni_version: str
    name: str
    ipam: IpamConf
    prev_result: dict[str, Any] | None
    valid_attachments: tuple[Attachment, ...] | None
    raw: dict[str, Any]

    def __init__(
        self,
        *,
        cni_version: str,
        name: str,
        ipam: IpamConf,
        prev_result: dict[str, Any] | None = None,
        valid_attachments: tuple[Attachment, ...] | None = None,
        raw: dict[str, Any] | None = None,
    ) -> None:
        self._init(
            cni_version=cni_version,
            name=name,
            ipam=ipam,
            prev_result=prev_result,
            valid_attachments=valid_attachments,
            raw=raw or {},
        )

    def __hash__(self) -> int:  # raw/prev_result are dicts
        return hash((self.cni_version, self.name, self.ipam))


def parse_cni_args(text: str) -> CniArgs:
    """Parse ``CNI_ARGS`` (``K=V;K=V``) like libcni's LoadArgs, into the keys we use."""
    pairs: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        kv = item.split("=")
        if len(kv) != 2:
            raise PluginError(CODE_INVALID_ENV, f"CNI_ARGS: {item!r} is not a KEY=VALUE pair")
        pairs[kv[0]] = kv[1]
    ignore = pairs.get("IgnoreUnknown", "false").lower()
    if ignore not in ("1", "true", "0", "false"):
        raise PluginError(
            CODE_INVALID_ENV, f"CNI_ARGS: IgnoreUnknown={pairs['IgnoreUnknown']!r} is not a boolean"
        )
    if "IP" in pairs:
        raise PluginError(
            CODE_INVALID_ENV,
            f"CNI_ARGS: IP={pairs['IP']!r}: static IP requests are not supported; "
            "pin IPs with the pod annotation ipam.spidernet.io/ippool",
        )
    if ignore in ("0", "false"):
        unknown = [k for k in pairs if k not in _CNI_ARGS_KEYS]
        if unknown:
            raise PluginError(
                CODE_INVALID_ENV, f"CNI_ARGS: unknown key {unknown[0]!r} (set IgnoreUnknown=1 to allow it)"
            )
    return CniArgs(
        pod_namespace=pairs.get("K8S_POD_NAMESPACE", ""),
        pod_name=pairs.get("K8S_POD_NAME", ""),
        pod_uid=pairs.get("K8S_POD_UID", ""),
        infra_container_id=pairs.get("K8S_POD_INFRA_CONTAINER_ID", ""),
    )


def required_env(environ: Mapping[str, str]) -> str:
    """The command, once ``CNI_COMMAND`` and the variables it needs are set (else code 4 naming them)."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise PluginError(CODE_INVALID_ENV, f"CNI_COMMAND: {command!r} is not one of {', '.join(COMMANDS)}")
    missing = [name for name in _REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise PluginError(CODE_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    return command


def check_identifiers(command: str, environ: Mapping[str, str]) -> None:
    """``CNI_CONTAINERID`` and ``CNI_IFNAME`` of ADD, DEL and CHECK, by skel's rules (code 4)."""
    if command not in ("ADD", "DEL", "CHECK"):
        return
    problem = id_problem(environ.get("CNI_CONTAINERID", ""))
    if problem:
        raise PluginError(CODE_INVALID_ENV, f"CNI_CONTAINERID: {problem}")
    problem = interface_name_problem(environ.get("CNI_IFNAME", ""))
    if problem:
        raise PluginError(CODE_INVALID_ENV, f"CNI_IFNAME: {problem}")


def pod_args(command: str, environ: Mapping[str, str]) -> CniArgs:
    """``CNI_ARGS`` of ADD, DEL and CHECK (ADD needs the pod's namespace and name), code 4."""
    if command not in ("ADD", "DEL", "CHECK"):
        return CniArgs()
    args = parse_cni_args(environ.get("CNI_ARGS", ""))
    if command == "ADD" and not (args.pod_namespace and args.pod_name):
        missing = [k for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME") if not getattr(args, k[4:].lower())]
        raise PluginError(
            CODE_INVALID_ENV, f"CNI_ARGS: {' and '.join(missing)} missing (the agent allocates per pod)"
        )
    return args


def make_env(command: str, environ: Mapping[str, str], args: CniArgs) -> Env:
    return Env(
        command=command,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        if_name=environ.get("CNI_IFNAME", ""),
        path=environ.get("CNI_PATH", ""),
        args=args,
    )


def parse_env(environ: Mapping[str, str]) -> Env:
    """Validate the CNI variables ``CNI_COMMAND`` needs; code 4 names every missing or bad one.  (``run``
    checks the same in skel's order, with the configuration between them.)"""
    command = required_env(environ)
    if command == "VERSION":
        return Env(command=command)
    check_identifiers(command, environ)
    return make_env(command, environ, pod_args(command, environ))


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def decode_config(data: bytes) -> dict[str, Any]:
    """Stdin bytes -> the configuration object (code 6 for anything that is not one JSON object)."""
    if len(data) > MAX_BODY_BYTES:
        raise PluginError(
            CODE_DECODE, f"network configuration on stdin is larger than {MAX_BODY_BYTES} bytes"
        )
    try:
        text = data.decode("utf-8")
        value = json_loads(text)
    except (ValueError, RecursionError) as err:
        problem = "nesting too deep" if isinstance(err, RecursionError) else str(err)
        raise PluginError(
            CODE_DECODE, f"network configuration on stdin is not valid JSON: {problem}"
        ) from None
    if not isinstance(value, dict):
        raise PluginError(CODE_DECODE, "network configuration on stdin must be a JSON object")
    return value


def _pools(ipam: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = ipam.get(key)
    if value is None:
        return ()
    if isinstance(value, str):  # tolerated: a single pool name
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise PluginError(
            CODE_INVALID_CONFIG, f"ipam.{key}: expected an array of pool names, got {json_dumps(value)}"
        )
    return tuple(value)


def parse_ipam(ipam: object) -> IpamConf:
    """Validate ``.ipam``: code 7 for a bad value, code 2 naming key and value for an unknown key."""
    if not isinstance(ipam, dict):
        raise PluginError(
            CODE_INVALID_CONFIG, 'ipam: missing or not an object (expected {"type": "spiderpool", ...})'
        )
    kind = ipam.get("type")
    if kind != PLUGIN_NAME:
        raise PluginError(CODE_INVALID_CONFIG, f'ipam.type: expected "{PLUGIN_NAME}", got {json_dumps(kind)}')
    for key, value in ipam.items():
        if key not in _IPAM_KEYS and key not in _IPAM_KEYS_IGNORED:
            raise PluginError(
                CODE_UNSUPPORTED_FIELD, f"ipam.{key}: {json_dumps(value)} is not a supported field"
            )
    clean_gateway = ipam.get("clean_gateway", False)
    if not isinstance(clean_gateway, bool):
        raise PluginError(
            CODE_INVALID_CONFIG,
            f"ipam.clean_gateway: expected true or false, got {json_dumps(clean_gateway)}",
        )
    socket_path = ipam.get("ipam_unix_socket_path", DEFAULT_SOCKET_PATH)
    if not isinstance(socket_path, str) or not socket_path.startswith("/"):
        raise PluginError(
            CODE_INVALID_CONFIG,
            f"ipam.ipam_unix_socket_path: expected an absolute path, got {json_dumps(socket_path)}",
        )
    timeout = ipam.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise PluginError(
            CODE_INVALID_CONFIG,
            f"ipam.timeout: expected seconds in (0, {MAX_TIMEOUT:g}], got {json_dumps(timeout)}",
        )
    log_level = ipam.get("log_level", "info")
    if not isinstance(log_level, str) or log_level.lower() not in LOG_LEVELS:
        raise PluginError(
            CODE_INVALID_CONFIG,
            f"ipam.log_level: expected one of {', '.join(LOG_LEVELS)}, got {json_dumps(log_level)}",
        )
    log_file_path = ipam.get("log_file_path", "")
    if not isinstance(log_file_path, str) or (log_file_path and not log_file_path.startswith("/")):
        raise PluginError(
            CODE_INVALID_CONFIG,
            f"ipam.log_file_path: expected an absolute path, got {json_dumps(log_file_path)}",
        )
    return IpamConf(
        default_ipv4_ippool=_pools(ipam, "default_ipv4_ippool"),
        default_ipv6_ippool=_pools(ipam, "default_ipv6_ippool"),
        clean_gateway=clean_gateway,
        socket_path=socket_path,
        timeout=float(timeout),
        log_level=log_level.lower(),
        log_file_path=log_file_path,
    )


def network_name(raw: Mapping[str, Any]) -> str:
    """The configuration's ``name``, as skel's validateConfig checks it (code 7)."""
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PluginError(CODE_INVALID_CONFIG, "name: missing network name")
    problem = id_problem(name)
    if problem:
        raise PluginError(CODE_INVALID_CONFIG, f"name: {problem}")
    return name


def parse_config(command: str, raw: dict[str, Any]) -> NetConf:
    """Validate the configuration for ``command`` in skel's order: name (7), version (1), ipam (7/2)."""
    name = network_name(raw)
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        raise PluginError(CODE_DECODE, f"cniVersion: expected a string, got {json_dumps(version)}")
    if version not in SUPPORTED_VERSIONS:
        raise PluginError(
            CODE_INCOMPATIBLE_VERSION,
            f"config is {json_dumps(version or '0.1.0')}, plugin supports [{', '.join(SUPPORTED_VERSIONS)}]",
            "incompatible CNI versions",
        )
    if command == "CHECK" and _version_tuple(version) < (0, 4, 0):
        raise PluginError(
            CODE_INCOMPATIBLE_VERSION, f"config version {version} does not allow CHECK (needs 0.4.0 or later)"
        )
    if command in ("GC", "STATUS") and _version_tuple(version) < (1, 1, 0):
        raise PluginError(
            CODE_INCOMPATIBLE_VERSION, f"config version {version} does not allow {command} (needs 1.1.0)"
        )
    args = raw.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict) and "ips" in args["cni"]:
        raise PluginError(
            CODE_UNSUPPORTED_FIELD,
            f"args.cni.ips: {json_dumps(args['cni']['ips'])}: static IP requests are not supported; "
            "pin IPs with the pod annotation ipam.spidernet.io/ippool",
        )
    ipam = parse_ipam(raw.get("ipam"))
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise PluginError(CODE_INVALID_CONFIG, f"prevResult: expected an object, got {json_dumps(prev)[:80]}")
    attachments: tuple[Attachment, ...] | None = None
    if command == "GC":
        items = raw.get("cni.dev/valid-attachments")
        if not isinstance(items, list):
            raise PluginError(
                CODE_INVALID_CONFIG,
                "cni.dev/valid-attachments: missing or not an array (GC would release every IP)",
            )
        try:
            attachments = tuple(
                Attachment.from_json(v, f"cni.dev/valid-attachments[{i}]") for i, v in enumerate(items)
            )
        except ValueError as err:
            raise PluginError(CODE_INVALID_CONFIG, str(err)) from None
    return NetConf(
        cni_version=version, name=name, ipam=ipam, prev_result=prev, valid_attachments=attachments, raw=raw
    )


# --- result rendering ----------------------------------------------------------------------------


def render_result(
    response: AddResponse, if_name: str, cni_version: str, prev_result: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The abbreviated IPAM result for ``if_name`` in ``cni_version`` (0.3.x/0.4.0 carry ``version``).

    With a ``prevResult`` the result is that object with our IPs and routes added (spec: output the
    prevResult "with any possible modifications made by that plugin included").
    """
    legacy = _version_tuple(cni_version) < (1, 0, 0)
    ips: list[dict[str, Any]] = []
    for ip in response.ips:
        if ip.nic != if_name:
            continue
        entry: dict[str, Any] = {"version": str(ip.version)} if legacy else {}
        entry["address"] = ip.address
        if ip.gateway:
            entry["gateway"] = ip.gateway
        ips.append(entry)
    if not ips:
        raise PluginError(CODE_PROTOCOL, f"the agent allocated no IP for interface {if_name}")
    routes: list[dict[str, Any]] = []
    for route in response.routes:
        if route.if_name == if_name:
            routes.append({"dst": route.dst, "gw": route.gw} if route.gw else {"dst": route.dst})
    result: dict[str, Any] = {"cniVersion": cni_version}
    if prev_result:
        result.update(prev_result)
        result["cniVersion"] = cni_version
        old_ips = [v for v in result.get("ips") or [] if isinstance(v, dict)]
        known = {v.get("address") for v in old_ips}
        result["ips"] = old_ips + [v for v in ips if v["address"] not in known]
        old_routes = [v for v in result.get("routes") or [] if isinstance(v, dict)]
        result["routes"] = old_routes + [v for v in routes if v not in old_routes]
        if not result["routes"]:
            del result["routes"]
    else:
        result["ips"] = ips
        if routes:
            result["routes"] = routes
    dns = response.dns.to_json() if response.dns is not None else {}
    if dns and "dns" not in result:
        result["dns"] = dns
    return result


def prev_result_addresses(prev_result: Mapping[str, Any], if_name: str) -> list[str]:
    """The ``ips[].address`` of ``prevResult`` that belong to ``if_name`` (or to no interface)."""
    interfaces = prev_result.get("interfaces")
    names: list[object] = (
        [i.get("name") if isinstance(i, dict) else None for i in interfaces]
        if isinstance(interfaces, list)
        else []
    )
    out: list[str] = []
    for ip in prev_result.get("ips") or []:
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            raise PluginError(CODE_INVALID_CONFIG, f"prevResult.ips: {json_dumps(ip)[:80]} has no address")
        index = ip.get("interface")
        if (
            isinstance(index, int)
            and not isinstance(index, bool)
            and 0 <= index < len(names)
            and names[index] != if_name
        ):
            continue
        out.append(ip["address"])
    return out


def error_result(err: PluginError, cni_version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": cni_version, "code": err.code, "msg": err.msg}
    if err.details:
        out["details"] = err.details
    return out


# --- talking to the agent ------------------------------------------------------------------------


class Log:
    """Plain lines to stderr or ``log_file_path`` (never stdout: that is the runtime's)."""

    def __init__(self, stderr: TextIO, level: str = "info", path: str = "") -> None:
        self._stderr, self._level, self._path = stderr, LOG_LEVELS.get(level, 20), path

    def configure(self, level: str, path: str) -> None:
        self._level, self._path = LOG_LEVELS.get(level, 20), path

    def log(self, level: str, message: str) -> None:
        if LOG_LEVELS[level] < self._level:
            return
        import time

        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {level.upper()} spiderpool[{posix.getpid()}]: {message}\n"
        )
        try:
            if self._path:
                with open(self._path, "a", encoding="utf-8") as f:
                    f.write(line)
            else:
                self._stderr.write(line)
                self._stderr.flush()
        except OSError:
            pass  # logging must never turn a result into a failure


class Transport:
    """One HTTP/1.1 request per call over the agent's unix socket (``Connection: close``).

    Before connecting it refuses a path that is not a socket, that group or others may write, or
    (when we run as root) that root does not own: anyone able to answer there decides pod IPs.
    Failures to reach the agent raise PluginError(``unreachable_code``).
    """

    def __init__(self, socket_path: str, timeout: float, unreachable_code: int = CODE_TRY_AGAIN) -> None:
        self.socket_path, self.timeout, self.unreachable_code = socket_path, timeout, unreachable_code

    def _unreachable(self, problem: str) -> PluginError:
        return PluginError(self.unreachable_code, f"agent socket {self.socket_path}: {problem}")

    def check_socket(self) -> None:
        try:
            st = posix.stat(self.socket_path)
        except FileNotFoundError:
            raise self._unreachable("does not exist (is the spiderbgp agent running?)") from None
        except OSError as err:
            raise self._unreachable(f"cannot stat: {err.strerror}") from None
        if st.st_mode & 0o170000 != 0o140000:
            raise self._unreachable("is not a unix socket")
        if st.st_mode & 0o022:
            raise self._unreachable(
                f"mode {st.st_mode & 0o777:04o} lets group or others write to it (expected 0600)"
            )
        if posix.geteuid() == 0 and st.st_uid != 0:
            raise self._unreachable(f"is owned by uid {st.st_uid}, not root")

    def request(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        """Send one request; return (HTTP status, decoded JSON body or None)."""
        import time

        _socket = c_module("_socket")
        self.check_socket()
        payload = b"" if body is None else json_dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: spiderbgp\r\nUser-Agent: spiderpool-cni\r\nAccept: application/json\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        deadline = time.monotonic() + self.timeout
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        chunks: list[bytes] = []
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            sock.sendall(head.encode("latin-1") + b"\r\n" + payload)
            size, complete = 0, -1
            while size != complete:  # to EOF, or to the end of a Content-Length body (no wait for the close)
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if complete < 0:
                    complete = response_length(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                if size > 4 * MAX_BODY_BYTES:
                    raise PluginError(
                        CODE_PROTOCOL,
                        f"agent socket {self.socket_path}: answer larger than {4 * MAX_BODY_BYTES} bytes",
                    )
        except TimeoutError:
            raise self._unreachable(f"no answer within {self.timeout:g}s") from None
        except OSError as err:
            raise self._unreachable(f"cannot talk to the agent: {err.strerror or err}") from None
        finally:
            sock.close()
        if not chunks:
            # closed without a byte (the agent stopped or died after reading the request): ADD is
            # idempotent, so the runtime should simply try again
            raise self._unreachable("closed the connection without answering")
        return parse_http_response(b"".join(chunks), self.socket_path)


def response_length(data: bytes) -> int:
    """The length of the whole response that ``data`` begins, when its head is complete and gives a
    Content-Length (and no Transfer-Encoding); else -1 (read to the end of the connection)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return -1
    length = -1
    for line in data[:end].lower().split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip()
        if name == b"transfer-encoding":
            return -1
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit():
                return -1
            length = int(value)
    return end + 4 + length if length >= 0 else -1


def parse_http_response(data: bytes, where: str) -> tuple[int, object]:
    """Status and JSON body of a complete HTTP/1.1 response (Content-Length, chunked, or to EOF)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if (
        not sep
        or len(status_line) < 2
        or not status_line[0].startswith("HTTP/1.")
        or not status_line[1].isdigit()
    ):
        raise PluginError(CODE_PROTOCOL, f"agent socket {where}: not an HTTP/1.1 response: {lines[0][:60]!r}")
    status = int(status_line[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body, where)
    elif headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        if len(body) < length:
            raise PluginError(
                CODE_PROTOCOL, f"agent socket {where}: answer cut short ({len(body)} of {length} bytes)"
            )
        body = body[:length]
    if not body.strip():
        return status, None
    try:
        return status, json_loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        if status >= 500:
            return status, None  # e.g. a proxy's or aiohttp's own text page: the status decides
        raise PluginError(
            CODE_PROTOCOL, f"agent socket {where}: HTTP {status} with a body that is not JSON"
        ) from None


def _dechunk(body: bytes, where: str) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        size_text = body[pos:end].split(b";")[0].strip() if end >= 0 else b""
        try:
            size = int(size_text, 16)
        except ValueError:
            raise PluginError(CODE_PROTOCOL, f"agent socket {where}: bad chunked encoding") from None
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


def agent_error(status: int, body: object, where: str) -> PluginError:
    """Map a non-2xx answer to a CNI error: the agent's ErrorResponse code, else 11 for 5xx."""
    if body is not None:
        try:
            err = ErrorResponse.from_json(body)
        except ValueError:
            pass
        else:
            return PluginError(err.code, err.details or err.msg, err.msg)
    if status >= 500:
        return PluginError(
            CODE_TRY_AGAIN, f"agent socket {where}: agent answered HTTP {status} (busy or failing)"
        )
    return PluginError(
        CODE_PROTOCOL, f"agent socket {where}: agent answered HTTP {status} without an error object"
    )


# --- commands ------------------------------------------------------------------------------------


def cmd_add(env: Env, conf: NetConf, transport: Transport) -> dict[str, Any]:
    request = AddRequest(
        container_id=env.container_id,
        if_name=env.if_name,
        netns=env.netns,
        pod_namespace=env.args.pod_namespace,
        pod_name=env.args.pod_name,
        pod_uid=env.args.pod_uid,
        default_ipv4_ippool=conf.ipam.default_ipv4_ippool,
        default_ipv6_ippool=conf.ipam.default_ipv6_ippool,
        clean_gateway=conf.ipam.clean_gateway,
        cni_version=conf.cni_version,
        network=conf.name,
    )
    status, body = transport.request("POST", PATH_ADD, request.to_json())
    if status != 200:
        raise agent_error(status, body, transport.socket_path)
    try:
        response = AddResponse.from_json(body)
    except ValueError as err:
        raise PluginError(CODE_PROTOCOL, f"agent answer: {err}") from None
    return render_result(response, env.if_name, conf.cni_version, conf.prev_result)


def cmd_del(env: Env, conf: NetConf, transport: Transport) -> None:
    request = DelRequest(
        container_id=env.container_id,
        if_name=env.if_name,
        netns=env.netns,
        pod_namespace=env.args.pod_namespace,
        pod_name=env.args.pod_name,
        pod_uid=env.args.pod_uid,
        cni_version=conf.cni_version,
        network=conf.name,
    )
    status, body = transport.request("POST", PATH_DEL, request.to_json())
    if status not in (200, 204):
        raise agent_error(status, body, transport.socket_path)


def cmd_check(env: Env, conf: NetConf, transport: Transport) -> None:
    if conf.prev_result is None:
        raise PluginError(
            CODE_INVALID_CONFIG, "prevResult: missing (CHECK compares the agent's record with it)"
        )
    request = CheckRequest(
        container_id=env.container_id,
        if_name=env.if_name,
        netns=env.netns,
        pod_namespace=env.args.pod_namespace,
        pod_name=env.args.pod_name,
        pod_uid=env.args.pod_uid,
        ips=prev_result_addresses(conf.prev_result, env.if_name),
        cni_version=conf.cni_version,
        network=conf.name,
    )
    status, body = transport.request("POST", PATH_CHECK, request.to_json())
    if status not in (200, 204):
        raise agent_error(status, body, transport.socket_path)


def cmd_gc(conf: NetConf, transport: Transport) -> None:
    request = GcRequest(
        network=conf.name, valid_attachments=conf.valid_attachments or (), cni_version=conf.cni_version
    )
    status, body = transport.request("POST", PATH_GC, request.to_json())
    if status not in (200, 204):
        raise agent_error(status, body, transport.socket_path)


def cmd_status(conf: NetConf, transport: Transport) -> None:
    request = StatusRequest(
        network=conf.name,
        cni_version=conf.cni_version,
        default_ipv4_ippool=conf.ipam.default_ipv4_ippool,
        default_ipv6_ippool=conf.ipam.default_ipv6_ippool,
    )
    status, body = transport.request("GET", f"{PATH_STATUS}?{request.to_query()}")
    if status not in (200, 204):
        err = agent_error(status, body, transport.socket_path)
        # STATUS speaks only "available" (0), 50 and 51: exhausted pools, a failing agent, all are 50.
        code = err.code if err.code in (CODE_UNAVAILABLE, CODE_UNAVAILABLE_LIMITED) else CODE_UNAVAILABLE
        raise PluginError(code, err.details)


def version_result(stdin_data: bytes) -> dict[str, Any]:
    """VERSION: echo the input's cniVersion when it is one we speak.  Any stdin is tolerated, as the
    reference plugins do (skel does not read it for VERSION)."""
    return {"cniVersion": stated_version(stdin_data), "supportedVersions": list(SUPPORTED_VERSIONS)}


def stated_version(stdin_data: bytes) -> str:
    """The configuration's cniVersion when it is one we speak, else ours; never raises (it labels
    the VERSION answer and every error result, whatever stdin holds)."""
    if len(stdin_data) > MAX_BODY_BYTES:
        return CURRENT_VERSION
    try:
        value = json_loads(stdin_data.decode("utf-8"))
    except Exception:  # malformed stdin has its own error; here it only means "no version"
        return CURRENT_VERSION
    if isinstance(value, dict) and value.get("cniVersion") in SUPPORTED_VERSIONS:
        return str(value["cniVersion"])
    return CURRENT_VERSION


def run(
    environ: Mapping[str, str],
    stdin_data: bytes,
    log: Log,
    make_transport: Callable[[IpamConf, int], Transport] | None = None,
) -> dict[str, Any] | None:
    """One invocation minus the I/O: the result object to print (None: print nothing), or PluginError.

    Checked in the order of libcni's skel, so that each input gets the reference plugins' code: the
    variables the command needs (4), the configuration's JSON (6) and network name (7), container ID
    and interface name (4), cniVersion (1), the rest of the configuration (7, 2), then ``CNI_ARGS``
    (4), which the plugin's own command reads.
    """
    command = required_env(environ)
    if command == "VERSION":
        return version_result(stdin_data)
    raw = decode_config(stdin_data)
    network_name(raw)
    check_identifiers(command, environ)
    conf = parse_config(command, raw)
    env = make_env(command, environ, pod_args(command, environ))
    log.configure(conf.ipam.log_level, conf.ipam.log_file_path)
    unreachable = CODE_UNAVAILABLE if env.command == "STATUS" else CODE_TRY_AGAIN
    transport = (make_transport or _transport)(conf.ipam, unreachable)
    log.log(
        "debug",
        f"{env.command} container={env.container_id} ifname={env.if_name} network={conf.name} socket={conf.ipam.socket_path}",
    )
    if env.command == "ADD":
        result = cmd_add(env, conf, transport)
        log.log(
            "debug",
            f"ADD {env.args.pod_namespace}/{env.args.pod_name} {env.if_name}: {json_dumps(result.get('ips'))}",
        )
        return result
    if env.command == "DEL":
        cmd_del(env, conf, transport)
    elif env.command == "CHECK":
        cmd_check(env, conf, transport)
    elif env.command == "GC":
        cmd_gc(conf, transport)
    else:
        cmd_status(conf, transport)
    return None


def _transport(ipam: IpamConf, unreachable_code: int) -> Transport:
    return Transport(ipam.socket_path, ipam.timeout, unreachable_code)


def main(environ: Mapping[str, str], stdin: BinaryIO, stdout: TextIO, stderr: TextIO) -> int:
    """The plugin's entry point: exit status 0 with the result (or nothing), else 1 with error JSON."""
    log = Log(stderr)
    stdin_data = b""
    try:
        if "CNI_COMMAND" not in environ:
            stderr.write(f"{ABOUT}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
            return 0
        try:
            stdin_data = stdin.read(MAX_BODY_BYTES + 1)
        except OSError as err:
            raise PluginError(
                CODE_IO_FAILURE, f"cannot read the network configuration from stdin: {err}"
            ) from None
        result = run(environ, stdin_data, log)
        if result is not None:
            stdout.write(json_dumps(result) + "\n")
            stdout.flush()
        return 0
    except PluginError as err:
        failure = err
    except BaseException as err:  # nothing may escape as a traceback
        failure = PluginError(CODE_PLUGIN_INTERNAL, f"{type(err).__name__}: {err}"[:500])
    log.log(
        "error",
        f"{environ.get('CNI_COMMAND', '')} container={environ.get('CNI_CONTAINERID', '')}: code {failure.code}: {failure.details}",
    )
    try:
        stdout.write(json_dumps(error_result(failure, stated_version(stdin_data))) + "\n")
        stdout.flush()
    except (OSError, ValueError):
        pass
    return 1


def process_environ() -> dict[str, str]:
    """``os.environ`` as a plain dict, decoded the way ``os`` decodes it."""
    encoding = sys.getfilesystemencoding()
    return {
        k.decode(encoding, "surrogateescape"): v.decode(encoding, "surrogateescape")
        for k, v in posix.environ.items()
    }


def exit_now(status: int) -> NoReturn:
    """Flush stdout and stderr and end the process without the interpreter's finalization.

    Tearing down the modules and objects of the program costs more (~1.5 ms) than the rest of
    its start-up; nothing is left to clean up once main() has returned (its socket is closed, its
    log file written).
    """
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib would be one more import at start-up
            stream.flush()
        except (OSError, ValueError):
            pass
    posix._exit(status)


if __name__ == "__main__":
    exit_now(main(process_environ(), sys.stdin.buffer, sys.stdout, sys.stderr))
