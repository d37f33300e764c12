"""Custom resources checked against their CRD's ``openAPIV3Schema`` as kube-apiserver does it.

On every create and update of a custom resource the API server prunes the fields the schema does not
know, applies the schema's defaults, validates the result with the OpenAPI checks, then runs the
``x-kubernetes-validations`` CEL rules (transition rules, those naming ``oldSelf``, only on updates of a
value that existed), and refuses the request with 422 ``Invalid`` naming every failing field.

The OpenAPI checks are ``jsonschema``'s Draft 4 validator (the keywords of an OpenAPI 3.0 schema
object are Draft 4's, plus ``nullable``, added here); CEL rules are compiled and run by
``common-expression-language``.  Only what no library does is written here: pruning and defaulting
(structural-schema walks that are Kubernetes' own), the structural-schema check of the CRDs, and the
wording of the API server's field errors.  ``format`` is not checked (the API server checks only a few
formats, none of which our CRDs use beyond ``int64``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import cel
import jsonschema
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError

__all__ = [
    "Cause",
    "CrdSchema",
    "defaulted",
    "prune",
    "pruned",
    "structural_problems",
]

Schema = dict[str, Any]
Obj = dict[str, Any]


@dataclass(frozen=True)
class Cause:
    """One field error, as in a Status's ``details.causes``."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# ---------------------------------------------------------------------------------- structural schemas

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
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "default",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-map-type",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}


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
        else:
            try:
                cel.compile(rule["rule"])
            except Exception as err:  # the library's parse errors have no common base class
                out.append(f"{where}: CEL rule {rule['rule']!r} does not compile: {err}")
    for name, sub in (schema.get("properties") or {}).items():
        out.extend(structural_problems(sub, f"{path}.{name}" if path else name))
    if isinstance(schema.get("items"), dict):
        out.extend(structural_problems(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        out.extend(structural_problems(schema["additionalProperties"], f"{path}{{}}"))
    return out


# ---------------------------------------------------------------------------- pruning and defaulting


def _walk_pruned(schema: Schema, value: Any, path: str, root: bool) -> Iterator[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = f"{path}.{name}" if path else name
            if root and name in ("metadata", "apiVersion", "kind"):
                continue  # the API server's own, never pruned by the CRD schema
            if name in props:
                yield from _walk_pruned(props[name], item, sub, False)
            elif isinstance(extra, dict):
                yield from _walk_pruned(extra, item, sub, False)
            elif extra is not True:
                yield sub
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _walk_pruned(schema["items"], item, f"{path}[{i}]", False)


def pruned(schema: Schema, value: Any) -> list[str]:
    """Paths of the fields the API server would drop from ``value`` (the schema does not know them)."""
    return list(_walk_pruned(schema, value, "", True))


def prune(schema: Schema, value: Any, *, root: bool = True) -> Any:
    """``value`` without the fields the schema does not know (a new value)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return copy.deepcopy(value)
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out: Obj = {}
        for name, item in value.items():
            if root and name in ("metadata", "apiVersion", "kind"):
                out[name] = copy.deepcopy(item)
            elif name in props:
                out[name] = prune(props[name], item, root=False)
            elif isinstance(extra, dict):
                out[name] = prune(extra, item, root=False)
            elif extra is True:
                out[name] = copy.deepcopy(item)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(schema["items"], item, root=False) for item in value]
    return copy.deepcopy(value)


def defaulted(schema: Schema, value: Any) -> Any:
    """``value`` with the schema's ``default`` set on every missing property of an object that is
    present (a new value), as the API server defaults custom resources."""
    if isinstance(value, dict):
        out = {k: copy.deepcopy(v) for k, v in value.items()}
        for name, sub in (schema.get("properties") or {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = defaulted(sub, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            props = schema.get("properties") or {}
            for name in out:
                if name not in props:
                    out[name] = defaulted(extra, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [defaulted(schema["items"], item) for item in value]
    return value


# -------------------------------------------------------------------------------------- validation


_DRAFT4_TYPE = Draft4Validator.VALIDATORS["type"]


def _nullable_type(validator: Any, types: Any, instance: Any, schema: Schema) -> Iterator[ValidationError]:
    if instance is None and schema.get("nullable"):
        return
    yield from _DRAFT4_TYPE(validator, types, instance, schema)


_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    Draft4Validator, validators={"type": _nullable_type}
)


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return f'"{_json_type(value)}"'
    return json.dumps(value)


_REQUIRED = re.compile(r"^'(.+)' is a required property$")


def _cause(err: ValidationError) -> Cause:
    """The API server's words for one OpenAPI error."""
    path = _path(err.absolute_path)
    v = err.validator
    got: Any = err.instance
    want: Any = err.validator_value
    if v == "required":
        m = _REQUIRED.match(err.message)
        name = m.group(1) if m else "?"
        return Cause(f"{path}.{name}" if path else name, "Required value", "FieldValueRequired")
    if v == "type":
        t = _json_type(got)
        return Cause(
            path,
            f'Invalid value: "{t}": {path} in body must be of type {want}: "{t}"',
            "FieldValueTypeInvalid",
        )
    if v == "enum":
        supported = ", ".join(json.dumps(str(x)) for x in want)
        return Cause(
            path, f"Unsupported value: {_shown(got)}: supported values: {supported}", "FieldValueNotSupported"
        )
    if v == "pattern":
        return Cause(path, f"Invalid value: {_shown(got)}: {path} in body should match '{want}'")
    if v == "maxLength":
        return Cause(path, f"Too long: may not be more than {want} bytes", "FieldValueTooLong")
    if v == "maxItems":
        return Cause(path, f"Too many: {len(got)}: must have at most {want} items", "FieldValueTooMany")
    if v == "minItems":
        return Cause(path, f"Invalid value: {len(got)}: {path} in body should have at least {want} items")
    if v == "minimum":
        return Cause(
            path, f"Invalid value: {_shown(got)}: {path} in body should be greater than or equal to {want}"
        )
    if v == "maximum":
        return Cause(
            path, f"Invalid value: {_shown(got)}: {path} in body should be less than or equal to {want}"
        )
    return Cause(path, f"Invalid value: {_shown(got)}: {err.message}")


@cache
def _program(rule: str) -> Any:
    return cel.compile(rule)


def _cel(schema: Schema, value: Any, old: Any, has_old: bool, path: str) -> Iterator[Cause]:
    """Run the CEL rules of ``schema`` and its children on a value that passed the OpenAPI checks."""
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if "oldSelf" in text and not has_old:
            continue  # a transition rule: only on updates of a value that existed
        ctx = {"self": value, **({"oldSelf": old} if has_old else {})}
        try:
            ok = _program(text).execute(ctx)
        except Exception as err:  # an evaluation error is the rule failing, with the library's words
            yield Cause(path or "<root>", f'Invalid value: "{_json_type(value)}": {text}: {err}')
            continue
        if ok is not True:
            message = rule.get("message") or f"failed rule: {text}"
            yield Cause(path or "<root>", f'Invalid value: "{_json_type(value)}": {message}')
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = props.get(name) or (extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            old_has = has_old and isinstance(old, dict) and name in old
            yield from _cel(
                sub, item, old[name] if old_has else None, old_has, f"{path}.{name}" if path else name
            )
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):  # list items are not correlated with old ones (no listType map)
            yield from _cel(schema["items"], item, None, False, f"{path}[{i}]")


class CrdSchema:
    """One served version's ``openAPIV3Schema``: what the API server does with a custom resource."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._validator = _Validator(schema)

    def admit(self, obj: Obj) -> Obj:
        """The object as it is stored: pruned, then defaulted."""
        out: Obj = defaulted(self.schema, prune(self.schema, obj))
        return out

    def validate(self, obj: Obj, old: Obj | None = None) -> list[Cause]:
        """The field errors of ``obj`` (``old``: the stored object on an update)."""
        body = {k: v for k, v in obj.items() if k != "metadata"}
        causes = [
            _cause(e) for e in sorted(self._validator.iter_errors(body), key=lambda e: _path(e.absolute_path))
        ]
        if causes:
            return causes  # CEL rules run only on values that passed the OpenAPI checks
        old_body = {k: v for k, v in old.items() if k != "metadata"} if old is not None else None
        return list(_cel(self.schema, body, old_body, old is not None, ""))
