"""Label and field selectors as the API server parses them from a list or watch query."""

from __future__ import annotations

import re
from typing import Any

from ipam.selectors import LabelSelector, Requirement

__all__ = ["field_value", "parse_field_selector", "parse_label_selector", "selectable_fields"]

Obj = dict[str, Any]

# ---------------------------------------------------------------------------------------------------
# label selectors


_REQ_SET = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_REQ_EQ = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)\s*$")
_REQ_EXISTS = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*$")


def parse_label_selector(text: str) -> LabelSelector:
    """A ``labelSelector`` query string (Kubernetes' text syntax: ``a=b``, ``a!=b``, ``a in (x,y)``,
    ``a notin (x)``, ``a``, ``!a``) as the project's LabelSelector, which does the matching."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    reqs: list[Requirement] = []
    for part in parts:
        if not part.strip():
            continue
        if m := _REQ_SET.match(part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), "In" if m.group(2) == "in" else "NotIn", values))
        elif m := _REQ_EQ.match(part):
            reqs.append(Requirement(m.group(1), "NotIn" if m.group(2) == "!=" else "In", (m.group(3),)))
        elif m := _REQ_EXISTS.match(part):
            reqs.append(Requirement(m.group(2), "DoesNotExist" if m.group(1) else "Exists"))
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    return LabelSelector((), tuple(reqs))


def field_value(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


# The fields each kind's REST storage accepts in a ``fieldSelector`` (kube-apiserver's
# ``GetAttrs``/``AddFieldLabelConversionFunc`` tables): every kind has metadata.name and, when
# namespaced, metadata.namespace; a few built-in kinds add their own.  Anything else is 400 BadRequest
# "field label not supported", as the API server answers.
_META_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_KIND_FIELDS: dict[str, frozenset[str]] = {
    "Pod": frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "Node": frozenset({"spec.unschedulable"}),
    "Namespace": frozenset({"status.phase"}),
}


def selectable_fields(kind: str) -> frozenset[str]:
    """The fields a ``fieldSelector`` on ``kind`` may name."""
    return _META_FIELDS | _KIND_FIELDS.get(kind, frozenset())


def parse_field_selector(text: str, kind: str, *, builtin: bool = False) -> list[tuple[str, bool, str]]:
    """A ``fieldSelector`` query string on ``kind`` (``f=v``, ``f==v``, ``f!=v``, comma-separated);
    ValueError for a malformed requirement or a field ``kind`` cannot be selected by (in the words of
    the API server: built-in kinds' storage, or the custom resource handler)."""
    out: list[tuple[str, bool, str]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if m is None:
            raise ValueError(f"invalid field selector: {part!r}")
        if m.group(1) not in selectable_fields(kind):
            if builtin:
                raise ValueError(f"field label not supported: {m.group(1)}")
            raise ValueError(f'"{m.group(1)}" is not a known field selector: only {_known(kind)}')
        out.append((m.group(1), m.group(2) != "!=", m.group(3)))
    return out


def _known(kind: str) -> str:
    return ", ".join(f'"{f}"' for f in sorted(selectable_fields(kind)))
