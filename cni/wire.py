"""The versioned wire schema between the ``spiderpool`` CNI plugin and the node agent.

HTTP/1.1 + JSON over the agent's unix socket.  This module holds what both sides need: the paths,
the error codes, the records, what the plugin writes (requests' ``to_json``,
``StatusRequest.to_query``) and what it reads (responses' ``from_json``, each ValueError naming the
field); the rules of identifiers and the field readers are ``cni/wire_rules.py``.  What only the
agent needs (reading requests, writing responses, its stricter field rules) is ``cni/wire_agent.py``.
``docs/agent-api.md`` documents the endpoints with curl examples.

This module is stdlib-only *and import-free at run time*: the plugin is started once per CNI call,
and ``dataclasses``/``typing`` alone would cost more than the whole budget for its start-up (about
8 ms and 4 ms on the lab machine).  So the records are small immutable classes over ``__slots__``
(``_Record``: value equality, hashing, repr, no attribute assignment) instead of frozen dataclasses,
and typing names are only imported for the type checker.  A request's fields are one table
(``FIELDS``: attribute, JSON key, kind) from which its slots, its ``__init__``, its ``to_json`` and
the agent's reader follow.  ``to_json`` returns a JSON-shaped dict, ``from_json`` takes one (the
caller does the (de)serialization with its own JSON codec).

``spiderbgp.plugin_package`` builds the installed plugin program from this whole module and the
plugin's modules, so it must stay self-contained: no project imports, no top-level names that clash
with the plugin's (the packager refuses a clash).
"""

from __future__ import annotations

from cni.wire_rules import (
    _ARRAY,
    _CODE,
    _IP,
    _OPT_TEXT,
    _REQUIRED_ARRAY,
    _TEXT,
    _TEXTS,
    _cidr,
    _field,
    _obj,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, ClassVar, Literal

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


def _api_version(obj: Mapping[str, Any], where: str) -> None:
    # Absent means the current version; anything else is a skew between plugin and agent.
    version = obj.get("apiVersion", API_VERSION)
    if version != API_VERSION:
        raise ValueError(
            f"{where}.apiVersion: {version!r} is not supported (this side speaks {API_VERSION!r})"
        )


# --- records -------------------------------------------------------------------------------------


class _Record:
    """An immutable value: fields are ``__slots__``, equality and hash by type and field values."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def _init(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def _fill(self, values: Mapping[str, Any]) -> None:
        """Set every slot from ``values``, an ``__init__``'s ``locals()``: each field is written once
        in the signature, not again as an argument."""
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

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


# --- requests: one field table each --------------------------------------------------------------

# Kinds of request fields: how to_json writes them and cni/wire_agent.py reads them.
STR = "str"  # a string that must not be empty
OPT = "opt"  # a string that may be empty or absent
STRS = "strs"  # an array of non-empty strings (a tuple here)
BOOL = "bool"
CIDRS = "cidrs"  # an array of "ip/prefix" strings (a tuple here)
ATTACHMENTS = "attachments"  # a required array of Attachment objects (a tuple here)
_SCALAR_KINDS = (STR, OPT, BOOL)

# (attribute, JSON key, kind): the fields requests share.
_CONTAINER_ID = ("container_id", "containerID", STR)
_IF_NAME = ("if_name", "ifName", STR)
_POD_UID = ("pod_uid", "podUID", OPT)
_CNI_VERSION = ("cni_version", "cniVersion", STR)
_NETWORK = ("network", "network", STR)
# DEL and CHECK carry what the runtime gave, possibly nothing; ADD needs the netns and the pod
_OPTIONAL_POD = (
    ("netns", "netns", OPT),
    ("pod_namespace", "podNamespace", OPT),
    ("pod_name", "podName", OPT),
)


def _attributes(fields: tuple[tuple[str, str, str], ...]) -> tuple[str, ...]:
    return tuple(attr for attr, _key, _kind in fields)


class _Request(_Record):
    """A request the plugin sends: ``FIELDS`` lists its fields in JSON order, as (attribute, JSON
    key, kind); ``__slots__``, ``__init__`` (``_fill``), ``to_json`` and the agent's reader follow it."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[tuple[str, str, str], ...]] = ()

    def _fill(self, values: Mapping[str, Any]) -> None:
        """Set every field from ``values`` (an ``__init__``'s ``locals()``), sequences as tuples."""
        for attr, _key, kind in self.FIELDS:
            value = values[attr]
            object.__setattr__(self, attr, value if kind in _SCALAR_KINDS else tuple(value))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"apiVersion": API_VERSION}
        for attr, key, kind in self.FIELDS:
            value = getattr(self, attr)
            if kind in _SCALAR_KINDS:
                out[key] = value
            elif kind == ATTACHMENTS:
                out[key] = [a.to_json() for a in value]
            else:
                out[key] = list(value)
        return out


class AddRequest(_Request):
    """``POST /v1/cni/add``: allocate the IPs of one pod interface (idempotent per containerID+ifName)."""

    FIELDS = (
        _CONTAINER_ID,
        _IF_NAME,
        ("netns", "netns", STR),
        ("pod_namespace", "podNamespace", STR),
        ("pod_name", "podName", STR),
        _POD_UID,
        ("default_ipv4_ippool", "defaultIPv4IPPool", STRS),
        ("default_ipv6_ippool", "defaultIPv6IPPool", STRS),
        ("clean_gateway", "cleanGateway", BOOL),
        _CNI_VERSION,
        _NETWORK,
    )
    __slots__ = _attributes(FIELDS)
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
        self._fill(locals())


class DelRequest(_Request):
    """``POST /v1/cni/del``: release what (containerID, ifName) holds; unknown ones succeed."""

    FIELDS = (_CONTAINER_ID, _IF_NAME, *_OPTIONAL_POD, _POD_UID, _CNI_VERSION, _NETWORK)
    __slots__ = _attributes(FIELDS)
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
        self._fill(locals())


class CheckRequest(_Request):
    """``POST /v1/cni/check``: the reservation of (containerID, ifName) must hold exactly ``ips``."""

    FIELDS = (
        _CONTAINER_ID,
        _IF_NAME,
        *_OPTIONAL_POD,
        _POD_UID,
        ("ips", "ips", CIDRS),
        _CNI_VERSION,
        _NETWORK,
    )
    __slots__ = _attributes(FIELDS)
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
        self._fill(locals())


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
        return cls(
            container_id=_field(obj, "containerID", where, _TEXT), if_name=_field(obj, "ifname", where, _TEXT)
        )


class GcRequest(_Request):
    """``POST /v1/cni/gc``: release this node's records of ``network`` not in ``valid_attachments``."""

    FIELDS = (_NETWORK, _CNI_VERSION, ("valid_attachments", "validAttachments", ATTACHMENTS))
    __slots__ = _attributes(FIELDS)
    network: str
    cni_version: str
    valid_attachments: tuple[Attachment, ...]

    def __init__(
        self, *, network: str, valid_attachments: Iterable[Attachment], cni_version: str = "1.1.0"
    ) -> None:
        self._fill(locals())


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

    @classmethod
    def from_json(cls, value: object) -> ErrorResponse:
        where = "ErrorResponse"
        obj = _obj(value, where)
        return cls(
            code=_field(obj, "code", where, _CODE),
            msg=_field(obj, "msg", where, _TEXT),
            details=_field(obj, "details", where, _OPT_TEXT),
        )


# --- responses (the plugin reads them; cni/wire_agent.py writes them) ---------------------------


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

    @classmethod
    def from_json(cls, value: object, where: str = "IPConfig") -> IPConfig:
        obj = _obj(value, where)
        address = _field(obj, "address", where, _TEXT)
        version = _cidr(address, f"{where}.address")
        stated = obj.get("version", version)
        if stated not in (4, 6) or isinstance(stated, bool):
            raise ValueError(f"{where}.version: expected 4 or 6, got {stated!r}")
        if stated != version:
            raise ValueError(f"{where}.version: {stated} does not match address {address!r}")
        gateway = _field(obj, "gateway", where, _IP)
        if gateway is not None and (":" in gateway) != (version == 6):
            raise ValueError(f"{where}.gateway: {gateway!r} is not an IPv{version} address")
        return cls(address=address, gateway=gateway, pool=_field(obj, "pool", where, _OPT_TEXT),
                   nic=_field(obj, "nic", where, _TEXT))  # fmt: skip


class Route(_Record):
    """A route for interface ``if_name``; ``gw`` unset means "via the gateway of the same family"."""

    __slots__ = ("dst", "gw", "if_name")
    if_name: str
    dst: str
    gw: str | None

    def __init__(self, *, if_name: str, dst: str, gw: str | None = None) -> None:
        self._init(if_name=if_name, dst=dst, gw=gw or None)

    @classmethod
    def from_json(cls, value: object, where: str = "Route") -> Route:
        obj = _obj(value, where)
        dst = _field(obj, "dst", where, _TEXT)
        version = _cidr(dst, f"{where}.dst")
        gw = _field(obj, "gw", where, _IP)
        if gw is not None and (":" in gw) != (version == 6):
            raise ValueError(f"{where}.gw: {gw!r} is not an IPv{version} address like dst {dst!r}")
        return cls(if_name=_field(obj, "ifName", where, _TEXT), dst=dst, gw=gw)


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
            nameservers=_field(obj, "nameservers", where, _TEXTS),
            domain=_field(obj, "domain", where, _OPT_TEXT),
            search=_field(obj, "search", where, _TEXTS),
            options=_field(obj, "options", where, _TEXTS),
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

    @classmethod
    def from_json(cls, value: object) -> AddResponse:
        where = "AddResponse"
        obj = _obj(value, where)
        _api_version(obj, where)
        ips = [
            IPConfig.from_json(v, f"{where}.ips[{i}]")
            for i, v in enumerate(_field(obj, "ips", where, _REQUIRED_ARRAY))
        ]
        if not ips:
            raise ValueError(f"{where}.ips: must hold at least one address")
        routes = [
            Route.from_json(v, f"{where}.routes[{i}]")
            for i, v in enumerate(_field(obj, "routes", where, _ARRAY))
        ]
        dns = None if obj.get("dns") is None else DNS.from_json(obj["dns"], f"{where}.dns")
        return cls(ips=ips, routes=routes, dns=dns)
