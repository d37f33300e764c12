"""PATCH as kube-apiserver applies it, by the request's Content-Type:

* ``application/merge-patch+json``: RFC 7386 (objects merge, ``null`` deletes, lists are replaced);
* ``application/json-patch+json``: RFC 6902, by the ``jsonpatch`` library;
* ``application/strategic-merge-patch+json``: built-in kinds only (custom resources answer 415, as the
  API server does): a merge patch whose lists of objects merge by their patch merge key (containers by
  ``name``, ownerReferences by ``uid``...), ``metadata.finalizers`` merge as a set, an item
  ``{"$patch": "delete", <key>: ...}`` deletes that item and ``$deleteFromPrimitiveList/<field>``
  removes strings.  Only the merge keys of the fields our manifests and kubectl paths touch are known.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

__all__ = ["JSON_PATCH", "MERGE_PATCH", "STRATEGIC_MERGE_PATCH", "PatchError", "apply_patch"]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

# patchMergeKey of the list fields of built-in kinds that kubectl patches touch
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "ownerReferences": "uid",
    "conditions": "type",
    "imagePullSecrets": "name",
}
_SET_LISTS = {"finalizers"}


class PatchError(ValueError):
    """A patch that cannot be applied (the API server answers 422 or 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _strategic(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            drop = set(value or [])
            out[field] = [v for v in out.get(field) or [] if v not in drop]
            continue
        if key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list) and key in _MERGE_KEYS and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, _MERGE_KEYS[key])
        elif isinstance(value, list) and key in _SET_LISTS and isinstance(out.get(key), list):
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = _strategic(out.get(key), value)
    return out


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: {merge_key}")
        at = next(
            (
                i
                for i, cur in enumerate(out)
                if isinstance(cur, dict) and cur.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if at is not None:
                del out[at]
        elif at is None:
            out.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            out[at] = _strategic(out[at], item)
    return out


def apply_patch(obj: Any, content_type: str, patch: Any, *, builtin: bool) -> Any:
    """The patched object.  Raises PatchError (bad patch) or LookupError (a media type the kind does
    not take; the API server answers 415)."""
    if content_type == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise PatchError("a merge patch must be a JSON object")
        return merge_patch(obj, patch)
    if content_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise PatchError("a JSON patch must be a list of operations")
        try:
            return jsonpatch.apply_patch(obj, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
            raise PatchError(str(err)) from None
    if content_type == STRATEGIC_MERGE_PATCH and builtin:
        if not isinstance(patch, dict):
            raise PatchError("a strategic merge patch must be a JSON object")
        return _strategic(obj, patch)
    raise LookupError(content_type)
