"""The Spiderpool v2beta1 objects as frozen dataclasses, parsed from the store's dict objects.

``from_obj`` turns a Kubernetes-shaped dict (see ``ipam.records.Obj``) into a typed value and raises
``ipam.errors.Invalid`` naming the object and the field when something cannot be parsed (a bad
address, a range of the wrong family, a field of the wrong type).  Rules that relate fields to each
other or to other objects (canonical subnet, ranges inside the subnet, gateway, overlaps, in-use IPs)
live in ``ipam.admission``.

Spiderpool keeps two status fields as JSON documents *inside a string*: ``SpiderIPPool
status.allocatedIPs`` and ``SpiderSubnet status.controlledIPPools``.  The encode/decode helpers here
are the one place that knows those formats.

Over 600 lines on purpose: the typed value and parser of each Spiderpool kind (pool, subnet, reserved
IP, endpoint and their parts) in one place, sharing one parse context (``_Ctx``) that names the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ipam.errors import Invalid
from ipam.kinds import SPIDER_API
from ipam.ranges import (
    Family,
    Interval,
    IntervalSet,
    canonical_cidr,
    canonical_ip,
    cidr_interval,
    cidr_label_value,
    family_of_cidr,
    family_of_ip,
    ip_to_int,
    parse_cidr,
    parse_range,
)
from ipam.selectors import LabelSelector, SelectorError

__all__ = [
    "ANNOTATION_CONTAINER_ID",
    "FINALIZER",
    "LABEL_IPPOOL_CIDR",
    "LABEL_OWNER_SUBNET",
    "LABEL_SUBNET_CIDR",
    "Endpoint",
    "IPPool",
    "NicAllocation",
    "PoolIPAllocation",
    "PreAllocation",
    "ReservedIP",
    "Route",
    "Subnet",
    "decode_allocated_ips",
    "decode_controlled_pools",
    "encode_allocated_ips",
    "encode_controlled_pools",
    "object_name",
    "reserved_set",
]

LABEL_IPPOOL_CIDR = "ipam.spidernet.io/ippool-cidr"
LABEL_SUBNET_CIDR = "ipam.spidernet.io/subnet-cidr"
LABEL_OWNER_SUBNET = "ipam.spidernet.io/owner-spider-subnet"
FINALIZER = "spiderpool.spidernet.io"
ANNOTATION_CONTAINER_ID = "spiderbgp.io/container-id"


# --------------------------------------------------------------------------------------------------
# small parsing helpers (each failure becomes Invalid(kind, name, field, reason))


def object_name(obj: Mapping[str, Any]) -> str:
    """``metadata.name`` (``namespace/name`` for namespaced objects), or ``""`` when absent."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return ""
    name = meta.get("name")
    ns = meta.get("namespace")
    name = name if isinstance(name, str) else ""
    return f"{ns}/{name}" if isinstance(ns, str) and ns else name


@dataclass(frozen=True)
class _Ctx:
    kind: str
    name: str

    def fail(self, field_path: str, reason: str) -> Invalid:
        return Invalid(self.kind, self.name, field_path, reason)

    def section(self, obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, "must be an object")
        return value

    def opt_str(self, sec: Mapping[str, Any], key: str, path: str) -> str | None:
        value = sec.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(path, f"{value!r} is not a string")
        return value

    def opt_bool(self, sec: Mapping[str, Any], key: str, path: str) -> bool:
        value = sec.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(path, f"{value!r} is not a boolean")
        return value

    def str_list(self, sec: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        value = sec.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(path, "must be a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{path}[{i}]", f"{item!r} is not a string")
        return tuple(value)

    def str_map(self, sec: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
        value = sec.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, "must be a map of strings")
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise self.fail(path, f"{k!r}: {v!r} is not a string pair")
        return dict(value)

    def selector(self, sec: Mapping[str, Any], key: str, path: str) -> LabelSelector | None:
        value = sec.get(key)
        if value is None:
            return None
        try:
            return LabelSelector.parse(value, path)
        except SelectorError as err:
            raise self.fail(err.field, err.reason) from None

    def ranges(self, sec: Mapping[str, Any], key: str, path: str, family: int) -> IntervalSet:
        value = sec.get(key)
        if value is None:
            return IntervalSet()
        if not isinstance(value, list):
            raise self.fail(path, "must be a list of IP addresses or ranges")
        parsed: list[Interval] = []
        for i, item in enumerate(value):
            try:
                parsed.append(parse_range(item, family))
            except ValueError as err:
                raise self.fail(f"{path}[{i}]", str(err)) from None
        return IntervalSet.of(parsed)

    def ip(self, value: object, path: str, family: int) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"{value!r} is not a string")
        try:
            ip_to_int(value, family)
        except ValueError as err:
            raise self.fail(path, str(err)) from None
        return canonical_ip(value)


def _metadata(ctx: _Ctx, obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return ctx.section(obj, "metadata")


def _ip_version(ctx: _Ctx, spec: Mapping[str, Any], path: str) -> Family | None:
    raw = spec.get("ipVersion")
    if raw is None:
        return None
    if isinstance(raw, bool) or raw not in (4, 6):
        raise ctx.fail(path, f"{raw!r} is not 4 or 6")
    return 4 if raw == 4 else 6


# --------------------------------------------------------------------------------------------------
# routes and the range fields shared by SpiderIPPool and SpiderSubnet


@dataclass(frozen=True)
class Route:
    dst: str  # a CIDR
    gw: str  # a bare address

    def to_obj(self) -> dict[str, str]:
        return {"dst": self.dst, "gw": self.gw}


def _routes(ctx: _Ctx, raw: object, path: str, family: int) -> tuple[Route, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ctx.fail(path, "must be a list of {dst, gw}")
    out: list[Route] = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise ctx.fail(where, "must be an object with dst and gw")
        dst = item.get("dst")
        if not isinstance(dst, str) or not dst:
            raise ctx.fail(f"{where}.dst", "is required")
        try:
            dst_family = family_of_cidr(dst)
        except ValueError as err:
            raise ctx.fail(f"{where}.dst", str(err)) from None
        if dst_family != family:
            raise ctx.fail(f"{where}.dst", f'"{dst}" is not an IPv{family} CIDR')
        gw = item.get("gw")
        if not isinstance(gw, str) or not gw:
            raise ctx.fail(f"{where}.gw", "is required")
        out.append(Route(canonical_cidr(dst), ctx.ip(gw, f"{where}.gw", family)))
    return tuple(out)


@dataclass(frozen=True)
class _RangeFields:
    ip_version: Family
    subnet: str
    prefix_len: int
    ips: IntervalSet
    exclude_ips: IntervalSet
    gateway: str | None
    routes: tuple[Route, ...]


def _range_fields(ctx: _Ctx, spec: Mapping[str, Any]) -> _RangeFields:
    version = _ip_version(ctx, spec, "spec.ipVersion")
    subnet = spec.get("subnet")
    if subnet is None or subnet == "":
        raise ctx.fail("spec.subnet", "is required")
    if not isinstance(subnet, str):
        raise ctx.fail("spec.subnet", f"{subnet!r} is not a string")
    try:
        net = parse_cidr(subnet)
    except ValueError as err:
        raise ctx.fail("spec.subnet", str(err)) from None
    family: Family = 4 if net.version == 4 else 6
    if version is not None and version != family:
        raise ctx.fail("spec.ipVersion", f"{version} does not match spec.subnet {subnet} (IPv{family})")
    gateway_raw = spec.get("gateway")
    gateway = None if gateway_raw is None else ctx.ip(gateway_raw, "spec.gateway", family)
    return _RangeFields(
        ip_version=family,
        subnet=subnet,
        prefix_len=int(net.prefixlen),
        ips=ctx.ranges(spec, "ips", "spec.ips", family),
        exclude_ips=ctx.ranges(spec, "excludeIPs", "spec.excludeIPs", family),
        gateway=gateway,
        routes=_routes(ctx, spec.get("routes"), "spec.routes", family),
    )


# --------------------------------------------------------------------------------------------------
# status.allocatedIPs (SpiderIPPool) and status.controlledIPPools (SpiderSubnet)


@dataclass(frozen=True)
class PoolIPAllocation:
    """One value of ``status.allocatedIPs``: ``{"pod": "ns/name", "podUid": "uid"}``."""

    pod: str
    pod_uid: str


def decode_allocated_ips(text: str | None) -> dict[str, PoolIPAllocation]:
    """Parse the ``status.allocatedIPs`` JSON string (absent or empty means nothing is allocated).

    ValueError with a reason when the document is malformed."""
    if text is None or text == "":
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at position {err.pos})") from None
    if not isinstance(doc, dict):
        raise ValueError("must be a JSON object of IP -> {pod, podUid}")
    out: dict[str, PoolIPAllocation] = {}
    for ip, rec in doc.items():
        if not isinstance(rec, dict):
            raise ValueError(f"record of {ip} must be an object")
        pod, uid = rec.get("pod"), rec.get("podUid")
        if not isinstance(pod, str) or not isinstance(uid, str):
            raise ValueError(f"record of {ip} needs string pod and podUid")
        try:
            key = canonical_ip(ip)
        except ValueError as err:
            raise ValueError(f"key {err}") from None
        out[key] = PoolIPAllocation(pod, uid)
    return out


def encode_allocated_ips(records: Mapping[str, PoolIPAllocation]) -> str | None:
    """The ``status.allocatedIPs`` string for these records; None (field absent) when there are none.

    Keys are sorted as Go's encoding/json sorts map keys, so the text matches Spiderpool's."""
    if not records:
        return None
    doc = {ip: {"pod": rec.pod, "podUid": rec.pod_uid} for ip, rec in records.items()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class PreAllocation:
    """One value of SpiderSubnet ``status.controlledIPPools``: the IPs a pool takes from the subnet."""

    ips: tuple[str, ...]
    application: str | None = None  # e.g. "apps_v1_Deployment_default_nginx", only for auto-pools


def decode_controlled_pools(text: str | None) -> dict[str, PreAllocation]:
    """Parse ``status.controlledIPPools`` (``{"pool": {"ips": [...], "application": "..."}}``)."""
    if text is None or text == "":
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at position {err.pos})") from None
    if not isinstance(doc, dict):
        raise ValueError("must be a JSON object of pool -> {ips, application}")
    out: dict[str, PreAllocation] = {}
    for pool, rec in doc.items():
        if not isinstance(rec, dict):
            raise ValueError(f"record of pool {pool} must be an object")
        ips = rec.get("ips", [])
        app = rec.get("application")
        if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
            raise ValueError(f"ips of pool {pool} must be a list of strings")
        if app is not None and not isinstance(app, str):
            raise ValueError(f"application of pool {pool} must be a string")
        out[pool] = PreAllocation(tuple(ips), app or None)
    return out


def encode_controlled_pools(pools: Mapping[str, PreAllocation]) -> str | None:
    if not pools:
        return None
    doc: dict[str, dict[str, Any]] = {}
    for name, rec in pools.items():
        entry: dict[str, Any] = {"ips": list(rec.ips)}
        if rec.application:
            entry["application"] = rec.application
        doc[name] = entry
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------------------
# SpiderIPPool


class _Ranged:
    """What SpiderIPPool and SpiderSubnet derive from their ``subnet``, ``ips`` and ``excludeIPs``."""

    subnet: str
    ips: IntervalSet
    exclude_ips: IntervalSet

    @cached_property
    def usable(self) -> IntervalSet:
        """The addresses that may be handed out: ``ips - excludeIPs`` (reserved IPs not subtracted)."""
        return self.ips.difference(self.exclude_ips)

    @property
    def subnet_interval(self) -> Interval:
        return cidr_interval(self.subnet)

    @property
    def cidr_label(self) -> str:
        """The ``ipam.spidernet.io/ippool-cidr`` (or ``subnet-cidr``) label value of the subnet."""
        return cidr_label_value(canonical_cidr(self.subnet))


@dataclass(frozen=True)
class IPPool(_Ranged):
    name: str
    resource_version: str
    uid: str
    ip_version: Family
    subnet: str
    prefix_len: int
    ips: IntervalSet
    exclude_ips: IntervalSet
    gateway: str | None = None
    routes: tuple[Route, ...] = ()
    pod_affinity: LabelSelector | None = None
    namespace_affinity: LabelSelector | None = None
    namespace_name: tuple[str, ...] = ()
    node_affinity: LabelSelector | None = None
    node_name: tuple[str, ...] = ()
    multus_name: tuple[str, ...] = ()
    default: bool = False
    disable: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    terminating: bool = False

    KIND = "SpiderIPPool"

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> IPPool:
        ctx = _Ctx(cls.KIND, object_name(obj))
        meta = _metadata(ctx, obj)
        spec = ctx.section(obj, "spec")
        rf = _range_fields(ctx, spec)
        return cls(
            name=ctx.name,
            resource_version=str(meta.get("resourceVersion") or ""),
            uid=str(meta.get("uid") or ""),
            ip_version=rf.ip_version,
            subnet=rf.subnet,
            prefix_len=rf.prefix_len,
            ips=rf.ips,
            exclude_ips=rf.exclude_ips,
            gateway=rf.gateway,
            routes=rf.routes,
            pod_affinity=ctx.selector(spec, "podAffinity", "spec.podAffinity"),
            namespace_affinity=ctx.selector(spec, "namespaceAffinity", "spec.namespaceAffinity"),
            namespace_name=ctx.str_list(spec, "namespaceName", "spec.namespaceName"),
            node_affinity=ctx.selector(spec, "nodeAffinity", "spec.nodeAffinity"),
            node_name=ctx.str_list(spec, "nodeName", "spec.nodeName"),
            multus_name=ctx.str_list(spec, "multusName", "spec.multusName"),
            default=ctx.opt_bool(spec, "default", "spec.default"),
            disable=ctx.opt_bool(spec, "disable", "spec.disable"),
            labels=ctx.str_map(meta, "labels", "metadata.labels"),
            annotations=ctx.str_map(meta, "annotations", "metadata.annotations"),
            terminating=bool(meta.get("deletionTimestamp")),
        )


# --------------------------------------------------------------------------------------------------
# SpiderSubnet


@dataclass(frozen=True)
class Subnet(_Ranged):
    """A SpiderSubnet: the same range fields as a pool, plus the pools it has handed IPs to."""

    name: str
    resource_version: str
    uid: str
    ip_version: Family
    subnet: str
    prefix_len: int
    ips: IntervalSet
    exclude_ips: IntervalSet
    gateway: str | None = None
    routes: tuple[Route, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    terminating: bool = False
    controlled_pools: Mapping[str, PreAllocation] = field(default_factory=dict)

    KIND = "SpiderSubnet"

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> Subnet:
        ctx = _Ctx(cls.KIND, object_name(obj))
        meta = _metadata(ctx, obj)
        spec = ctx.section(obj, "spec")
        status = ctx.section(obj, "status")
        rf = _range_fields(ctx, spec)
        raw_controlled = status.get("controlledIPPools")
        if raw_controlled is not None and not isinstance(raw_controlled, str):
            raise ctx.fail("status.controlledIPPools", "must be a JSON string")
        try:
            controlled = decode_controlled_pools(raw_controlled)
        except ValueError as err:
            raise ctx.fail("status.controlledIPPools", str(err)) from None
        return cls(
            name=ctx.name,
            resource_version=str(meta.get("resourceVersion") or ""),
            uid=str(meta.get("uid") or ""),
            ip_version=rf.ip_version,
            subnet=rf.subnet,
            prefix_len=rf.prefix_len,
            ips=rf.ips,
            exclude_ips=rf.exclude_ips,
            gateway=rf.gateway,
            routes=rf.routes,
            labels=ctx.str_map(meta, "labels", "metadata.labels"),
            annotations=ctx.str_map(meta, "annotations", "metadata.annotations"),
            terminating=bool(meta.get("deletionTimestamp")),
            controlled_pools=controlled,
        )


# --------------------------------------------------------------------------------------------------
# SpiderReservedIP


@dataclass(frozen=True)
class ReservedIP:
    name: str
    resource_version: str
    ip_version: Family | None  # None only when both spec.ipVersion and spec.ips are empty
    ips: IntervalSet
    terminating: bool = False

    KIND = "SpiderReservedIP"

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> ReservedIP:
        ctx = _Ctx(cls.KIND, object_name(obj))
        meta = _metadata(ctx, obj)
        spec = ctx.section(obj, "spec")
        version = _ip_version(ctx, spec, "spec.ipVersion")
        items = ctx.str_list(spec, "ips", "spec.ips")
        if items:
            try:
                first_family = family_of_ip(items[0].partition("-")[0])
            except ValueError as err:
                raise ctx.fail("spec.ips[0]", str(err)) from None
            if version is not None and version != first_family:
                raise ctx.fail("spec.ipVersion", f"{version} does not match spec.ips[0] {items[0]}")
            version = first_family
        ips = ctx.ranges(spec, "ips", "spec.ips", version) if version is not None else IntervalSet()
        return cls(
            name=ctx.name,
            resource_version=str(meta.get("resourceVersion") or ""),
            ip_version=version,
            ips=ips,
            terminating=bool(meta.get("deletionTimestamp")),
        )


def reserved_set(reserved: Iterable[ReservedIP], family: int) -> IntervalSet:
    """All addresses of one family held by non-terminating SpiderReservedIPs."""
    parts: list[Interval] = []
    for r in reserved:
        if r.ip_version == family and not r.terminating:
            parts.extend(r.ips.intervals)
    return IntervalSet.of(parts)


# --------------------------------------------------------------------------------------------------
# SpiderEndpoint


@dataclass(frozen=True)
class NicAllocation:
    """One entry of ``status.current.ips``: the addresses of one pod interface."""

    interface: str
    ipv4: str | None = None  # CIDR form, "172.31.199.193/20"
    ipv6: str | None = None
    ipv4_pool: str | None = None
    ipv6_pool: str | None = None
    ipv4_gateway: str | None = None
    ipv6_gateway: str | None = None
    clean_gateway: bool = False
    routes: tuple[Route, ...] = ()
    vlan: int = 0
    mac: str | None = None

    def to_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"interface": self.interface}
        for key, value in (
            ("ipv4", self.ipv4),
            ("ipv4Pool", self.ipv4_pool),
            ("ipv4Gateway", self.ipv4_gateway),
            ("ipv6", self.ipv6),
            ("ipv6Pool", self.ipv6_pool),
            ("ipv6Gateway", self.ipv6_gateway),
            ("mac", self.mac),
        ):
            if value is not None:
                out[key] = value
        out["cleanGateway"] = self.clean_gateway
        if self.routes:
            out["routes"] = [r.to_obj() for r in self.routes]
        out["vlan"] = self.vlan
        return out


@dataclass(frozen=True)
class Endpoint:
    """A SpiderEndpoint: which addresses a pod holds, per interface, and who owns the pod.

    ``container_id`` is ours (Spiderpool has no such field): it is kept in the metadata annotation
    ``spiderbgp.io/container-id`` so CNI DEL can match the container that was added."""

    namespace: str
    name: str
    uid: str  # the pod UID
    node: str
    ips: tuple[NicAllocation, ...]
    owner_controller_type: str
    owner_controller_name: str
    container_id: str = ""
    resource_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)  # others than the container ID
    owner_references: tuple[Mapping[str, Any], ...] = ()
    finalizers: tuple[str, ...] = ()

    KIND = "SpiderEndpoint"

    def nic(self, interface: str) -> NicAllocation | None:
        return next((n for n in self.ips if n.interface == interface), None)

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> Endpoint:
        ctx = _Ctx(cls.KIND, object_name(obj))
        meta = _metadata(ctx, obj)
        status = ctx.section(obj, "status")
        current = status.get("current")
        if current is None:
            current = {}
        if not isinstance(current, Mapping):
            raise ctx.fail("status.current", "must be an object")
        raw_ips = current.get("ips")
        if raw_ips is None:
            raw_ips = []
        if not isinstance(raw_ips, list):
            raise ctx.fail("status.current.ips", "must be a list")
        nics: list[NicAllocation] = []
        for i, item in enumerate(raw_ips):
            path = f"status.current.ips[{i}]"
            if not isinstance(item, Mapping):
                raise ctx.fail(path, "must be an object")
            iface = item.get("interface")
            if not isinstance(iface, str):  # "" is an entry of a no-name ippools pod not yet named
                raise ctx.fail(f"{path}.interface", "is required")
            vlan = item.get("vlan", 0)
            if vlan is None:
                vlan = 0
            if isinstance(vlan, bool) or not isinstance(vlan, int) or not 0 <= vlan <= 4094:
                raise ctx.fail(f"{path}.vlan", f"{vlan!r} is not an integer in 0..4094")
            nics.append(
                NicAllocation(
                    interface=iface,
                    ipv4=ctx.opt_str(item, "ipv4", f"{path}.ipv4"),
                    ipv6=ctx.opt_str(item, "ipv6", f"{path}.ipv6"),
                    ipv4_pool=ctx.opt_str(item, "ipv4Pool", f"{path}.ipv4Pool"),
                    ipv6_pool=ctx.opt_str(item, "ipv6Pool", f"{path}.ipv6Pool"),
                    ipv4_gateway=ctx.opt_str(item, "ipv4Gateway", f"{path}.ipv4Gateway"),
                    ipv6_gateway=ctx.opt_str(item, "ipv6Gateway", f"{path}.ipv6Gateway"),
                    clean_gateway=ctx.opt_bool(item, "cleanGateway", f"{path}.cleanGateway"),
                    routes=_endpoint_routes(ctx, item.get("routes"), f"{path}.routes"),
                    vlan=vlan,
                    mac=ctx.opt_str(item, "mac", f"{path}.mac"),
                )
            )
        owner_refs = meta.get("ownerReferences") or []
        if not isinstance(owner_refs, list) or not all(isinstance(r, Mapping) for r in owner_refs):
            raise ctx.fail("metadata.ownerReferences", "must be a list of objects")
        annotations = ctx.str_map(meta, "annotations", "metadata.annotations")
        return cls(
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
            uid=ctx.opt_str(current, "uid", "status.current.uid") or "",
            node=ctx.opt_str(current, "node", "status.current.node") or "",
            ips=tuple(nics),
            owner_controller_type=ctx.opt_str(status, "ownerControllerType", "status.ownerControllerType")
            or "",
            owner_controller_name=ctx.opt_str(status, "ownerControllerName", "status.ownerControllerName")
            or "",
            container_id=annotations.get(ANNOTATION_CONTAINER_ID, ""),
            resource_version=str(meta.get("resourceVersion") or ""),
            labels=ctx.str_map(meta, "labels", "metadata.labels"),
            annotations={k: v for k, v in annotations.items() if k != ANNOTATION_CONTAINER_ID},
            owner_references=tuple(dict(r) for r in owner_refs),
            finalizers=ctx.str_list(meta, "finalizers", "metadata.finalizers"),
        )

    def to_obj(self) -> dict[str, Any]:
        """The object to store (``resourceVersion`` included when known, as a write precondition)."""
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        if self.labels:
            meta["labels"] = dict(self.labels)
        annotations = dict(self.annotations)
        if self.container_id:
            annotations[ANNOTATION_CONTAINER_ID] = self.container_id
        if annotations:
            meta["annotations"] = annotations
        if self.owner_references:
            meta["ownerReferences"] = [dict(r) for r in self.owner_references]
        if self.finalizers:
            meta["finalizers"] = list(self.finalizers)
        return {
            "apiVersion": SPIDER_API,
            "kind": self.KIND,
            "metadata": meta,
            "status": {
                "current": {
                    "uid": self.uid,
                    "node": self.node,
                    "ips": [n.to_obj() for n in self.ips],
                },
                "ownerControllerType": self.owner_controller_type,
                "ownerControllerName": self.owner_controller_name,
            },
        }


def _endpoint_routes(ctx: _Ctx, raw: object, path: str) -> tuple[Route, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ctx.fail(path, "must be a list of {dst, gw}")
    out: list[Route] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise ctx.fail(f"{path}[{i}]", "must be an object with dst and gw")
        dst, gw = item.get("dst"), item.get("gw")
        if not isinstance(dst, str) or not isinstance(gw, str):
            raise ctx.fail(f"{path}[{i}]", "dst and gw must be strings")
        out.append(Route(dst, gw))
    return tuple(out)
