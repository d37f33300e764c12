"""Tables, YAML and JSON output in kubectl's shapes."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from ipam.kinds import KindInfo
from ipam.records import Obj

__all__ = ["Column", "columns_for", "format_age", "render_objects", "render_table"]


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Obj], object]
    wide_only: bool = False


def _path(*keys: str | int) -> Callable[[Obj], object]:
    def get(obj: Obj) -> object:
        cur: Any = obj
        for key in keys:
            if isinstance(key, int):
                cur = cur[key] if isinstance(cur, list) and len(cur) > key else None
            else:
                cur = cur.get(key) if isinstance(cur, dict) else None
            if cur is None:
                return None
        return cur

    return get


def format_age(timestamp: object, now: datetime | None = None) -> str:
    """kubectl's short age: 45s, 12m, 3h, 5d."""
    if not isinstance(timestamp, str):
        return "<unknown>"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _age(obj: Obj) -> object:
    return format_age(obj.get("metadata", {}).get("creationTimestamp"))


def _pod_ready(obj: Obj) -> object:
    statuses = obj.get("status", {}).get("containerStatuses") or []
    total = max(len(obj.get("spec", {}).get("containers") or []), len(statuses), 1)
    ready = sum(1 for s in statuses if s.get("ready"))
    if not statuses and obj.get("status", {}).get("phase") == "Running":
        ready = total
    return f"{ready}/{total}"


def _first_ips(key: str) -> Callable[[Obj], object]:
    return _path("status", "current", "ips", 0, key)


_NAME = Column("NAME", _path("metadata", "name"))

_COLUMNS: dict[str, tuple[Column, ...]] = {
    "SpiderIPPool": (
        _NAME,
        Column("VERSION", _path("spec", "ipVersion")),
        Column("SUBNET", _path("spec", "subnet")),
        Column("ALLOCATED-IP-COUNT", _path("status", "allocatedIPCount")),
        Column("TOTAL-IP-COUNT", _path("status", "totalIPCount")),
        Column("DEFAULT", _path("spec", "default")),
        Column("DISABLE", _path("spec", "disable")),
        Column("NODENAME", _path("spec", "nodeName"), wide_only=True),
        Column("MULTUSNAME", _path("spec", "multusName"), wide_only=True),
        Column(
            "APP-NAMESPACE",
            _path("spec", "podAffinity", "matchLabels", "ipam.spidernet.io/app-namespace"),
            wide_only=True,
        ),
    ),
    "SpiderSubnet": (
        _NAME,
        Column("VERSION", _path("spec", "ipVersion")),
        Column("SUBNET", _path("spec", "subnet")),
        Column("ALLOCATED-IP-COUNT", _path("status", "allocatedIPCount")),
        Column("TOTAL-IP-COUNT", _path("status", "totalIPCount")),
    ),
    "SpiderReservedIP": (_NAME, Column("VERSION", _path("spec", "ipVersion"))),
    "SpiderEndpoint": (
        _NAME,
        Column("INTERFACE", _first_ips("interface")),
        Column("IPV4POOL", _first_ips("ipv4Pool")),
        Column("IPV4", _first_ips("ipv4")),
        Column("IPV6POOL", _first_ips("ipv6Pool")),
        Column("IPV6", _first_ips("ipv6")),
        Column("NODE", _path("status", "current", "node")),
    ),
    "SpiderIPBlock": (
        _NAME,
        Column("POOL", _path("spec", "pool")),
        Column("CIDR", _path("spec", "cidr")),
        Column("NODE", _path("spec", "node")),
        Column("ALLOCATED-IP-COUNT", _path("status", "allocatedIPCount")),
        Column("AGE", _age),
    ),
    "Pod": (
        _NAME,
        Column("READY", _pod_ready),
        Column("STATUS", _path("status", "phase")),
        Column("AGE", _age),
        Column("IP", _path("status", "podIP"), wide_only=True),
        Column("NODE", _path("spec", "nodeName"), wide_only=True),
    ),
}


def columns_for(info: KindInfo, *, wide: bool) -> tuple[Column, ...]:
    columns = _COLUMNS.get(info.kind, (_NAME, Column("AGE", _age)))
    return tuple(c for c in columns if wide or not c.wide_only)


def _cell(value: object) -> str:
    if value is None:
        return "<none>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "<none>"
    return str(value)


def render_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns separated by three spaces, as kubectl prints them."""
    table = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table]
    return "\n".join(lines)


def render_objects(
    objs: Sequence[Obj],
    info: KindInfo,
    *,
    output: str,
    namespaced_column: bool = False,
    as_list: bool | None = None,
) -> str:
    """``output`` is "" (table), "wide", "yaml", "json" or "name".  For yaml/json, ``as_list`` says
    whether to wrap the objects in a ``kind: List`` (kubectl does for ``get KIND``, even of one object,
    and not for ``get KIND NAME``); None wraps all but a single object."""
    if output in ("yaml", "json"):
        wrap = len(objs) != 1 if as_list is None else as_list
        doc: object = {"apiVersion": "v1", "kind": "List", "items": list(objs)} if wrap else objs[0]
        if output == "json":
            return json.dumps(doc, indent=4, sort_keys=False)
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip("\n")
    if output == "name":
        # kubectl's resource/name: the lower-case kind, qualified by the group outside the core group
        kind = f"{info.kind.lower()}.{info.group}" if info.group else info.kind.lower()
        return "\n".join(f"{kind}/{o['metadata']['name']}" for o in objs)
    columns = columns_for(info, wide=output == "wide")
    headers = [c.header for c in columns]
    rows = [[_cell(c.value(o)) for c in columns] for o in objs]
    if namespaced_column:
        headers.insert(0, "NAMESPACE")
        for row, o in zip(rows, objs, strict=True):
            row.insert(0, o["metadata"].get("namespace", ""))
    return render_table(rows, headers)
