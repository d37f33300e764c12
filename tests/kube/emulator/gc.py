"""Garbage collection by ownerReferences, as kube-controller-manager's garbage collector does it, and
the DeleteOptions that steer it.  Pure helpers; the emulator applies them after every write.

* Background (the default): the owner goes at once; once it is gone, each dependent whose owners are
  all gone is deleted (in the background too), and a dependent that still has a live owner only loses
  its references to the absent ones.
* Foreground: the owner gets the ``foregroundDeletion`` finalizer and stays, terminating; its
  dependents are deleted, and the finalizer goes once no dependent with ``blockOwnerDeletion: true``
  is left (terminating ones still block).
* Orphan: the owner gets the ``orphan`` finalizer; its dependents lose their reference to it, then the
  finalizer goes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FOREGROUND",
    "ORPHAN",
    "blocks_owner",
    "owner_uids",
    "propagation_policy",
    "without_owners",
]

Obj = dict[str, Any]

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
POLICIES = ("Background", "Foreground", "Orphan")


def owner_uids(obj: Obj) -> list[str]:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return [str(r["uid"]) for r in refs if isinstance(r, dict) and r.get("uid")]


def blocks_owner(dependent: Obj, owner_uid: str) -> bool:
    """Does the dependent's reference to ``owner_uid`` block the owner's foreground deletion?"""
    refs = dependent.get("metadata", {}).get("ownerReferences") or []
    return any(
        isinstance(r, dict) and r.get("uid") == owner_uid and r.get("blockOwnerDeletion") for r in refs
    )


def without_owners(obj: Obj, uids: set[str]) -> Obj:
    """A copy of ``obj`` whose ownerReferences name none of ``uids`` (the field goes when empty)."""
    out = copy.deepcopy(obj)
    meta = out["metadata"]
    refs = [
        r for r in meta.get("ownerReferences") or [] if not (isinstance(r, dict) and r.get("uid") in uids)
    ]
    if refs:
        meta["ownerReferences"] = refs
    else:
        meta.pop("ownerReferences", None)
    return out


def propagation_policy(body: Mapping[str, Any] | None, query: Mapping[str, str]) -> str:
    """The DeleteOptions' policy (``propagationPolicy``, or the old ``orphanDependents``); raises
    ValueError with the API server's words for an unknown one."""
    options = body or {}
    policy = options.get("propagationPolicy", query.get("propagationPolicy"))
    orphan = options.get("orphanDependents", query.get("orphanDependents"))
    if policy is not None and orphan is not None:
        raise ValueError(
            "propagationPolicy: Invalid value: orphanDependents and deletionPropagation cannot be both set"
        )
    if orphan is not None:
        return "Orphan" if orphan in (True, "true") else "Background"
    if policy is None:
        return "Background"
    if policy not in POLICIES:
        supported = ", ".join(f'"{p}"' for p in ("Foreground", "Background", "Orphan"))
        raise ValueError(f'propagationPolicy: Unsupported value: "{policy}": supported values: {supported}')
    return str(policy)
