"""Admission: what Spiderpool's mutating and validating webhooks do on every write, as pure functions.

:func:`admit` takes the object being written, the stored version it replaces (for an update), the
other stored objects it must not collide with, and the IPs in use; it returns the mutated object or
raises ``ipam.errors.Invalid`` naming the object, the field and the reason, in one line.  It never
changes its inputs, so a rejected write changes nothing.

Mutation (as Spiderpool's webhook): ``spec.ipVersion`` from the subnet (from ``ips[0]`` for a
SpiderReservedIP), the ``ipam.spidernet.io/ippool-cidr`` label (``subnet-cidr`` on a SpiderSubnet),
``ips``/``excludeIPs`` merged and sorted, ``default``/``disable`` defaulted to false, and, when a
SpiderSubnet of the same CIDR exists (and is not being deleted), the pool's controller owner reference
and label and the subnet's gateway and routes where the pool has none (:func:`adopt`, which the subnet
controller also uses for pools written before their subnet).  Every check works on intervals: O(ranges + objects + in-use IPs),
never O(addresses).

Over 600 lines on purpose: it is the one admission of every kind the store takes (Spiderpool's webhooks
for pools, subnets and reserved IPs; the API server's metadata rules), and the kinds share its range,
overlap and in-use helpers.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from ipam.blocks import (
    BLOCK_API,
    BLOCK_KIND,
    BLOCK_SIZE_ANNOTATION,
    BLOCK_SIZE_NONE,
    block_size_of,
    parse_block,
)
from ipam.errors import Invalid
from ipam.kinds import SPIDER_API
from ipam.model import (
    LABEL_IPPOOL_CIDR,
    LABEL_OWNER_SUBNET,
    LABEL_SUBNET_CIDR,
    IPPool,
    ReservedIP,
    Subnet,
    object_name,
)
from ipam.ranges import (
    IntervalSet,
    canonical_cidr,
    cidr_interval,
    cidr_label_value,
    int_to_ip,
    ip_to_int,
    is_canonical_cidr,
    parse_cidr,
    total_ip_count,
)
from ipam.records import Obj

__all__ = [
    "MAX_ANNOTATIONS_BYTES",
    "MAX_OBJECT_BYTES",
    "admit",
    "adopt",
    "check_size",
    "is_owned_by",
    "owner_subnet",
    "pool_status",
    "subnet_ref",
    "validate_metadata",
    "validate_name",
    "validate_owner_references",
    "validate_size",
]

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
_DNS1035_LABEL_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# The API server's limits: etcd's request size, and apimachinery's ValidateObjectMeta.
MAX_OBJECT_BYTES = 3 * 1024 * 1024 // 2  # 1.5 MiB, the object as JSON
MAX_ANNOTATIONS_BYTES = 256 * 1024  # keys and values of all annotations together
_MAX_LABEL_PART = 63
# kinds whose names are DNS-1123 labels (<= 63, no dots) or DNS-1035 labels (also starting with a
# letter) in Kubernetes; every other kind takes a DNS-1123 subdomain
_LABEL_NAMED_KINDS = frozenset({"Namespace"})
_DNS1035_NAMED_KINDS = frozenset({"Service"})
# RBAC objects take any path segment (``system:controller:...``): no '/' or '%', not '.' or '..'
_PATH_SEGMENT_NAMED_KINDS = frozenset({"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"})
_T = TypeVar("_T")
_MAX_SHOWN = 3  # ranges quoted in an overlap message


def validate_name(kind: str, obj: Mapping[str, Any]) -> str:
    """``metadata.name`` must be a DNS-1123 subdomain (lower case, digits, ``-``, ``.``; <= 253)."""
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        raise Invalid(kind, "", "metadata.name", "is required")
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
        raise Invalid(
            kind,
            name,
            "metadata.name",
            "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters",
        )
    return name


def _clip(text: str, limit: int = 40) -> str:
    """A value short enough to quote in a one-line error."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _check_name_format(kind: str, shown: str, field: str, name: str, *, label: bool, dns1035: bool) -> None:
    if dns1035:
        if len(name) > _MAX_LABEL_PART or not _DNS1035_LABEL_RE.fullmatch(name):
            raise Invalid(
                kind,
                shown,
                field,
                f"{_clip(name)} must be a DNS-1035 label: lower-case letters, digits and '-', starting "
                "with a letter, ending with a letter or digit, at most 63 characters",
            )
    elif label:
        if len(name) > _MAX_LABEL_PART or not _DNS1123_LABEL_RE.fullmatch(name):
            raise Invalid(
                kind,
                shown,
                field,
                f"{_clip(name)} must be a DNS-1123 label: lower-case letters, digits and '-', starting "
                "and ending with a letter or digit, at most 63 characters",
            )
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
        raise Invalid(
            kind,
            shown,
            field,
            f"{_clip(name)} must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters",
        )


def _check_qualified_key(kind: str, name: str, field: str, key: object) -> str:
    """A label or annotation key: ``[prefix/]name``, the prefix a DNS-1123 subdomain, the name at most
    63 characters of letters, digits, '-', '_' and '.', starting and ending alphanumeric."""
    if not isinstance(key, str) or not key:
        raise Invalid(kind, name, field, f"key {key!r} must be a non-empty string")
    prefix, slash, part = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        raise Invalid(kind, name, field, f"key {_clip(key)}: the prefix must be a DNS-1123 subdomain")
    if len(part) > _MAX_LABEL_PART or not _QUALIFIED_NAME.fullmatch(part):
        raise Invalid(
            kind,
            name,
            field,
            f"key {_clip(key)}: the name part must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        )
    return key


def validate_metadata(kind: str, namespaced: bool, obj: Mapping[str, Any]) -> None:
    """What the API server checks on every object of every kind (apimachinery's ValidateObjectMeta
    and the request size limit), so one hostile object cannot slow every read of it: the name
    (DNS-1123 subdomain; a Namespace's a DNS-1123 label, a Service's a DNS-1035 label, an RBAC object's
    a path segment), the namespace (a DNS-1123 label), labels
    (qualified-name keys, values of at most 63 characters) and annotations (qualified-name keys, at
    most 256 KiB together); :func:`validate_size` checks the whole object.  Raises Invalid."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise Invalid(kind, "", "metadata", "is required")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid(kind, "", "metadata.name", "is required")
    shown = name if len(name) <= 253 and name.isprintable() else _clip(name)
    if kind in _PATH_SEGMENT_NAMED_KINDS:
        if name in (".", "..") or "/" in name or "%" in name or not name.isprintable() or len(name) > 253:
            raise Invalid(
                kind,
                shown,
                "metadata.name",
                f"{_clip(name)} must be a path segment: printable, no '/' or '%', not '.' or '..'",
            )
    else:
        _check_name_format(
            kind,
            shown,
            "metadata.name",
            name,
            label=kind in _LABEL_NAMED_KINDS,
            dns1035=kind in _DNS1035_NAMED_KINDS,
        )
    namespace = meta.get("namespace")
    if namespaced and namespace not in (None, ""):
        if not isinstance(namespace, str):
            raise Invalid(kind, name, "metadata.namespace", "must be a string")
        _check_name_format(kind, name, "metadata.namespace", namespace, label=True, dns1035=False)
    labels = meta.get("labels")
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise Invalid(
                kind, name, "metadata.labels", f"must be a map of strings, not {type(labels).__name__}"
            )
        for key, value in labels.items():
            _check_qualified_key(kind, name, "metadata.labels", key)
            if not isinstance(value, str):
                raise Invalid(
                    kind, name, f"metadata.labels.{key}", f"must be a string, not {type(value).__name__}"
                )
            if len(value) > _MAX_LABEL_PART or not _LABEL_VALUE.fullmatch(value):
                raise Invalid(
                    kind,
                    name,
                    f"metadata.labels.{key}",
                    f"{_clip(value)} must be empty or at most 63 letters, digits, '-', '_' or '.', "
                    "starting and ending with a letter or digit",
                )
    annotations = meta.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, Mapping):
            raise Invalid(
                kind,
                name,
                "metadata.annotations",
                f"must be a map of strings, not {type(annotations).__name__}",
            )
        total = 0
        for key, value in annotations.items():
            _check_qualified_key(kind, name, "metadata.annotations", key)
            if not isinstance(value, str):
                raise Invalid(
                    kind, name, f"metadata.annotations.{key}", f"must be a string, not {type(value).__name__}"
                )
            total += len(key) + len(value)
        if total > MAX_ANNOTATIONS_BYTES:
            raise Invalid(
                kind,
                name,
                "metadata.annotations",
                f"may not be more than {MAX_ANNOTATIONS_BYTES // 1024} KiB in total (keys and values), not {total} bytes",
            )


def validate_owner_references(kind: str, obj: Mapping[str, Any]) -> None:
    """``metadata.ownerReferences`` as the API server takes them: a list of references, each with
    apiVersion, kind, name and uid, ``controller``/``blockOwnerDeletion`` booleans, at most one
    controller.  (Checked on what users write; the GC reads stored ones tolerantly.)"""
    meta = obj.get("metadata")
    refs = meta.get("ownerReferences") if isinstance(meta, Mapping) else None
    if refs is None:
        return
    name = str(meta.get("name") or "") if isinstance(meta, Mapping) else ""
    if not isinstance(refs, list):
        raise Invalid(kind, name, "metadata.ownerReferences", f"must be a list, not {type(refs).__name__}")
    controllers = 0
    for i, ref in enumerate(refs):
        where = f"metadata.ownerReferences[{i}]"
        if not isinstance(ref, Mapping):
            raise Invalid(kind, name, where, f"must be a mapping, not {type(ref).__name__}")
        for key in ("apiVersion", "kind", "name", "uid"):
            value = ref.get(key)
            if not isinstance(value, str) or not value:
                raise Invalid(kind, name, f"{where}.{key}", "is required (a non-empty string)")
        for key in ("controller", "blockOwnerDeletion"):
            if ref.get(key) is not None and not isinstance(ref.get(key), bool):
                raise Invalid(kind, name, f"{where}.{key}", f"must be true or false, not {ref.get(key)!r}")
        controllers += ref.get("controller") is True
    if controllers > 1:
        raise Invalid(
            kind, name, "metadata.ownerReferences", "only one reference can have controller set to true"
        )


def validate_size(kind: str, name: str, obj: Mapping[str, Any]) -> None:
    """The object must be JSON (no NaN or infinity) of at most 1.5 MiB (the API server's request limit)."""
    try:
        body = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise Invalid(kind, name, "object", f"is not JSON-serializable: {err}") from None
    check_size(kind, name, len(body))


def check_size(kind: str, name: str, size: int) -> None:
    """``size``: bytes of the object as JSON (``json.dumps`` escapes non-ASCII, so its length)."""
    if size > MAX_OBJECT_BYTES:
        raise Invalid(
            kind,
            name,
            "object",
            f"is {size} bytes as JSON; the API server takes objects of at most {MAX_OBJECT_BYTES} bytes (1.5 MiB)",
        )


def admit(
    obj: Obj,
    *,
    old: Obj | None,
    existing: Sequence[Obj],
    in_use: Collection[str] = (),
    subnets: Sequence[Obj] = (),
    pools: Sequence[Obj] = (),
    blocks: Sequence[Obj] = (),
) -> Obj:
    """Mutate and validate a write of a SpiderIPPool, SpiderSubnet, SpiderReservedIP or SpiderIPBlock.

    ``existing``: the stored objects of the same kind (the object's own stored version may be among
    them; it is skipped by name).  ``in_use``: IPs that are allocated from this pool (for a
    SpiderSubnet: held by its controlled pools); a Mapping ``ip -> holder`` (``"ns/name"`` of the pod,
    or the pool name for a subnet) gives the holder in the error.  ``subnets``: stored SpiderSubnets,
    for a SpiderIPPool (ownership and inheritance).  ``pools``: stored SpiderIPPools, for a SpiderSubnet
    (no overlapping different CIDR).  ``blocks``: stored SpiderIPBlocks, for a SpiderIPPool whose
    block size changes (not while blocks of another size remain).  Objects of other kinds are returned unchanged (as a copy).
    """
    kind = obj.get("kind")
    if kind == IPPool.KIND:
        return _admit_pool(obj, old=old, existing=existing, in_use=in_use, subnets=subnets, blocks=blocks)
    if kind == Subnet.KIND:
        return _admit_subnet(obj, old=old, existing=existing, in_use=in_use, pools=pools)
    if kind == ReservedIP.KIND:
        return _admit_reserved(obj, old=old)
    if kind == BLOCK_KIND:
        return _admit_block(obj, old=old)
    return copy.deepcopy(obj)


def pool_status(pool: IPPool, allocated_count: int) -> dict[str, int]:
    """The counters of a SpiderIPPool status: ``totalIPCount`` (ips - excludeIPs, not minus reserved
    IPs, saturating at the int64 maximum) and ``allocatedIPCount``."""
    return {
        "totalIPCount": total_ip_count(pool.usable.size),
        "allocatedIPCount": allocated_count,
    }


# --------------------------------------------------------------------------------------------------
# shared pieces


def _spec(kind: str, name: str, obj: Obj) -> dict[str, Any]:
    spec = obj.get("spec")
    if spec is None:
        spec = obj["spec"] = {}
    if not isinstance(spec, dict):
        raise Invalid(kind, name, "spec", "must be an object")
    return spec


def _labels(kind: str, name: str, obj: Obj) -> dict[str, str]:
    meta = obj.setdefault("metadata", {})
    labels = meta.get("labels")
    if labels is None:
        labels = meta["labels"] = {}
    if not isinstance(labels, dict):
        raise Invalid(kind, name, "metadata.labels", "must be a map of strings")
    return labels


def _shown(ranges: IntervalSet, family: int) -> str:
    items = IntervalSet(ranges.intervals[:_MAX_SHOWN]).to_strings(family)
    more = " ..." if len(ranges) > _MAX_SHOWN else ""
    return f"[{' '.join(items)}{more}]"


def _merge_ranges(spec: dict[str, Any], parsed: IntervalSet, key: str, family: int) -> None:
    if spec.get(key) is not None:
        spec[key] = parsed.to_strings(family)


def _same_cidr(a: str, b: str) -> bool:
    try:
        return canonical_cidr(a) == canonical_cidr(b)
    except ValueError:
        return a == b


def _check_immutable(kind: str, name: str, new_spec: Mapping[str, Any], old: Obj | None) -> None:
    if old is None:
        return
    raw_old_spec = old.get("spec")
    old_spec: Mapping[str, Any] = raw_old_spec if isinstance(raw_old_spec, Mapping) else {}
    old_subnet, new_subnet = old_spec.get("subnet"), new_spec.get("subnet")
    if isinstance(old_subnet, str) and isinstance(new_subnet, str) and not _same_cidr(old_subnet, new_subnet):
        raise Invalid(kind, name, "spec.subnet", f"is not changeable (was {old_subnet}, now {new_subnet})")
    old_version, new_version = old_spec.get("ipVersion"), new_spec.get("ipVersion")
    if old_version is not None and new_version is not None and old_version != new_version:
        raise Invalid(
            kind, name, "spec.ipVersion", f"is not changeable (was {old_version}, now {new_version})"
        )


def _check_canonical(kind: str, name: str, subnet: str) -> None:
    if not is_canonical_cidr(subnet):
        net = parse_cidr(subnet)
        raise Invalid(kind, name, "spec.subnet", f"{subnet} is not a canonical CIDR (use {net.cidr})")


def _check_range_rules(kind: str, name: str, ranged: IPPool | Subnet) -> None:
    """The rules pools and subnets share: canonical subnet, ranges inside it, gateway, routes."""
    subnet, family, ips, exclude_ips = ranged.subnet, ranged.ip_version, ranged.ips, ranged.exclude_ips
    gateway, routes = ranged.gateway, ranged.routes
    _check_canonical(kind, name, subnet)
    whole = IntervalSet((cidr_interval(subnet),))
    if family == 6:
        _check_not_ipv4_in_ipv6(kind, name, ips.difference(exclude_ips))
    for field, ranges in (("spec.ips", ips), ("spec.excludeIPs", exclude_ips)):
        outside = ranges.difference(whole)
        if outside.first is not None:
            raise Invalid(kind, name, field, f"{int_to_ip(outside.first, family)} is outside subnet {subnet}")
    if gateway is not None:
        gw = ip_to_int(gateway, family)
        if gw not in whole:
            raise Invalid(kind, name, "spec.gateway", f"{gateway} is outside subnet {subnet}")
        if gw in ips and gw not in exclude_ips:
            raise Invalid(
                kind,
                name,
                "spec.gateway",
                f"{gateway} is in spec.ips; add it to spec.excludeIPs or remove it",
            )
    seen: dict[tuple[int, int], int] = {}
    for i, route in enumerate(routes):
        net = parse_cidr(route.dst)
        if net.prefixlen == 0:
            raise Invalid(
                kind,
                name,
                f"spec.routes[{i}].dst",
                f"{route.dst} is a default route: please specify spec.gateway",
            )
        key = (int(net.first), int(net.prefixlen))
        if key in seen:
            raise Invalid(
                kind, name, f"spec.routes[{i}].dst", f"{route.dst} duplicates spec.routes[{seen[key]}].dst"
            )
        seen[key] = i
        if ip_to_int(route.gw, family) not in whole:
            raise Invalid(kind, name, f"spec.routes[{i}].gw", f"{route.gw} is outside subnet {subnet}")


# IPv6 ranges that stand for IPv4 addresses: IPv4-mapped (::ffff:a.b.c.d, what a dual-stack socket
# shows for an IPv4 peer; Kubernetes refuses such pod IPs) and the deprecated IPv4-compatible
# (::a.b.c.d, RFC 4291 section 2.5.5.1).  A pool handing them out would give a pod an address that
# names an IPv4 host.
_IPV4_IN_IPV6 = (
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/96", "IPv4-compatible"),
)


def _check_not_ipv4_in_ipv6(kind: str, name: str, usable: IntervalSet) -> None:
    for cidr, what in _IPV4_IN_IPV6:
        common = usable.intersection(IntervalSet.from_cidr(cidr))
        if common.first is not None:
            raise Invalid(
                kind,
                name,
                "spec.ips",
                f"{int_to_ip(common.first, 6)} is an {what} IPv6 address ({cidr}), which stands for an "
                "IPv4 address; use addresses outside ::/96 and ::ffff:0:0/96",
            )


def _check_in_use(
    kind: str, name: str, ranged: IPPool | Subnet, in_use: Collection[str], *, holder_kind: str
) -> None:
    """No IP that is in use may leave ``ips - excludeIPs`` (removed or excluded)."""
    ips, usable, family = ranged.ips, ranged.usable, ranged.ip_version
    for ip in in_use:
        try:
            value = ip_to_int(ip, family)
        except ValueError:
            continue  # an address of the other family cannot be in this object
        if value not in usable:
            holder = in_use[ip] if isinstance(in_use, Mapping) else ""
            by = f" by {holder_kind} {holder}" if holder else ""
            field = "spec.excludeIPs" if value in ips else "spec.ips"
            raise Invalid(
                kind, name, field, f"remove an IP address {ip} that is being used{by} (excluded or removed)"
            )


def _parse_others(parse: Callable[[Obj], _T], objs: Sequence[Obj], skip: str) -> list[_T]:
    """Parse stored objects, skipping this object's own version and any that no longer parse."""
    out: list[_T] = []
    for o in objs:
        if object_name(o) == skip:
            continue
        try:
            out.append(parse(o))
        except Invalid:
            continue  # a broken stored object must not block writes to other objects
    return out


# --------------------------------------------------------------------------------------------------
# SpiderIPPool


def _admit_pool(
    obj: Obj,
    *,
    old: Obj | None,
    existing: Sequence[Obj],
    in_use: Collection[str],
    subnets: Sequence[Obj],
    blocks: Sequence[Obj] = (),
) -> Obj:
    kind = IPPool.KIND
    out = copy.deepcopy(obj)
    out.setdefault("apiVersion", SPIDER_API)
    name = validate_name(kind, out)
    spec = _spec(kind, name, out)
    _check_immutable(kind, name, spec, old)
    pool = IPPool.from_obj(out)  # raises Invalid on anything unparseable
    _check_canonical(kind, name, pool.subnet)  # before the CIDR becomes a label

    # mutation
    spec["ipVersion"] = pool.ip_version
    _merge_ranges(spec, pool.ips, "ips", pool.ip_version)
    _merge_ranges(spec, pool.exclude_ips, "excludeIPs", pool.ip_version)
    spec.setdefault("default", False)
    spec.setdefault("disable", False)
    if spec["default"] is None:
        spec["default"] = False
    if spec["disable"] is None:
        spec["disable"] = False
    labels = _labels(kind, name, out)
    labels[LABEL_IPPOOL_CIDR] = cidr_label_value(canonical_cidr(pool.subnet))
    owner = owner_subnet(pool, subnets)
    inherited_gateway = False
    if owner is not None:
        inherited_gateway = spec.get("gateway") is None and owner.gateway is not None
        _inherit(out, owner)
    pool = IPPool.from_obj(out)

    # validation
    if inherited_gateway and owner is not None and pool.gateway is not None:
        gw = ip_to_int(pool.gateway, pool.ip_version)
        if gw in pool.ips and gw not in pool.exclude_ips:
            raise Invalid(
                kind,
                name,
                "spec.gateway",
                f"{pool.gateway}, inherited from SpiderSubnet {owner.name}, is in spec.ips; "
                "add it to spec.excludeIPs, remove it from spec.ips, or set spec.gateway",
            )
    _check_range_rules(kind, name, pool)
    _check_block_size(pool, old, in_use, blocks)
    if pool.pod_affinity is not None and pool.pod_affinity.is_empty:
        raise Invalid(kind, name, "spec.podAffinity", "empty podAffinity is invalid")
    if owner is not None:
        outside = pool.usable.difference(owner.usable)
        if outside.first is not None:
            raise Invalid(
                kind,
                name,
                "spec.ips",
                f"{int_to_ip(outside.first, pool.ip_version)} is not in the IPs of "
                f"SpiderSubnet {owner.name} (its ips minus excludeIPs)",
            )
    _check_in_use(kind, name, pool, in_use, holder_kind="Pod")
    subnet_iv = IntervalSet((pool.subnet_interval,))
    for other in _parse_others(IPPool.from_obj, existing, name):
        if other.ip_version != pool.ip_version:
            continue
        if _same_cidr(other.subnet, pool.subnet):
            common = pool.usable.intersection(other.usable)
            if common:
                raise Invalid(
                    kind,
                    name,
                    "spec.ips",
                    f"overlaps with SpiderIPPool {other.name} in IP ranges {_shown(common, pool.ip_version)}",
                )
        elif subnet_iv.overlaps(IntervalSet((other.subnet_interval,))):
            raise Invalid(
                kind,
                name,
                "spec.subnet",
                f"{pool.subnet} overlaps with subnet {other.subnet} of SpiderIPPool {other.name}",
            )
    return out


def _check_block_size(pool: IPPool, old: Obj | None, in_use: Collection[str], blocks: Sequence[Obj]) -> None:
    """``spiderbgp.io/block-size``: a prefix length within ``blocks.block_size_problem``'s bounds
    (Calico's /20-/32 and /116-/128, not shorter than the subnet), or ``"none"`` (a plain pool whatever
    the agent's default); not changeable (added, changed or removed) while the pool holds allocations
    or blocks of it remain (the leader returns them once empty: blocks of two sizes would overlap).
    ``"none"`` and no annotation are the same setting, a plain pool: going from one to the other is
    not a change, going from either to a size is."""
    block_size_of(pool)
    before = _block_setting(((old or {}).get("metadata") or {}).get("annotations") or {})
    if before == _block_setting(pool.annotations):
        return
    field = f"metadata.annotations.{BLOCK_SIZE_ANNOTATION}"
    if in_use:
        raise Invalid(
            IPPool.KIND,
            pool.name,
            field,
            f"not changeable while the pool holds allocations ({len(in_use)} IPs in use)",
        )
    held = [b for b in blocks if (b.get("spec") or {}).get("pool") == pool.name]
    if held:
        raise Invalid(
            IPPool.KIND,
            pool.name,
            field,
            f"not changeable while {len(held)} SpiderIPBlocks of the pool remain "
            "(the leader returns a block once it has been empty for its grace period)",
        )


def _block_setting(annotations: Mapping[str, Any]) -> int | str | None:
    """A pool's block setting, for comparing two versions: None for a plain pool (no annotation or
    ``"none"``), the prefix length of a decimal value (``"026"`` is ``"26"``), else the text as is."""
    text = annotations.get(BLOCK_SIZE_ANNOTATION)
    if text is None or text == BLOCK_SIZE_NONE:
        return None
    if isinstance(text, str) and text.isascii() and text.isdigit():
        return int(text)
    return str(text)


def owner_subnet(pool: IPPool, subnets: Sequence[Obj]) -> Subnet | None:
    """The SpiderSubnet that owns a pool: the one of the same CIDR and family that is not being
    deleted (a terminating subnet takes no new pools; its own pools keep their reference)."""
    for subnet in _parse_others(Subnet.from_obj, subnets, ""):
        if (
            not subnet.terminating
            and subnet.ip_version == pool.ip_version
            and _same_cidr(subnet.subnet, pool.subnet)
        ):
            return subnet
    return None


def subnet_ref(owner: Subnet) -> dict[str, Any]:
    """The controller ownerReference a pool of ``owner`` carries."""
    return {
        "apiVersion": SPIDER_API,
        "kind": Subnet.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_owned_by(obj: Mapping[str, Any], owner: Subnet) -> bool:
    """Whether ``obj`` (a stored SpiderIPPool) has ``owner`` as its controller, with the label."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return False
    labels = meta.get("labels")
    if not isinstance(labels, Mapping) or labels.get(LABEL_OWNER_SUBNET) != owner.name:
        return False
    want = (Subnet.KIND, owner.name, owner.uid)
    return any(
        _is_controller(ref) and (ref.get("kind"), ref.get("name"), ref.get("uid")) == want
        for ref in meta.get("ownerReferences") or ()
    )


def adopt(obj: Obj, owner: Subnet) -> Obj:
    """A copy of a SpiderIPPool object owned by ``owner``, as Spiderpool's webhook and subnet
    controller make it: the controller ownerReference, the ``owner-spider-subnet`` label, and the
    subnet's ``gateway`` (when the pool has none) and ``routes`` (when the pool's are nil; an explicit
    ``[]`` is kept).  Raises Invalid on ``metadata.ownerReferences`` when another kind controls it."""
    out = copy.deepcopy(obj)
    name = object_name(out)
    _labels(IPPool.KIND, name, out)
    _spec(IPPool.KIND, name, out)
    _inherit(out, owner)
    return out


def _is_controller(ref: object) -> bool:
    return isinstance(ref, Mapping) and ref.get("controller") is True


def _inherit(out: Obj, owner: Subnet) -> None:
    meta = out.setdefault("metadata", {})
    name = str(meta.get("name") or "")
    refs = meta.get("ownerReferences")
    if refs is not None and not isinstance(refs, list):
        raise Invalid(IPPool.KIND, name, "metadata.ownerReferences", "must be a list")
    refs = list(refs or [])
    for ref in refs:
        if _is_controller(ref) and ref.get("kind") != Subnet.KIND:
            raise Invalid(
                IPPool.KIND,
                name,
                "metadata.ownerReferences",
                f"is controlled by {ref.get('kind')} {ref.get('name')}, but a pool of the CIDR "
                f"{owner.subnet} must be controlled by SpiderSubnet {owner.name}",
            )
    # the subnet replaces any earlier SpiderSubnet controller (one of the same name deleted and made
    # again has another uid)
    refs = [
        r
        for r in refs
        if not (_is_controller(r) or (isinstance(r, Mapping) and r.get("kind") == Subnet.KIND))
    ]
    refs.append(subnet_ref(owner))
    meta["ownerReferences"] = refs
    meta.setdefault("labels", {})[LABEL_OWNER_SUBNET] = owner.name
    spec = out.setdefault("spec", {})
    if spec.get("gateway") is None and owner.gateway is not None:
        spec["gateway"] = owner.gateway
    if spec.get("routes") is None and owner.routes:
        spec["routes"] = [r.to_obj() for r in owner.routes]


# --------------------------------------------------------------------------------------------------
# SpiderSubnet


def _admit_subnet(
    obj: Obj, *, old: Obj | None, existing: Sequence[Obj], in_use: Collection[str], pools: Sequence[Obj]
) -> Obj:
    kind = Subnet.KIND
    out = copy.deepcopy(obj)
    out.setdefault("apiVersion", SPIDER_API)
    name = validate_name(kind, out)
    spec = _spec(kind, name, out)
    _check_immutable(kind, name, spec, old)
    subnet = Subnet.from_obj(out)
    _check_range_rules(kind, name, subnet)

    spec["ipVersion"] = subnet.ip_version
    _merge_ranges(spec, subnet.ips, "ips", subnet.ip_version)
    _merge_ranges(spec, subnet.exclude_ips, "excludeIPs", subnet.ip_version)
    _labels(kind, name, out)[LABEL_SUBNET_CIDR] = cidr_label_value(canonical_cidr(subnet.subnet))

    _check_in_use(kind, name, subnet, in_use, holder_kind="SpiderIPPool")
    mine = IntervalSet((subnet.subnet_interval,))
    for other in _parse_others(Subnet.from_obj, existing, name):
        if other.ip_version == subnet.ip_version and mine.overlaps(IntervalSet((other.subnet_interval,))):
            raise Invalid(
                kind,
                name,
                "spec.subnet",
                f"{subnet.subnet} overlaps with subnet {other.subnet} of SpiderSubnet {other.name}",
            )
    for pool in _parse_others(IPPool.from_obj, pools, ""):
        if (
            pool.ip_version == subnet.ip_version
            and not _same_cidr(pool.subnet, subnet.subnet)
            and mine.overlaps(IntervalSet((pool.subnet_interval,)))
        ):
            raise Invalid(
                kind,
                name,
                "spec.subnet",
                f"{subnet.subnet} overlaps with subnet {pool.subnet} of SpiderIPPool {pool.name}",
            )
    return out


# --------------------------------------------------------------------------------------------------
# SpiderReservedIP


def _admit_reserved(obj: Obj, *, old: Obj | None) -> Obj:
    kind = ReservedIP.KIND
    out = copy.deepcopy(obj)
    out.setdefault("apiVersion", SPIDER_API)
    name = validate_name(kind, out)
    spec = _spec(kind, name, out)
    reserved = ReservedIP.from_obj(out)  # one family, ipVersion agreeing with ips[0]
    if reserved.ip_version is None:
        raise Invalid(kind, name, "spec.ips", "is empty and spec.ipVersion is not set: give at least one IP")
    if old is not None:
        try:
            old_version = ReservedIP.from_obj(old).ip_version
        except Invalid:
            old_version = None
        if old_version is not None and old_version != reserved.ip_version:
            raise Invalid(
                kind,
                name,
                "spec.ipVersion",
                f"is not changeable (was {old_version}, now {reserved.ip_version})",
            )
    spec["ipVersion"] = reserved.ip_version
    _merge_ranges(spec, reserved.ips, "ips", reserved.ip_version)
    return out


# --------------------------------------------------------------------------------------------------
# SpiderIPBlock


def _admit_block(obj: Obj, *, old: Obj | None) -> Obj:
    """A block as its CRD has it (spec pool, cidr and node), its CIDR canonical, pool and CIDR fixed."""
    out = copy.deepcopy(obj)
    out.setdefault("apiVersion", BLOCK_API)
    name = validate_name(BLOCK_KIND, out)
    block = parse_block(out)
    if not is_canonical_cidr(block.cidr) or canonical_cidr(block.cidr) != block.cidr:
        net = parse_cidr(block.cidr)
        raise Invalid(
            BLOCK_KIND,
            name,
            "spec.cidr",
            f"{block.cidr} is not canonical (write {net.network}/{net.prefixlen})",
        )
    if old is not None:
        before = old.get("spec") or {}
        for key in ("pool", "cidr"):
            if before.get(key) != out["spec"][key]:
                raise Invalid(BLOCK_KIND, name, f"spec.{key}", "is not changeable")
    return out
