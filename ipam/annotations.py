"""Spiderpool's ``ipam.spidernet.io/*`` annotations on pods and namespaces, parsed into frozen values.

Every parser takes the raw annotation text and a ``where`` (the pod's ``namespace/name`` or the
namespace's name) and either returns a frozen value or raises :class:`AnnotationError`, whose text is
one line naming the object and the annotation key, e.g.::

    Pod "default/web-0": metadata.annotations[ipam.spidernet.io/ippool]: ipv4: expected a list of pool names

Nothing else escapes a parser, whatever the input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import netaddr

from ipam.errors import Invalid

__all__ = [
    "ANNO_IPPOOL",
    "ANNO_IPPOOLS",
    "ANNO_IP_NUMBER",
    "ANNO_NS_DEFAULT_V4",
    "ANNO_NS_DEFAULT_V6",
    "ANNO_RECLAIM",
    "ANNO_ROUTES",
    "ANNO_SUBNET",
    "ANNO_SUBNETS",
    "DEFAULT_NIC",
    "AnnotationError",
    "AnnotationRoute",
    "IPNumber",
    "IPPoolAnnotation",
    "IPPoolsAnnotation",
    "NamespaceDefaults",
    "NicPools",
    "PodIPAMAnnotations",
    "SubnetChoice",
    "SubnetsAnnotation",
    "parse_bool",
    "parse_ip_number",
    "parse_ippool",
    "parse_ippools",
    "parse_namespace_defaults",
    "parse_pod_annotations",
    "parse_reclaim",
    "parse_routes",
    "parse_subnet",
    "parse_subnets",
]

PREFIX: Final = "ipam.spidernet.io/"
ANNO_IPPOOL: Final = PREFIX + "ippool"
ANNO_IPPOOLS: Final = PREFIX + "ippools"
ANNO_SUBNET: Final = PREFIX + "subnet"
ANNO_SUBNETS: Final = PREFIX + "subnets"
ANNO_IP_NUMBER: Final = PREFIX + "ippool-ip-number"
ANNO_RECLAIM: Final = PREFIX + "ippool-reclaim"
ANNO_ROUTES: Final = PREFIX + "routes"
ANNO_NS_DEFAULT_V4: Final = PREFIX + "default-ipv4-ippool"
ANNO_NS_DEFAULT_V6: Final = PREFIX + "default-ipv6-ippool"

DEFAULT_NIC: Final = "eth0"

# Largest ippool-ip-number accepted (Go's Atoi is bounded by int64 as well).
_MAX_IP_NUMBER: Final = 2**63 - 1
_IP_NUMBER_RE: Final = re.compile(r"(\+?)([0-9]{1,19})")
# strconv.ParseBool's accepted spellings.
_TRUE: Final = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "false", "FALSE", "False"})


class AnnotationError(Invalid):
    """A malformed ``ipam.spidernet.io/*`` annotation on a pod or a namespace."""

    def __init__(self, kind: str, where: str, key: str, reason: str) -> None:
        self.key = key
        super().__init__(kind, where, f"metadata.annotations[{key}]", reason)


@dataclass(frozen=True)
class IPPoolAnnotation:
    """``ipam.spidernet.io/ippool``: candidate pools of the NIC in the current CNI call.

    An empty family means "do not allocate that family for this NIC"."""

    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


@dataclass(frozen=True)
class NicPools:
    """One item of ``ipam.spidernet.io/ippools``. ``interface`` is "" in the no-name (by index) form."""

    interface: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    clean_gateway: bool


@dataclass(frozen=True)
class IPPoolsAnnotation:
    """``ipam.spidernet.io/ippools``: per-NIC candidate pools, all NICs allocated on the first ADD."""

    items: tuple[NicPools, ...]

    @property
    def named(self) -> bool:
        return bool(self.items) and self.items[0].interface != ""


@dataclass(frozen=True)
class SubnetChoice:
    """One NIC of the ``subnet``/``subnets`` annotations: the (first) SpiderSubnet per family."""

    interface: str
    ipv4: str | None
    ipv6: str | None


@dataclass(frozen=True)
class SubnetsAnnotation:
    """``subnets`` (or ``subnet``, as a single item): auto-pool mode."""

    items: tuple[SubnetChoice, ...]
    key: str  # which annotation it came from (for messages)

    def for_nic(self, nic: str) -> SubnetChoice | None:
        for item in self.items:
            if item.interface == nic:
                return item
        return None


@dataclass(frozen=True)
class IPNumber:
    """``ippool-ip-number``: ``flexible`` means replicas + ``count``, else exactly ``count``."""

    flexible: bool
    count: int

    def desired(self, replicas: int) -> int:
        return replicas + self.count if self.flexible else self.count

    def __str__(self) -> str:
        return f"+{self.count}" if self.flexible else str(self.count)


@dataclass(frozen=True)
class AnnotationRoute:
    """One item of ``ipam.spidernet.io/routes``; ``dst`` is canonical CIDR text, ``gw`` canonical IP text."""

    dst: str
    gw: str
    version: int  # 4 or 6


@dataclass(frozen=True)
class NamespaceDefaults:
    """A namespace's ``default-ipv4-ippool`` / ``default-ipv6-ippool`` lists."""

    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.ipv4 and not self.ipv6


@dataclass(frozen=True)
class PodIPAMAnnotations:
    """Every IPAM annotation of one pod, parsed; ``None`` where the annotation is absent."""

    ippool: IPPoolAnnotation | None
    ippools: IPPoolsAnnotation | None
    subnets: SubnetsAnnotation | None  # ``subnets`` wins over ``subnet``
    ip_number: IPNumber | None
    reclaim: bool  # default True
    routes: tuple[AnnotationRoute, ...]


# --------------------------------------------------------------------------------------------------
# helpers


class _Source:
    """Where a value comes from, to build the one-line error."""

    def __init__(self, kind: str, where: str, key: str) -> None:
        self.kind, self.where, self.key = kind, where, key

    def fail(self, reason: str) -> AnnotationError:
        return AnnotationError(self.kind, self.where, self.key, reason)


def _load_json(ctx: _Source, text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ctx.fail("invalid JSON: nested too deeply") from None
    except ValueError as err:  # json.JSONDecodeError and oversized numbers
        reason = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
        raise ctx.fail(f"invalid JSON: {reason}") from None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _names(ctx: _Source, value: Any, field: str) -> tuple[str, ...]:
    """A JSON list of non-empty strings (or null/absent: empty)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ctx.fail(f"{field}: expected a list of names, got {_short(value)}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ctx.fail(f"{field}: expected a name, got {_short(item)}")
        if not item:
            raise ctx.fail(f"{field}: empty name")
        out.append(item)
    return tuple(out)


def _object(ctx: _Source, value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ctx.fail(f"{field}expected a JSON object, got {_short(value)}")
    return value


def _string(ctx: _Source, value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ctx.fail(f"{field}: expected a string, got {_short(value)}")
    return value


def _pod_ctx(pod: str, key: str) -> _Source:
    return _Source("Pod", pod, key)


# --------------------------------------------------------------------------------------------------
# pod annotations


def parse_ippool(text: str, *, pod: str) -> IPPoolAnnotation:
    """``{"ipv4":["p1","p2"],"ipv6":["p6"]}`` → :class:`IPPoolAnnotation`."""
    ctx = _pod_ctx(pod, ANNO_IPPOOL)
    obj = _object(ctx, _load_json(ctx, text), "")
    return IPPoolAnnotation(
        ipv4=_names(ctx, obj.get("ipv4"), "ipv4"), ipv6=_names(ctx, obj.get("ipv6"), "ipv6")
    )


def parse_ippools(text: str, *, pod: str, nic: str | None = None) -> IPPoolsAnnotation:
    """The multi-NIC list form.  Either every item names its ``interface`` or none does; names are
    unique; with names, ``nic`` (the NIC of the current CNI call, when given) must be one of them."""
    ctx = _pod_ctx(pod, ANNO_IPPOOLS)
    raw = _load_json(ctx, text)
    if not isinstance(raw, list):
        raise ctx.fail(f"expected a JSON list of {{interface, ipv4, ipv6, cleangateway}}, got {_short(raw)}")
    if not raw:
        raise ctx.fail("the list needs at least one item")
    items: list[NicPools] = []
    for index, value in enumerate(raw):
        field = f"[{index}]"
        obj = _object(ctx, value, field + ": ")
        clean = obj.get("cleangateway", False)
        if clean is None:
            clean = False
        if not isinstance(clean, bool):
            raise ctx.fail(f"{field}.cleangateway: expected true or false, got {_short(clean)}")
        items.append(
            NicPools(
                interface=_string(ctx, obj.get("interface"), field + ".interface"),
                ipv4=_names(ctx, obj.get("ipv4"), field + ".ipv4"),
                ipv6=_names(ctx, obj.get("ipv6"), field + ".ipv6"),
                clean_gateway=clean,
            )
        )
    named = [item.interface != "" for item in items]
    if any(named) and not all(named):
        missing = named.index(False)
        raise ctx.fail(f"[{missing}].interface: either every item names its interface or none does")
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.interface and item.interface in seen:
            raise ctx.fail(f"[{index}].interface: duplicate interface {item.interface}")
        seen.add(item.interface)
    result = IPPoolsAnnotation(items=tuple(items))
    if nic is not None and result.named and nic not in seen:
        raise ctx.fail(f"interface {nic} of this CNI call is not listed (listed: {', '.join(sorted(seen))})")
    return result


def _subnet_item(ctx: _Source, value: Any, field: str, default_nic: str) -> SubnetChoice:
    obj = _object(ctx, value, field + ": " if field else "")
    prefix = field + "." if field else ""
    interface = _string(ctx, obj.get("interface"), prefix + "interface") or default_nic
    firsts: list[str | None] = []
    for family in ("ipv4", "ipv6"):
        names = _names(ctx, obj.get(family), prefix + family)
        firsts.append(names[0] if names else None)
        for name in names:
            if any(c in name for c in "*?["):
                raise ctx.fail(f"{prefix}{family}: wildcards are not allowed in subnet names ({name})")
    if firsts[0] is None and firsts[1] is None:
        raise ctx.fail(f"{prefix}ipv4/ipv6: name at least one SpiderSubnet")
    if not interface:
        raise ctx.fail(f"{prefix}interface: every item must name its interface")
    return SubnetChoice(interface=interface, ipv4=firsts[0], ipv6=firsts[1])


def parse_subnet(text: str, *, pod: str) -> SubnetsAnnotation:
    """``{"interface":"eth0","ipv4":["s4"],"ipv6":["s6"]}`` (interface defaults to eth0; only the
    first subnet of each family is used)."""
    ctx = _pod_ctx(pod, ANNO_SUBNET)
    item = _subnet_item(ctx, _load_json(ctx, text), "", DEFAULT_NIC)
    return SubnetsAnnotation(items=(item,), key=ANNO_SUBNET)


def parse_subnets(text: str, *, pod: str) -> SubnetsAnnotation:
    """``[{"interface":"eth0","ipv4":["s1"]},{"interface":"net1","ipv4":["s2"]}]``: interfaces and
    subnets unique, every item names at least one family."""
    ctx = _pod_ctx(pod, ANNO_SUBNETS)
    raw = _load_json(ctx, text)
    if not isinstance(raw, list):
        raise ctx.fail(f"expected a JSON list of {{interface, ipv4, ipv6}}, got {_short(raw)}")
    if not raw:
        raise ctx.fail("the list needs at least one item")
    items = [_subnet_item(ctx, value, f"[{i}]", "") for i, value in enumerate(raw)]
    nics: set[str] = set()
    v4: set[str] = set()
    v6: set[str] = set()
    for index, item in enumerate(items):
        if item.interface in nics:
            raise ctx.fail(f"[{index}].interface: duplicate interface {item.interface}")
        nics.add(item.interface)
        for family, name, seen in (("ipv4", item.ipv4, v4), ("ipv6", item.ipv6, v6)):
            if name is None:
                continue
            if name in seen:
                raise ctx.fail(f"[{index}].{family}: SpiderSubnet {name} is used by two interfaces")
            seen.add(name)
    return SubnetsAnnotation(items=tuple(items), key=ANNO_SUBNETS)


def parse_ip_number(text: str, *, pod: str) -> IPNumber:
    """``"N"`` (fixed) or ``"+N"`` (replicas + N), N >= 0 (ASCII digits only)."""
    ctx = _pod_ctx(pod, ANNO_IP_NUMBER)
    match = _IP_NUMBER_RE.fullmatch(text)
    if match is None:
        raise ctx.fail(f'expected "N" or "+N" with N >= 0, got {_short(text)}')
    count = int(match.group(2))
    if count > _MAX_IP_NUMBER:
        raise ctx.fail(f"{count} is too large")
    return IPNumber(flexible=match.group(1) == "+", count=count)


def parse_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool spellings; ``None`` when ``text`` is none of them."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def parse_reclaim(text: str, *, pod: str) -> bool:
    value = parse_bool(text)
    if value is None:
        raise _pod_ctx(pod, ANNO_RECLAIM).fail(f'expected "true" or "false", got {_short(text)}')
    return value


def _ip(text: str) -> netaddr.IPAddress | None:
    try:
        return netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None


def _cidr(text: str) -> netaddr.IPNetwork | None:
    if "/" not in text:
        return None
    address, _, prefix = text.partition("/")
    if not prefix.isascii() or not prefix.isdigit() or _ip(address) is None:
        return None
    try:
        return netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None


def parse_routes(text: str, *, pod: str) -> tuple[AnnotationRoute, ...]:
    """``[{"dst":"10.0.0.0/16","gw":"192.168.1.1"}]``: dst a canonical CIDR, gw an IP of its family."""
    ctx = _pod_ctx(pod, ANNO_ROUTES)
    raw = _load_json(ctx, text)
    if not isinstance(raw, list):
        raise ctx.fail(f"expected a JSON list of {{dst, gw}}, got {_short(raw)}")
    routes: list[AnnotationRoute] = []
    for index, value in enumerate(raw):
        field = f"[{index}]"
        obj = _object(ctx, value, field + ": ")
        dst_text = _string(ctx, obj.get("dst"), field + ".dst")
        gw_text = _string(ctx, obj.get("gw"), field + ".gw")
        dst = _cidr(dst_text)
        if dst is None:
            raise ctx.fail(f"{field}.dst: {_short(dst_text)} is not a CIDR")
        if dst.ip != dst.network:
            raise ctx.fail(f"{field}.dst: {dst_text} has host bits set (did you mean {dst.cidr}?)")
        gw = _ip(gw_text)
        if gw is None:
            raise ctx.fail(f"{field}.gw: {_short(gw_text)} is not an IP address")
        if gw.version != dst.version:
            raise ctx.fail(f"{field}.gw: {gw} is IPv{gw.version} but dst {dst.cidr} is IPv{dst.version}")
        routes.append(AnnotationRoute(dst=str(dst.cidr), gw=str(gw), version=dst.version))
    return tuple(routes)


def parse_pod_annotations(
    pod: str, annotations: Mapping[str, str], *, nic: str | None = None
) -> PodIPAMAnnotations:
    """Parse every IPAM annotation a pod carries.  ``pod`` is ``namespace/name`` (for messages);
    ``nic`` is the NIC of the current CNI call (checked against a named ``ippools`` list)."""
    ippool = ippools = subnets = ip_number = None
    if (text := annotations.get(ANNO_IPPOOL)) is not None:
        ippool = parse_ippool(text, pod=pod)
    if (text := annotations.get(ANNO_IPPOOLS)) is not None:
        ippools = parse_ippools(text, pod=pod, nic=nic)
    if (text := annotations.get(ANNO_SUBNETS)) is not None:
        subnets = parse_subnets(text, pod=pod)
    elif (text := annotations.get(ANNO_SUBNET)) is not None:
        subnets = parse_subnet(text, pod=pod)
    if (text := annotations.get(ANNO_IP_NUMBER)) is not None:
        ip_number = parse_ip_number(text, pod=pod)
    reclaim = True
    if (text := annotations.get(ANNO_RECLAIM)) is not None:
        reclaim = parse_reclaim(text, pod=pod)
    routes: tuple[AnnotationRoute, ...] = ()
    if (text := annotations.get(ANNO_ROUTES)) is not None:
        routes = parse_routes(text, pod=pod)
    return PodIPAMAnnotations(
        ippool=ippool, ippools=ippools, subnets=subnets, ip_number=ip_number, reclaim=reclaim, routes=routes
    )


# --------------------------------------------------------------------------------------------------
# namespace annotations


def parse_namespace_defaults(namespace: str, annotations: Mapping[str, str]) -> NamespaceDefaults:
    """A namespace's default pool lists (JSON arrays of pool names, wildcards allowed)."""
    lists: list[tuple[str, ...]] = []
    for key in (ANNO_NS_DEFAULT_V4, ANNO_NS_DEFAULT_V6):
        text = annotations.get(key)
        if text is None:
            lists.append(())
            continue
        ctx = _Source("Namespace", namespace, key)
        raw = _load_json(ctx, text)
        if not isinstance(raw, list):
            raise ctx.fail(f'expected a JSON list of pool names like ["pool-a"], got {_short(raw)}')
        lists.append(_names(ctx, raw, "list"))
    return NamespaceDefaults(ipv4=lists[0], ipv6=lists[1])
