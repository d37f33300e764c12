"""A small OpenAPI v3 validator for the subset of CRD schemas the project's CRDs use, with the API
server's rules for structural schemas, pruning and CEL validation rules.

The API server does three things with a custom resource's schema; each is a function here:

* ``structural_problems(schema)``: a CRD is refused unless its schema is *structural* (every node says
  its ``type``, no forbidden keywords), so this checks the CRDs themselves;
* ``validate(schema, value, old)``: the OpenAPI checks (type, required, enum, pattern, minimum/maximum,
  maxLength, minItems/maxItems, additionalProperties) and the ``x-kubernetes-validations`` rules, with
  transition rules (those naming ``oldSelf``) only on updates, as the API server runs them;
* ``pruned(schema, value)``: the fields the API server would silently drop (not in the schema), which
  is how a field the agent writes but the CRD forgot would be lost.

CEL is evaluated by a table (``CEL_RULES``) that holds the Python meaning of every rule our CRDs use;
``validate`` fails loudly on a rule it does not know, so a rule added to a CRD without its meaning here
fails the tests instead of being skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["CEL_RULES", "UnknownRule", "pruned", "structural_problems", "validate"]

Schema = dict[str, Any]

_ALLOWED = {
    "type",
    "format",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "default",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-map-type",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
_TYPES: dict[str, Callable[[object], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def _has(obj: Any, key: str) -> bool:
    return isinstance(obj, dict) and key in obj


def _size(obj: Any, key: str) -> int:
    return len(obj[key]) if _has(obj, key) else 0


# The meaning of each CEL rule the CRDs use: f(self, oldSelf) -> the rule holds.
CEL_RULES: dict[str, Callable[[Any, Any], bool]] = {
    "self == oldSelf": lambda s, o: bool(s == o),
    "!has(oldSelf.ipVersion) || (has(self.ipVersion) && self.ipVersion == oldSelf.ipVersion)": lambda s, o: (
        not _has(o, "ipVersion") or (_has(s, "ipVersion") and s["ipVersion"] == o["ipVersion"])
    ),
    "!has(self.ipVersion) || (self.ipVersion == 6) == self.subnet.contains(':')": lambda s, _: (
        not _has(s, "ipVersion") or (s["ipVersion"] == 6) == (":" in s["subnet"])
    ),
    "self.dst != '0.0.0.0/0' && self.dst != '::/0'": lambda s, _: s["dst"] not in ("0.0.0.0/0", "::/0"),
    "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
    "(has(self.matchExpressions) && size(self.matchExpressions) > 0)": lambda s, _: (
        _size(s, "matchLabels") > 0 or _size(s, "matchExpressions") > 0
    ),
}


class UnknownRule(KeyError):
    """A CEL rule with no entry in CEL_RULES."""


def structural_problems(schema: Schema, path: str = "") -> list[str]:
    """Why the API server would refuse this schema as non-structural (empty when it is fine)."""
    out: list[str] = []
    where = path or "<root>"
    for key in schema:
        if key not in _ALLOWED:
            out.append(f"{where}: keyword {key!r} is not allowed in a structural schema")
    special = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in schema and not special:
        out.append(f"{where}: type is required")
    elif "type" in schema and schema["type"] not in _TYPES:
        out.append(f"{where}: unknown type {schema['type']!r}")
    if "properties" in schema and "additionalProperties" in schema:
        out.append(f"{where}: properties and additionalProperties are mutually exclusive")
    for rule in schema.get("x-kubernetes-validations", []):
        if not isinstance(rule, dict) or "rule" not in rule:
            out.append(f"{where}: a validation needs a rule")
    for name, sub in (schema.get("properties") or {}).items():
        out.extend(structural_problems(sub, f"{path}.{name}" if path else name))
    if isinstance(schema.get("items"), dict):
        out.extend(structural_problems(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        out.extend(structural_problems(schema["additionalProperties"], f"{path}{{}}"))
    return out


def validate(schema: Schema, value: Any, old: Any = None, path: str = "") -> list[str]:
    """The errors the API server reports for ``value`` (``old``: the stored object on an update)."""
    where = path or "<root>"
    if value is None and schema.get("nullable"):
        return []
    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [f"{where}: must be of type {kind}"]
    out: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: must be one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{where}: must match {schema['pattern']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(f"{where}: may not be longer than {schema['maxLength']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: must be <= {schema['maximum']}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(f"{where}: may not have more than {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(f"{where}: must have at least {schema['minItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                out.extend(validate(schema["items"], item, None, f"{path}[{i}]"))
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                out.append(f"{path + '.' if path else ''}{name}: Required value")
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name in value:
                old_sub = old.get(name) if isinstance(old, dict) else None
                out.extend(validate(sub, value[name], old_sub, f"{path}.{name}" if path else name))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                out.extend(validate(extra, item, None, f"{path}.{name}" if path else name))
    if out:
        return out  # CEL rules run only on values that passed the OpenAPI checks
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if text not in CEL_RULES:
            raise UnknownRule(f"{where}: no meaning known for CEL rule {text!r}")
        if "oldSelf" in text and old is None:
            continue  # a transition rule: only on updates of a value that existed
        if not CEL_RULES[text](value, old):
            out.append(f"{where}: {rule.get('message', 'failed rule: ' + text)}")
    return out


def pruned(schema: Schema, value: Any, path: str = "", *, root: bool = True) -> list[str]:
    """Paths of fields the API server would drop from ``value`` because the schema does not know them."""
    out: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return out
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = f"{path}.{name}" if path else name
            if root and name == "metadata":
                continue  # ObjectMeta is the API server's own, never pruned by the CRD schema
            if name in props:
                out.extend(pruned(props[name], item, sub, root=False))
            elif isinstance(extra, dict):
                out.extend(pruned(extra, item, sub, root=False))
            elif extra is not True:
                out.append(sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out.extend(pruned(schema["items"], item, f"{path}[{i}]", root=False))
    return out
