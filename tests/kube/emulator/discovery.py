"""Discovery and server-side tables of the emulated API server, for ``kubectl get``.

kubectl resolves a resource name (``sp``, ``spiderippools``) through the legacy discovery documents
(``/api``, ``/api/v1``, ``/apis``, ``/apis/{group}``, ``/apis/{group}/{version}``) and asks for the
objects as a ``meta.k8s.io/v1`` ``Table`` (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``).
For a custom resource the API server fills the table from the CRD's ``additionalPrinterColumns``
(after ``Name``); both are built here from ``ipam.kinds`` and the CRDs of ``configs/kubernetes``.
Built-in kinds are answered as plain objects (kubectl then prints NAME and AGE).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ipam.kinds import KindInfo

__all__ = ["discovery_document", "discovery_documents", "printer_columns", "to_table", "wants_table"]

Obj = dict[str, Any]

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _resources(kinds: Iterable[KindInfo]) -> list[Obj]:
    out: list[Obj] = []
    for info in kinds:
        out.append(
            {
                "name": info.plural,
                "singularName": info.kind.lower(),
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": _VERBS,
                **({"shortNames": list(info.short_names)} if info.short_names else {}),
            }
        )
        if info.has_status:
            out.append(
                {
                    "name": info.plural + "/status",
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "kind": info.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return out


def _group(name: str, versions: Sequence[str]) -> Obj:
    listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": listed, "preferredVersion": listed[0]}


def discovery_document(path: str, kinds: Sequence[KindInfo]) -> Obj | None:
    """The discovery document at ``path`` (None: ``path`` is not a discovery path)."""
    parts = [p for p in path.split("/") if p]
    groups: dict[str, list[str]] = {}
    for info in kinds:
        if info.group:
            versions = groups.setdefault(info.group, [])
            if info.version not in versions:
                versions.append(info.version)
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if parts == ["api", "v1"]:
        core = [i for i in kinds if i.api_version == "v1"]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "v1",
            "resources": _resources(core),
        }
    if parts == ["apis"]:
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_group(g, v) for g, v in sorted(groups.items())],
        }
    if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
        return {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1], groups[parts[1]])}
    if len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], ()):
        group_version = f"{parts[1]}/{parts[2]}"
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": _resources(i for i in kinds if i.api_version == group_version),
        }
    return None


def discovery_documents(kinds: Sequence[KindInfo]) -> dict[str, Obj]:
    """Every discovery document by its path (``/api``, ``/apis/{group}/{version}``, ...), built once."""
    paths = ["/api", "/api/v1", "/apis"]
    for info in kinds:
        if info.group:
            paths += [f"/apis/{info.group}", f"/apis/{info.api_version}"]
    found = {path: discovery_document(path, kinds) for path in paths}
    return {path: doc for path, doc in found.items() if doc is not None}


def wants_table(accept: str) -> bool:
    """The client asked for a ``meta.k8s.io/v1`` Table (its first choice, as kubectl asks)."""
    first = accept.split(",")[0]
    params = {p.strip() for p in first.split(";")[1:]}
    return {"as=Table", "g=meta.k8s.io", "v=v1"} <= params


def printer_columns(crd: Mapping[str, Any]) -> list[Obj]:
    """A CRD's ``additionalPrinterColumns`` (of its first version)."""
    return list(crd["spec"]["versions"][0].get("additionalPrinterColumns", []))


def _cell(obj: Mapping[str, Any], json_path: str) -> Any:
    """The value at a simple ``.a.b.c`` JSONPath (None when absent), as the columns of our CRDs use."""
    value: Any = obj
    for key in json_path.lstrip(".").split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def to_table(
    objs: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, Any]], resource_version: str
) -> Obj:
    """``objs`` as the API server's Table of a custom resource: Name, then the printer columns; each row
    carries the object's metadata as a PartialObjectMetadata (kubectl's default includeObject)."""
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name of the object",
            "priority": 0,
        }
    ] + [
        {
            "name": c["name"],
            "type": c["type"],
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    rows = [
        {
            "cells": [obj["metadata"]["name"], *(_cell(obj, c["jsonPath"]) for c in columns)],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            },
        }
        for obj in objs
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
