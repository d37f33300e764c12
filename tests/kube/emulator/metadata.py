"""ObjectMeta validation as kube-apiserver's ``ValidateObjectMeta`` does it, with its messages: names
(DNS-1123 subdomains; namespaces are DNS-1123 labels), label keys and values (qualified names of at most
63 characters, values of at most 63), annotation keys and the annotations' total size (256 KiB)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from tests.kube.emulator.schema import Cause

__all__ = ["meta_causes"]

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = rf"({_QUALIFIED_NAME})?"
TOTAL_ANNOTATION_SIZE = 256 * 1024

_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{_DNS1123_SUBDOMAIN}')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    f"validation is '{_DNS1123_LABEL}')"
)
_QUALIFIED_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    f"validation is '{_QUALIFIED_NAME}')"
)
_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
    f"regex used for validation is '{_LABEL_VALUE}')"
)


def _full(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def _qualified_name(key: str, field: str) -> Iterator[Cause]:
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        yield Cause(field, f'Invalid value: "{key}": prefix part must be non-empty')
    elif prefix:
        if len(prefix) > 253:
            yield Cause(field, f'Invalid value: "{key}": prefix part must be no more than 253 characters')
        elif not _full(_DNS1123_SUBDOMAIN, prefix):
            yield Cause(field, f'Invalid value: "{key}": prefix part {_SUBDOMAIN_MSG}')
    if not name:
        yield Cause(field, f'Invalid value: "{key}": name part must be non-empty')
    elif len(name) > 63:
        yield Cause(field, f'Invalid value: "{key}": name part must be no more than 63 characters')
    elif not _full(_QUALIFIED_NAME, name):
        yield Cause(field, f'Invalid value: "{key}": {_QUALIFIED_MSG}')


def _name(name: str, field: str, namespace_kind: bool) -> Iterator[Cause]:
    if namespace_kind:
        if len(name) > 63:
            yield Cause(field, f'Invalid value: "{name}": must be no more than 63 characters')
        elif not _full(_DNS1123_LABEL, name):
            yield Cause(field, f'Invalid value: "{name}": {_LABEL_MSG}')
        return
    if len(name) > 253:
        yield Cause(field, f'Invalid value: "{name}": must be no more than 253 characters')
    elif not _full(_DNS1123_SUBDOMAIN, name):
        yield Cause(field, f'Invalid value: "{name}": {_SUBDOMAIN_MSG}')


def meta_causes(meta: Mapping[str, Any], *, kind: str) -> list[Cause]:
    """The field errors of an object's metadata (empty when it is valid)."""
    out: list[Cause] = []
    name = meta.get("name")
    if isinstance(name, str) and name:
        out.extend(_name(name, "metadata.name", kind == "Namespace"))
    generate = meta.get("generateName")
    if isinstance(generate, str) and generate and not name:
        # the API server checks the prefix as a name with its trailing '-' allowed
        out.extend(_name(generate.rstrip("-") or "x", "metadata.generateName", kind == "Namespace"))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        out.append(Cause("metadata.labels", "Invalid value: must be a map of strings"))
        labels = {}
    for key, value in labels.items():
        out.extend(_qualified_name(str(key), "metadata.labels"))
        if not isinstance(value, str):
            out.append(Cause("metadata.labels", f"Invalid value: {value!r}: must be a string"))
        elif len(value) > 63:
            out.append(
                Cause("metadata.labels", f'Invalid value: "{value}": must be no more than 63 characters')
            )
        elif not _full(_LABEL_VALUE, value):
            out.append(Cause("metadata.labels", f'Invalid value: "{value}": {_VALUE_MSG}'))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        out.append(Cause("metadata.annotations", "Invalid value: must be a map of strings"))
        annotations = {}
    total = 0
    for key, value in annotations.items():
        out.extend(_qualified_name(str(key).lower(), "metadata.annotations"))
        total += len(str(key)) + len(str(value))
    if total > TOTAL_ANNOTATION_SIZE:
        out.append(
            Cause(
                "metadata.annotations",
                f"Too long: must have at most {TOTAL_ANNOTATION_SIZE} bytes",
                "FieldValueTooLong",
            )
        )
    return out
