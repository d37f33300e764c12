"""What the container runtime gives the plugin: the CNI environment and the network configuration,
parsed and checked in skel's order into immutable records (every problem one ``PluginError`` with the
spec's code, never a traceback).
Part of the installed plugin program (``spiderbgp.plugin_package`` puts the modules of ``cni/`` one
after the other in one file): stdlib only, no import that the interpreter does not already have at
start-up, no top-level name another module of the program binds otherwise.
"""

from __future__ import annotations

from cni.fastjson import json_dumps, json_loads
from cni.wire import (
    CNI_VERSIONS,
    CODE_DECODE,
    CODE_INCOMPATIBLE_VERSION,
    CODE_INVALID_CONFIG,
    CODE_INVALID_ENV,
    CODE_UNSUPPORTED_FIELD,
    ERROR_MESSAGES,
    MAX_BODY_BYTES,
    Attachment,
    _Record,
)
from cni.wire_rules import (
    id_problem,
    interface_name_problem,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

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
        self._fill(locals())


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
        args = args or CniArgs()
        self._fill(locals())


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
        self._fill(locals())


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
        raw = raw or {}
        self._fill(locals())

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
