"""Kubernetes label selectors (``matchLabels`` + ``matchExpressions``), parsed and matched purely."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LabelSelector", "Requirement", "SelectorError"]

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
_OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A selector that cannot be parsed; ``field`` is the path of the bad part (``spec.podAffinity...``)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        # NotIn: as in Kubernetes, a missing key satisfies NotIn.
        return self.key not in labels or labels[self.key] not in self.values

    def to_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True)
class LabelSelector:
    """A parsed ``metav1.LabelSelector``.  The empty selector matches every label set, as in Kubernetes."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def to_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [r.to_obj() for r in self.match_expressions]
        return out

    @classmethod
    def parse(cls, obj: object, field: str) -> LabelSelector:
        """Parse a selector dict; SelectorError names the exact field that is wrong."""
        if not isinstance(obj, Mapping):
            raise SelectorError(field, "must be an object with matchLabels and/or matchExpressions")
        unknown = sorted(set(obj) - {"matchLabels", "matchExpressions"})
        if unknown:
            raise SelectorError(f"{field}.{unknown[0]}", "unknown field")
        labels = _parse_match_labels(obj.get("matchLabels"), f"{field}.matchLabels")
        exprs = _parse_expressions(obj.get("matchExpressions"), f"{field}.matchExpressions")
        return cls(labels, exprs)


def _parse_match_labels(raw: object, field: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SelectorError(field, "must be a map of label keys to values")
    out: list[tuple[str, str]] = []
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise SelectorError(field, f"label key {key!r} must be a non-empty string")
        if not isinstance(value, str):
            raise SelectorError(f"{field}.{key}", f"value {value!r} must be a string")
        out.append((key, value))
    return tuple(sorted(out))


def _parse_expressions(raw: object, field: str) -> tuple[Requirement, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SelectorError(field, "must be a list")
    out: list[Requirement] = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, Mapping):
            raise SelectorError(where, "must be an object with key, operator and values")
        key = item.get("key")
        if not isinstance(key, str) or not key:
            raise SelectorError(f"{where}.key", "must be a non-empty string")
        op = item.get("operator")
        if op not in _OPERATORS:
            raise SelectorError(f"{where}.operator", f"{op!r} is not one of {', '.join(_OPERATORS)}")
        values_raw = item.get("values")
        if values_raw is None:
            values_raw = []
        if not isinstance(values_raw, list) or not all(isinstance(v, str) for v in values_raw):
            raise SelectorError(f"{where}.values", "must be a list of strings")
        if op in ("In", "NotIn") and not values_raw:
            raise SelectorError(f"{where}.values", f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values_raw:
            raise SelectorError(f"{where}.values", f"must be empty when operator is {op}")
        operator: Operator = op
        out.append(Requirement(key, operator, tuple(values_raw)))
    return tuple(out)
