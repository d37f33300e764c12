"""The versioned wire schema between the ``spiderpool`` CNI plugin and the node agent.

HTTP/1.1 + JSON over the agent's unix socket.  Both sides import this module: the agent validates
every request body with ``<Request>.from_json`` (a ValueError names the field), the plugin validates
every response the same way.  ``docs/agent-api.md`` documents the endpoints with curl examples.

This module is stdlib-only *and import-free at run time*: the plugin is started once per CNI call,
and ``dataclasses``/``typing`` alone would cost more than the whole budget for its start-up (about
8 ms and 4 ms on the lab machine).  So the records are small immutable classes over ``__slots__``
(``_Record``: value equality, hashing, repr, no attribute assignment) instead of frozen dataclasses,
and typing names are only imported for the type checker.  ``to_json`` returns a JSON-shaped dict,
``from_json`` takes one (the caller does the (de)serialization with its own JSON codec).

``cni.spiderpool.render_plugin_file`` inlines this source into the installed plugin file, so it must
stay self-contained: no project imports, no module-level names that clash with the plugin's.  What
only the agent uses sits between ``# --- agent side`` and ``# --- end agent side ---`` comments, which
the plugin file leaves out (less bytecode to load on every CNI call): nothing the plugin calls may.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, Literal

API_VERSION = "v1"

PATH_ADD = "/v1/cni/add"
PATH_DEL = "/v1/cni/del"
PATH_CHECK = "/v1/cni/check"
PATH_GC = "/v1/cni/gc"
PATH_STATUS = "/v1/cni/status"
PATH_HEALTHZ = "/healthz"
PATH_READYZ = "/readyz"

# Requests larger than this are refused by both sides (the plugin also caps its stdin at this size).
MAX_BODY_BYTES = 1 << 20

# CNI error codes (SPEC 1.1.0 "Error"): 0-99 are the spec's, 100+ are ours.
CODE_INCOMPATIBLE_VERSION = 1
CODE_UNSUPPORTED_FIELD = 2
CODE_UNKNOWN_CONTAINER = 3
CODE_INVALID_ENV = 4
CODE_IO_FAILURE = 5
CODE_DECODE = 6
CODE_INVALID_CONFIG = 7
CODE_TRY_AGAIN = 11
CODE_UNAVAILABLE = 50
CODE_UNAVAILABLE_LIMITED = 51
CODE_NO_IP_AVAILABLE = 100  # every candidate pool is exhausted
CODE_POD_NOT_FOUND = 101  # the pod named in CNI_ARGS is not in the store
CODE_NO_POOL = 102  # no candidate pool (none configured, none eligible for this pod/node/family)
CODE_RESERVATION_MISMATCH = 103  # CHECK: the agent's record differs from prevResult
CODE_AGENT_INTERNAL = 104  # the agent failed unexpectedly (its log has the details)
CODE_PROTOCOL = 105  # the agent's answer did not follow this schema
CODE_BAD_REQUEST = 106  # the agent refused the request body (a bug in the plugin or a version skew)
CODE_PLUGIN_INTERNAL = 107  # the plugin itself failed unexpectedly (never 999, never a traceback)

ERROR_MESSAGES = {
    CODE_INCOMPATIBLE_VERSION: "incompatible CNI version",
    CODE_UNSUPPORTED_FIELD: "unsupported field in network configuration",
    CODE_UNKNOWN_CONTAINER: "container unknown",
    CODE_INVALID_ENV: "invalid environment variables",
    CODE_IO_FAILURE: "I/O failure",
    CODE_DECODE: "failed to decode content",
    CODE_INVALID_CONFIG: "invalid network configuration",
    CODE_TRY_AGAIN: "try again later",
    CODE_UNAVAILABLE: "plugin not available",
    CODE_UNAVAILABLE_LIMITED: "plugin not available, connectivity may be limited",
    CODE_NO_IP_AVAILABLE: "no IP available",
    CODE_POD_NOT_FOUND: "pod not found",
    CODE_NO_POOL: "no eligible IP pool",
    CODE_RESERVATION_MISMATCH: "IP reservation does not match",
    CODE_AGENT_INTERNAL: "agent internal error",
    CODE_PROTOCOL: "unexpected answer from the agent",
    CODE_BAD_REQUEST: "the agent refused the request",
    CODE_PLUGIN_INTERNAL: "plugin internal error",
}


# The CNI versions both sides speak (the plugin's results are written in each of them).
CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# A container ID or network name longer than this is refused (runtimes use 64 hex digits; skel sets
# no bound, but the agent stores them as keys).
MAX_ID_LENGTH = 256


# --- identifiers, as libcni's skel validates them (the plugin checks its input, the agent requests) ---

_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_REST = _ID_FIRST | frozenset("_.-")


def _shown(value: str) -> str:
    """``value`` quoted for an error line, cut to 40 characters."""
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} characters)"


def id_problem(value: str) -> str:
    """Why ``value`` is not a container ID or network name ("" when it is): skel's
    ``^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$``, at most MAX_ID_LENGTH characters."""
    if not value:
        return "is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{_shown(value)} is longer than {MAX_ID_LENGTH} characters"
    if value[0] not in _ID_FIRST or not _ID_REST.issuperset(value):
        return (
            f"{_shown(value)} must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
        )
    return ""


def interface_name_problem(name: str) -> str:
    """Why ``name`` is not a usable interface name ("" when it is), as skel's ValidateInterfaceName:
    not empty, at most 15 bytes (IFNAMSIZ - 1), not ``.`` or ``..``, no ``/``, ``:`` or whitespace."""
    if not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) > 15:  # bytes, as the kernel (and skel's Go len) count
        return f"{_shown(name)} is longer than 15 bytes"
    if name in (".", ".."):
        return f"{name!r} is not allowed"
    for c in name:
        if c in "/:" or c.isspace() or not c.isprintable():
            return f"{name!r} contains {c!r}"
    return ""


# --- field readers: every failure is one ValueError naming Record.field --------------------------


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = True, empty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise ValueError(f"{where}.{key}: missing")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected a string, got {_kind(value)}")
    if not value and required and not empty:
        raise ValueError(f"{where}.{key}: must not be empty")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected a string, got {_kind(value)}")
    return value


def _bool(obj: Mapping[str, Any], key: str, where: str) -> bool:
    value = obj.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key}: expected true or false, got {_kind(value)}")
    return value


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{where}.{key}: expected an array of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ValueError(f"{where}.{key}[{i}]: expected a non-empty string, got {_kind(item)}")
    return tuple(value)


def _list(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> list[Any]:
    value = obj.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}.{key}: missing")
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}.{key}: expected an array, got {_kind(value)}")
    return value


def _cidr(value: str, where: str) -> int:
    """Check ``ip/prefix`` loosely (no ipaddress import) and return the IP version it implies."""
    ip, sep, prefix = value.partition("/")
    version = 6 if ":" in ip else 4
    limit = 128 if version == 6 else 32
    if not sep or not ip or not prefix.isdigit() or int(prefix) > limit or not _looks_like_ip(ip, version):
        raise ValueError(f"{where}: {value!r} is not an address in CIDR notation (ip/prefix)")
    return version


def _looks_like_ip(ip: str, version: int) -> bool:
    if version == 4:
        parts = ip.split(".")
        return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)
    return all(c in "0123456789abcdefABCDEF:." for c in ip) and ip.count("::") <= 1


def _ip(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = _opt_str(obj, key, where)
    if value is not None and not _looks_like_ip(value, 6 if ":" in value else 4):
        raise ValueError(f"{where}.{key}: {value!r} is not an IP address")
    return value


def _code(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}.{key}: expected a positive integer, got {_kind(value)}")
    return value


# --- agent side (left out of the plugin file) ---
MAX_TEXT_LENGTH = 4096  # any other string of a request (netns is a path: PATH_MAX)


def _text_problem(value: str, limit: int = MAX_TEXT_LENGTH) -> str:
    if len(value) > limit:
        return f"{_shown(value)} is longer than {limit} characters"
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        return f"{_shown(value)} contains the character {bad!r}"
    return ""


def _dns_label_problem(value: str, limit: int = 63) -> str:
    # RFC 1123 label as Kubernetes validates names: [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63
    if len(value) > limit:
        return f"{_shown(value)} is longer than {limit} characters"
    if (
        not value
        or not _DNS_REST.issuperset(value)
        or value[0] not in _DNS_ENDS
        or value[-1] not in _DNS_ENDS
    ):
        return (
            f"{_shown(value)} is not a lowercase RFC 1123 label (a-z, 0-9 and '-', alphanumeric at both ends)"
        )
    return ""


def _dns_subdomain_problem(value: str) -> str:
    # RFC 1123 subdomain (Pod and IPPool names): labels joined by '.', at most 253
    if len(value) > 253:
        return f"{_shown(value)} is longer than 253 characters"
    if any(_dns_label_problem(label) for label in value.split(".")):
        return f"{_shown(value)} is not a lowercase RFC 1123 subdomain (a-z, 0-9, '-' and '.')"
    return ""


_DNS_ENDS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_DNS_REST = _DNS_ENDS | frozenset("-")


def _version_problem(value: str) -> str:
    if value not in CNI_VERSIONS:
        return f"{_shown(value)} is not one of {', '.join(CNI_VERSIONS)}"
    return ""


# (attribute, JSON key, rule): every field a request may carry; an empty optional field passes.
_FIELD_RULES = (
    ("container_id", "containerID", id_problem),
    ("if_name", "ifName", interface_name_problem),
    ("network", "network", id_problem),
    ("cni_version", "cniVersion", _version_problem),
    ("pod_namespace", "podNamespace", _dns_label_problem),
    ("pod_name", "podName", _dns_subdomain_problem),
    ("pod_uid", "podUID", lambda v: _text_problem(v, 128)),
    ("netns", "netns", _text_problem),
    ("default_ipv4_ippool", "defaultIPv4IPPool", _dns_subdomain_problem),
    ("default_ipv6_ippool", "defaultIPv6IPPool", _dns_subdomain_problem),
)


def _check_fields(record: _Record, where: str) -> None:
    """Each field of ``record`` by its rule (ValueError naming ``where.key``): what the agent stores
    or looks up must be what the plugin itself would have sent."""
    for attr, key, rule in _FIELD_RULES:
        value = getattr(record, attr, "")
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                problem = rule(item)
                if problem:
                    raise ValueError(f"{where}.{key}[{i}]: {problem}")
        elif value:
            problem = rule(value)
            if problem:
                raise ValueError(f"{where}.{key}: {problem}")


# --- end agent side ---


# --- records -------------------------------------------------------------------------------------


class _Record:
    """An immutable value: fields are ``__slots__``, equality and hash by type and field values."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def _init(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({inner})"


class AddRequest(_Record):
    """``POST /v1/cni/add``: allocate the IPs of one pod interface (idempotent per containerID+ifName)."""

    __slots__ = (
        "clean_gateway",
        "cni_version",
        "container_id",
        "default_ipv4_ippool",
        "default_ipv6_ippool",
        "if_name",
        "netns",
        "network",
        "pod_name",
        "pod_namespace",
        "pod_uid",
    )
    container_id: str
    if_name: str
    netns: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    default_ipv4_ippool: tuple[str, ...]
    default_ipv6_ippool: tuple[str, ...]
    clean_gateway: bool
    cni_version: str
    network: str

    def __init__(
        self,
        *,
        container_id: str,
        if_name: str,
        netns: str,
        pod_namespace: str,
        pod_name: str,
        pod_uid: str = "",
        default_ipv4_ippool: Sequence[str] = (),
        default_ipv6_ippool: Sequence[str] = (),
        clean_gateway: bool = False,
        cni_version: str = "1.1.0",
        network: str,
    ) -> None:
        self._init(
            container_id=container_id,
            if_name=if_name,
            netns=netns,
            pod_namespace=pod_namespace,
            pod_name=pod_name,
            pod_uid=pod_uid,
            default_ipv4_ippool=tuple(default_ipv4_ippool),
            default_ipv6_ippool=tuple(default_ipv6_ippool),
            clean_gateway=clean_gateway,
            cni_version=cni_version,
            network=network,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "containerID": self.container_id,
            "ifName": self.if_name,
            "netns": self.netns,
            "podNamespace": self.pod_namespace,
            "podName": self.pod_name,
            "podUID": self.pod_uid,
            "defaultIPv4IPPool": list(self.default_ipv4_ippool),
            "defaultIPv6IPPool": list(self.default_ipv6_ippool),
            "cleanGateway": self.clean_gateway,
            "cniVersion": self.cni_version,
            "network": self.network,
        }

    # --- agent side (left out of the plugin file) ---
    @classmethod
    def from_json(cls, value: object) -> AddRequest:
        where = "AddRequest"
        obj = _obj(value, where)
        _api_version(obj, where)
        request = cls(
            container_id=_str(obj, "containerID", where),
            if_name=_str(obj, "ifName", where),
            netns=_str(obj, "netns", where),
            pod_namespace=_str(obj, "podNamespace", where),
            pod_name=_str(obj, "podName", where),
            pod_uid=_str(obj, "podUID", where, required=False),
            default_ipv4_ippool=_str_list(obj, "defaultIPv4IPPool", where),
            default_ipv6_ippool=_str_list(obj, "defaultIPv6IPPool", where),
            clean_gateway=_bool(obj, "cleanGateway", where),
            cni_version=_str(obj, "cniVersion", where),
            network=_str(obj, "network", where),
        )
        _check_fields(request, where)
        return request

    # --- end agent side ---


def _api_version(obj: Mapping[str, Any], where: str) -> None:
    # Absent means the current version; anything else is a skew between plugin and agent.
    version = obj.get("apiVersion", API_VERSION)
    if version != API_VERSION:
        raise ValueError(
            f"{where}.apiVersion: {version!r} is not supported (this side speaks {API_VERSION!r})"
        )


class IPConfig(_Record):
    """One allocated address: ``address`` is ``ip/prefix`` with the pool's prefix length."""

    __slots__ = ("address", "gateway", "nic", "pool", "version")
    address: str
    gateway: str | None
    pool: str
    nic: str
    version: Literal[4, 6]

    def __init__(self, *, address: str, nic: str, pool: str = "", gateway: str | None = None) -> None:
        version: Literal[4, 6] = 6 if _cidr(address, "IPConfig.address") == 6 else 4
        self._init(address=address, gateway=gateway or None, pool=pool, nic=nic, version=version)

    # --- agent side (left out of the plugin file) ---
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "pool": self.pool, "nic": self.nic}
        if self.gateway:
            out["gateway"] = self.gateway
        out["version"] = self.version
        return out

    # --- end agent side ---

    @classmethod
    def from_json(cls, value: object, where: str = "IPConfig") -> IPConfig:
        obj = _obj(value, where)
        address = _str(obj, "address", where)
        version = _cidr(address, f"{where}.address")
        stated = obj.get("version", version)
        if stated not in (4, 6) or isinstance(stated, bool):
            raise ValueError(f"{where}.version: expected 4 or 6, got {stated!r}")
        if stated != version:
            raise ValueError(f"{where}.version: {stated} does not match address {address!r}")
        gateway = _ip(obj, "gateway", where)
        if gateway is not None and (":" in gateway) != (version == 6):
            raise ValueError(f"{where}.gateway: {gateway!r} is not an IPv{version} address")
        return cls(address=address, gateway=gateway, pool=_str(obj, "pool", where, required=False),
                   nic=_str(obj, "nic", where))  # fmt: skip


class Route(_Record):
    """A route for interface ``if_name``; ``gw`` unset means "via the gateway of the same family"."""

    __slots__ = ("dst", "gw", "if_name")
    if_name: str
    dst: str
    gw: str | None

    def __init__(self, *, if_name: str, dst: str, gw: str | None = None) -> None:
        self._init(if_name=if_name, dst=dst, gw=gw or None)

    # --- agent side (left out of the plugin file) ---
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ifName": self.if_name, "dst": self.dst}
        if self.gw:
            out["gw"] = self.gw
        return out

    # --- end agent side ---

    @classmethod
    def from_json(cls, value: object, where: str = "Route") -> Route:
        obj = _obj(value, where)
        dst = _str(obj, "dst", where)
        version = _cidr(dst, f"{where}.dst")
        gw = _ip(obj, "gw", where)
        if gw is not None and (":" in gw) != (version == 6):
            raise ValueError(f"{where}.gw: {gw!r} is not an IPv{version} address like dst {dst!r}")
        return cls(if_name=_str(obj, "ifName", where), dst=dst, gw=gw)


class DNS(_Record):
    __slots__ = ("domain", "nameservers", "options", "search")
    nameservers: tuple[str, ...]
    domain: str
    search: tuple[str, ...]
    options: tuple[str, ...]

    def __init__(
        self,
        *,
        nameservers: Sequence[str] = (),
        domain: str = "",
        search: Sequence[str] = (),
        options: Sequence[str] = (),
    ) -> None:
        self._init(
            nameservers=tuple(nameservers), domain=domain, search=tuple(search), options=tuple(options)
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    @classmethod
    def from_json(cls, value: object, where: str = "DNS") -> DNS:
        obj = _obj(value, where)
        return cls(
            nameservers=_str_list(obj, "nameservers", where),
            domain=_str(obj, "domain", where, required=False),
            search=_str_list(obj, "search", where),
            options=_str_list(obj, "options", where),
        )


class AddResponse(_Record):
    """The answer to ADD: every IP of the pod (the plugin keeps those of CNI_IFNAME) and its routes."""

    __slots__ = ("dns", "ips", "routes")
    ips: tuple[IPConfig, ...]
    routes: tuple[Route, ...]
    dns: DNS | None

    def __init__(
        self, *, ips: Sequence[IPConfig], routes: Sequence[Route] = (), dns: DNS | None = None
    ) -> None:
        self._init(ips=tuple(ips), routes=tuple(routes), dns=dns)

    # --- agent side (left out of the plugin file) ---
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "ips": [ip.to_json() for ip in self.ips],
            "routes": [route.to_json() for route in self.routes],
        }
        if self.dns is not None:
            out["dns"] = self.dns.to_json()
        return out

    # --- end agent side ---

    @classmethod
    def from_json(cls, value: object) -> AddResponse:
        where = "AddResponse"
        obj = _obj(value, where)
        _api_version(obj, where)
        ips = [
            IPConfig.from_json(v, f"{where}.ips[{i}]")
            for i, v in enumerate(_list(obj, "ips", where, required=True))
        ]
        if not ips:
            raise ValueError(f"{where}.ips: must hold at least one address")
        routes = [
            Route.from_json(v, f"{where}.routes[{i}]") for i, v in enumerate(_list(obj, "routes", where))
        ]
        dns = None if obj.get("dns") is None else DNS.from_json(obj["dns"], f"{where}.dns")
        return cls(ips=ips, routes=routes, dns=dns)


class DelRequest(_Record):
    """``POST /v1/cni/del``: release what (containerID, ifName) holds; unknown ones succeed."""

    __slots__ = (
        "cni_version",
        "container_id",
        "if_name",
        "netns",
        "network",
        "pod_name",
        "pod_namespace",
        "pod_uid",
    )
    container_id: str
    if_name: str
    netns: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    cni_version: str
    network: str

    def __init__(
        self,
        *,
        container_id: str,
        if_name: str,
        netns: str = "",
        pod_namespace: str = "",
        pod_name: str = "",
        pod_uid: str = "",
        cni_version: str = "1.1.0",
        network: str,
    ) -> None:
        self._init(
            container_id=container_id,
            if_name=if_name,
            netns=netns,
            pod_namespace=pod_namespace,
            pod_name=pod_name,
            pod_uid=pod_uid,
            cni_version=cni_version,
            network=network,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "containerID": self.container_id,
            "ifName": self.if_name,
            "netns": self.netns,
            "podNamespace": self.pod_namespace,
            "podName": self.pod_name,
            "podUID": self.pod_uid,
            "cniVersion": self.cni_version,
            "network": self.network,
        }

    # --- agent side (left out of the plugin file) ---
    @classmethod
    def from_json(cls, value: object) -> DelRequest:
        where = "DelRequest"
        obj = _obj(value, where)
        _api_version(obj, where)
        request = cls(
            container_id=_str(obj, "containerID", where),
            if_name=_str(obj, "ifName", where),
            netns=_str(obj, "netns", where, required=False),
            pod_namespace=_str(obj, "podNamespace", where, required=False),
            pod_name=_str(obj, "podName", where, required=False),
            pod_uid=_str(obj, "podUID", where, required=False),
            cni_version=_str(obj, "cniVersion", where),
            network=_str(obj, "network", where),
        )
        _check_fields(request, where)
        return request

    # --- end agent side ---


class CheckRequest(_Record):
    """``POST /v1/cni/check``: the reservation of (containerID, ifName) must hold exactly ``ips``."""

    __slots__ = (
        "cni_version",
        "container_id",
        "if_name",
        "ips",
        "netns",
        "network",
        "pod_name",
        "pod_namespace",
        "pod_uid",
    )
    container_id: str
    if_name: str
    netns: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    ips: tuple[str, ...]  # "ip/prefix" of the prevResult entries for this interface
    cni_version: str
    network: str

    def __init__(
        self,
        *,
        container_id: str,
        if_name: str,
        ips: Sequence[str],
        netns: str = "",
        pod_namespace: str = "",
        pod_name: str = "",
        pod_uid: str = "",
        cni_version: str = "1.1.0",
        network: str,
    ) -> None:
        self._init(
            container_id=container_id,
            if_name=if_name,
            netns=netns,
            pod_namespace=pod_namespace,
            pod_name=pod_name,
            pod_uid=pod_uid,
            ips=tuple(ips),
            cni_version=cni_version,
            network=network,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "containerID": self.container_id,
            "ifName": self.if_name,
            "netns": self.netns,
            "podNamespace": self.pod_namespace,
            "podName": self.pod_name,
            "podUID": self.pod_uid,
            "ips": list(self.ips),
            "cniVersion": self.cni_version,
            "network": self.network,
        }

    # --- agent side (left out of the plugin file) ---
    @classmethod
    def from_json(cls, value: object) -> CheckRequest:
        where = "CheckRequest"
        obj = _obj(value, where)
        _api_version(obj, where)
        ips = _str_list(obj, "ips", where)
        for i, address in enumerate(ips):
            _cidr(address, f"{where}.ips[{i}]")
        request = cls(
            container_id=_str(obj, "containerID", where),
            if_name=_str(obj, "ifName", where),
            netns=_str(obj, "netns", where, required=False),
            pod_namespace=_str(obj, "podNamespace", where, required=False),
            pod_name=_str(obj, "podName", where, required=False),
            pod_uid=_str(obj, "podUID", where, required=False),
            ips=ips,
            cni_version=_str(obj, "cniVersion", where),
            network=_str(obj, "network", where),
        )
        _check_fields(request, where)
        return request

    # --- end agent side ---


class Attachment(_Record):
    """One still-valid attachment of a GC request (CNI's ``cni.dev/valid-attachments`` entry)."""

    __slots__ = ("container_id", "if_name")
    container_id: str
    if_name: str

    def __init__(self, *, container_id: str, if_name: str) -> None:
        self._init(container_id=container_id, if_name=if_name)

    def to_json(self) -> dict[str, Any]:
        return {"containerID": self.container_id, "ifname": self.if_name}

    @classmethod
    def from_json(cls, value: object, where: str = "Attachment") -> Attachment:
        obj = _obj(value, where)
        return cls(container_id=_str(obj, "containerID", where), if_name=_str(obj, "ifname", where))


class GcRequest(_Record):
    """``POST /v1/cni/gc``: release this node's records of ``network`` not in ``valid_attachments``."""

    __slots__ = ("cni_version", "network", "valid_attachments")
    network: str
    cni_version: str
    valid_attachments: tuple[Attachment, ...]

    def __init__(
        self, *, network: str, valid_attachments: Iterable[Attachment], cni_version: str = "1.1.0"
    ) -> None:
        self._init(network=network, cni_version=cni_version, valid_attachments=tuple(valid_attachments))

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "network": self.network,
            "cniVersion": self.cni_version,
            "validAttachments": [a.to_json() for a in self.valid_attachments],
        }

    # --- agent side (left out of the plugin file) ---
    @classmethod
    def from_json(cls, value: object) -> GcRequest:
        where = "GcRequest"
        obj = _obj(value, where)
        _api_version(obj, where)
        items = _list(obj, "validAttachments", where, required=True)
        request = cls(
            network=_str(obj, "network", where),
            cni_version=_str(obj, "cniVersion", where),
            valid_attachments=[
                Attachment.from_json(v, f"{where}.validAttachments[{i}]") for i, v in enumerate(items)
            ],
        )
        _check_fields(request, where)
        for i, attachment in enumerate(request.valid_attachments):
            for key, problem in (
                ("containerID", id_problem(attachment.container_id)),
                ("ifname", interface_name_problem(attachment.if_name)),
            ):
                if problem:
                    raise ValueError(f"{where}.validAttachments[{i}].{key}: {problem}")
        return request

    # --- end agent side ---


# --- agent side (left out of the plugin file) ---
class GcResult(_Record):
    """What a GC released (``ip`` strings, bare addresses); the agent logs and counts them."""

    __slots__ = ("released",)
    released: tuple[str, ...]

    def __init__(self, *, released: Sequence[str] = ()) -> None:
        self._init(released=tuple(released))

    def to_json(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "released": list(self.released)}

    @classmethod
    def from_json(cls, value: object) -> GcResult:
        where = "GcResult"
        obj = _obj(value, where)
        _api_version(obj, where)
        return cls(released=_str_list(obj, "released", where))


# --- end agent side ---


class StatusRequest(_Record):
    """``GET /v1/cni/status?network=N&cniVersion=V&ipv4Pool=P&ipv6Pool=Q`` (pools repeatable).

    Success means the agent can serve ADD for this network's default pools (or, without pools, at all).
    """

    __slots__ = ("cni_version", "default_ipv4_ippool", "default_ipv6_ippool", "network")
    network: str
    cni_version: str
    default_ipv4_ippool: tuple[str, ...]
    default_ipv6_ippool: tuple[str, ...]

    def __init__(
        self,
        *,
        network: str = "",
        cni_version: str = "1.1.0",
        default_ipv4_ippool: Sequence[str] = (),
        default_ipv6_ippool: Sequence[str] = (),
    ) -> None:
        self._init(
            network=network,
            cni_version=cni_version,
            default_ipv4_ippool=tuple(default_ipv4_ippool),
            default_ipv6_ippool=tuple(default_ipv6_ippool),
        )

    def to_query(self) -> str:
        """The query string (without ``?``), percent-encoded."""
        pairs = [("network", self.network), ("cniVersion", self.cni_version)]
        pairs += [("ipv4Pool", p) for p in self.default_ipv4_ippool]
        pairs += [("ipv6Pool", p) for p in self.default_ipv6_ippool]
        return "&".join(f"{k}={_quote(v)}" for k, v in pairs if v)

    # --- agent side (left out of the plugin file) ---
    @classmethod
    def from_query(cls, pairs: Iterable[tuple[str, str]]) -> StatusRequest:
        network, version, v4, v6 = "", "1.1.0", [], []
        for key, value in pairs:
            if key == "network":
                network = value
            elif key == "cniVersion":
                version = value
            elif key == "ipv4Pool" and value:
                v4.append(value)
            elif key == "ipv6Pool" and value:
                v6.append(value)
            else:
                raise ValueError(f"StatusRequest.{key}: unknown query parameter")
        request = cls(network=network, cni_version=version, default_ipv4_ippool=v4, default_ipv6_ippool=v6)
        _check_fields(request, "StatusRequest")
        return request

    # --- end agent side ---


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _quote(value: str) -> str:
    # RFC 3986 percent-encoding of everything but unreserved characters (urllib.parse would import re).
    return "".join(c if c in _UNRESERVED else "".join(f"%{b:02X}" for b in c.encode()) for c in value)


class ErrorResponse(_Record):
    """Every non-2xx answer of the agent: a CNI error code, a short ``msg`` and optional ``details``."""

    __slots__ = ("code", "details", "msg")
    code: int
    msg: str
    details: str

    def __init__(self, *, code: int, msg: str, details: str = "") -> None:
        self._init(code=code, msg=msg, details=details)

    # --- agent side (left out of the plugin file) ---
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"apiVersion": API_VERSION, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    # --- end agent side ---

    @classmethod
    def from_json(cls, value: object) -> ErrorResponse:
        where = "ErrorResponse"
        obj = _obj(value, where)
        return cls(
            code=_code(obj, "code", where),
            msg=_str(obj, "msg", where),
            details=_str(obj, "details", where, required=False),
        )


# --- agent side (left out of the plugin file) ---
__all__ = [
    "API_VERSION",
    "CNI_VERSIONS",
    "CODE_AGENT_INTERNAL",
    "CODE_BAD_REQUEST",
    "CODE_DECODE",
    "CODE_INCOMPATIBLE_VERSION",
    "CODE_INVALID_CONFIG",
    "CODE_INVALID_ENV",
    "CODE_IO_FAILURE",
    "CODE_NO_IP_AVAILABLE",
    "CODE_NO_POOL",
    "CODE_PLUGIN_INTERNAL",
    "CODE_POD_NOT_FOUND",
    "CODE_PROTOCOL",
    "CODE_RESERVATION_MISMATCH",
    "CODE_TRY_AGAIN",
    "CODE_UNAVAILABLE",
    "CODE_UNAVAILABLE_LIMITED",
    "CODE_UNKNOWN_CONTAINER",
    "CODE_UNSUPPORTED_FIELD",
    "DNS",
    "ERROR_MESSAGES",
    "MAX_BODY_BYTES",
    "MAX_ID_LENGTH",
    "PATH_ADD",
    "PATH_CHECK",
    "PATH_DEL",
    "PATH_GC",
    "PATH_HEALTHZ",
    "PATH_READYZ",
    "PATH_STATUS",
    "AddRequest",
    "AddResponse",
    "Attachment",
    "CheckRequest",
    "DelRequest",
    "ErrorResponse",
    "GcRequest",
    "GcResult",
    "IPConfig",
    "Route",
    "StatusRequest",
    "id_problem",
    "interface_name_problem",
]
# --- end agent side ---
