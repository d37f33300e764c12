"""Errors as the API server sends them: a ``Status`` object with its reason, message and details."""

from __future__ import annotations

from typing import Any

from ipam.kinds import KindInfo
from tests.kube.emulator.schema import Cause

__all__ = ["MODIFIED", "ApiError", "conflict", "details", "invalid", "not_found", "resource_name"]

Obj = dict[str, Any]
BUILTIN_GROUPS = frozenset({"", "apps", "batch", "coordination.k8s.io"})

# ---------------------------------------------------------------------------------------------------
# errors as the API server sends them


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def resource_name(info: KindInfo) -> str:
    return f"{info.plural}.{info.group}" if info.group else info.plural


def details(info: KindInfo, name: str) -> Obj:
    d: Obj = {"name": name, "kind": info.plural}
    if info.group:
        d["group"] = info.group
    return d


def not_found(info: KindInfo, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource_name(info)} "{name}" not found', details(info, name))


def conflict(info: KindInfo, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource_name(info)} "{name}": {why}',
        details(info, name),
    )


def invalid(info: KindInfo, name: str, causes: list[Cause]) -> ApiError:
    """422 Invalid as the API server words it: every field error in the message, each in the causes."""
    qualified = f"{info.kind}.{info.group}" if info.group and info.group not in BUILTIN_GROUPS else info.kind
    listed = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(str(c) for c in causes) + "]"
    details: Obj = {"name": name, "kind": info.kind}
    if info.group:
        details["group"] = info.group
    details["causes"] = [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {listed}', details)


MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"
