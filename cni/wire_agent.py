"""The agent's half of the wire schema (``cni/wire.py``): reading requests, writing responses.

The plugin never reads a request or writes a response, so none of this is in the installed plugin
program (less bytecode to load on every CNI call).  A request is read field by field from its
record's ``FIELDS`` table; then every field is checked by the plugin's own rules and some stricter
ones for what the agent stores or looks up (Kubernetes names, printable text of bounded length), so
a client other than the plugin cannot store what the plugin would never have sent.  Every failure is
one ValueError naming ``Record.field``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from cni.wire import (
    API_VERSION,
    ATTACHMENTS,
    BOOL,
    CIDRS,
    CNI_VERSIONS,
    OPT,
    STR,
    STRS,
    AddResponse,
    Attachment,
    ErrorResponse,
    IPConfig,
    Route,
    StatusRequest,
    _api_version,
    _Record,
    _Request,
)
from cni.wire_rules import (
    _FLAG,
    _OPT_TEXT,
    _REQUIRED_ARRAY,
    _TEXT,
    _TEXTS,
    _cidr,
    _Expect,
    _field,
    _obj,
    _shown,
    id_problem,
    interface_name_problem,
)

MAX_TEXT_LENGTH = 4096  # any other string of a request (netns is a path: PATH_MAX)

R = TypeVar("R", bound=_Request)


# --- what a GC released ------------------------------------------------------------------------


class GcResult(_Record):
    """What a GC released (``ip`` strings, bare addresses); the agent logs and counts them, the plugin
    ignores it (so it is not part of the plugin program)."""

    __slots__ = ("released",)
    released: tuple[str, ...]

    def __init__(self, *, released: Sequence[str] = ()) -> None:
        self._init(released=tuple(released))


# --- field rules ---------------------------------------------------------------------------------


def _text_problem(value: str, limit: int = MAX_TEXT_LENGTH) -> str:
    if len(value) > limit:
        return f"{_shown(value)} is longer than {limit} characters"
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        return f"{_shown(value)} contains the character {bad!r}"
    return ""


_DNS_ENDS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_DNS_REST = _DNS_ENDS | frozenset("-")


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


def _version_problem(value: str) -> str:
    if value not in CNI_VERSIONS:
        return f"{_shown(value)} is not one of {', '.join(CNI_VERSIONS)}"
    return ""


# (attribute, JSON key, rule): every string field a request may carry; an empty optional field passes.
_FIELD_RULES: tuple[tuple[str, str, Callable[[str], str]], ...] = (
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


def check_fields(record: _Request | StatusRequest, where: str) -> None:
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
    for i, attachment in enumerate(getattr(record, "valid_attachments", ())):
        for name, problem in (
            ("containerID", id_problem(attachment.container_id)),
            ("ifname", interface_name_problem(attachment.if_name)),
        ):
            if problem:
                raise ValueError(f"{where}.validAttachments[{i}].{name}: {problem}")


# --- reading requests ----------------------------------------------------------------------------


def _cidrs(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values: tuple[str, ...] = _field(obj, key, where, _TEXTS)
    for i, address in enumerate(values):
        _cidr(address, f"{where}.{key}[{i}]")
    return values


def _attachments(obj: Mapping[str, Any], key: str, where: str) -> list[Attachment]:
    items = _field(obj, key, where, _REQUIRED_ARRAY)
    return [Attachment.from_json(v, f"{where}.{key}[{i}]") for i, v in enumerate(items)]


# a request field's kind (its FIELDS entry) -> what the one field reader expects of it; the two
# kinds whose values are parsed further (CIDRs, attachments) read through _field too
_EXPECTS: dict[str, _Expect] = {STR: _TEXT, OPT: _OPT_TEXT, STRS: _TEXTS, BOOL: _FLAG}
_PARSERS: dict[str, Callable[[Mapping[str, Any], str, str], object]] = {
    CIDRS: _cidrs,
    ATTACHMENTS: _attachments,
}


def _read(obj: Mapping[str, Any], key: str, where: str, kind: str) -> object:
    expect = _EXPECTS.get(kind)
    return _field(obj, key, where, expect) if expect is not None else _PARSERS[kind](obj, key, where)


def read_request(cls: type[R], value: object) -> R:
    """The ``cls`` request a JSON body holds, read by its ``FIELDS`` table and checked field by
    field; ValueError naming the first bad field."""
    where = cls.__name__
    obj = _obj(value, where)
    _api_version(obj, where)
    fields: dict[str, Any] = {attr: _read(obj, key, where, kind) for attr, key, kind in cls.FIELDS}
    request = cls(**fields)
    check_fields(request, where)
    return request


def read_status_query(pairs: Iterable[tuple[str, str]]) -> StatusRequest:
    """The StatusRequest of a query string's (key, value) pairs (pools repeatable)."""
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
    request = StatusRequest(
        network=network, cni_version=version, default_ipv4_ippool=v4, default_ipv6_ippool=v6
    )
    check_fields(request, "StatusRequest")
    return request


# --- writing responses ---------------------------------------------------------------------------


def ip_config_json(ip: IPConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"address": ip.address, "pool": ip.pool, "nic": ip.nic}
    if ip.gateway:
        out["gateway"] = ip.gateway
    out["version"] = ip.version
    return out


def route_json(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"ifName": route.if_name, "dst": route.dst}
    if route.gw:
        out["gw"] = route.gw
    return out


def add_response_json(response: AddResponse) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "ips": [ip_config_json(ip) for ip in response.ips],
        "routes": [route_json(route) for route in response.routes],
    }
    if response.dns is not None:
        out["dns"] = response.dns.to_json()
    return out


def error_response_json(error: ErrorResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": API_VERSION, "code": error.code, "msg": error.msg}
    if error.details:
        out["details"] = error.details
    return out


def gc_result_json(result: GcResult) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "released": list(result.released)}


def read_gc_result(value: object) -> GcResult:
    """The GcResult of a JSON body (for clients of the agent other than the plugin, which ignores it)."""
    where = "GcResult"
    obj = _obj(value, where)
    _api_version(obj, where)
    return GcResult(released=_field(obj, "released", where, _TEXTS))
