"""The API server's rules for objects, as pure functions: what both stores obey (``ipam.store.protocol``).

The embedded store (``ipam.store.sqlite``) applies them itself; the Kubernetes store gets them from the
server.  Each function takes the stored object and the caller's input and returns what is to be
stored (a new dict: the arguments are never changed), or raises Invalid/Conflict with one line:

- identity: kind, namespace and name of an object a caller passes in (``identify``), with the
  metadata shapes the API server refuses (labels and annotations map strings to strings, finalizers
  a list of non-empty strings);
- ``created``: the metadata the server owns on a new object (uid, creationTimestamp, generation 1;
  no deletion fields);
- ``replaced``: an update or a status update over the stored object (system metadata kept, status
  kept or taken by the status subresource rules, generation bumped when anything but metadata and
  status changed, no new finalizer on a terminating object);
- ``deleted`` and ``finalizer_released``: what a delete does (remove, or mark terminating when
  finalizers hold the object or a pod is given a grace period, a later delete only shortening it);
- ``ends``: an object whose last finalizer went while terminating is removed.
"""

from __future__ import annotations

import calendar
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

from ipam.errors import Conflict, Invalid
from ipam.kinds import KindInfo, kind_info
from ipam.records import Obj

__all__ = [
    "DELETION_METADATA",
    "SYSTEM_METADATA",
    "Deletion",
    "check_version",
    "created",
    "deleted",
    "ends",
    "finalizer_released",
    "finalizers",
    "format_timestamp",
    "grace_period",
    "identify",
    "kind_of",
    "parse_timestamp",
    "random_uid",
    "replaced",
    "shown",
]

POD_KIND = "Pod"  # the one kind with graceful deletion
# metadata fields the store owns: an update never takes them from the caller's object
SYSTEM_METADATA = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation")
# metadata fields only a delete sets: create drops the caller's, update keeps the stored ones
DELETION_METADATA = ("deletionTimestamp", "deletionGracePeriodSeconds")
_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Deletion:
    """What a delete does to a stored object: ``keep`` it as it is, ``write`` ``obj`` (terminating, or
    with a shorter grace period), or ``remove`` it (``obj`` is its last state, for the DELETED event)."""

    action: Literal["keep", "write", "remove"]
    obj: Obj


def random_uid() -> str:
    """A random (version 4) UUID as Kubernetes gives objects, from the ``random`` module's generator
    (seeded from the OS, re-seeded in a forked child) instead of a ``getrandom`` call per object."""
    value = random.getrandbits(128)
    value = (value & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    value = (value & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def format_timestamp(seconds: float) -> str:
    """RFC 3339 UTC with second precision, as Kubernetes writes it: ``2026-11-26T13:00:00Z``."""
    return time.strftime(_TIMESTAMP, time.gmtime(seconds))


def parse_timestamp(text: object) -> float | None:
    """The seconds of a timestamp as ``format_timestamp`` writes it; None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, _TIMESTAMP)))
    except ValueError:
        return None


def shown(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def kind_of(kind: object, name: str = "") -> KindInfo:
    """The KindInfo of a kind a caller named; Invalid when it is missing or unknown."""
    if not isinstance(kind, str) or not kind:
        raise Invalid("object", name or "?", "kind", "is required")
    try:
        return kind_info(kind)
    except KeyError:
        raise Invalid(kind, name or "?", "kind", f"unknown kind {kind!r}") from None


def identify(obj: object) -> tuple[KindInfo, str, str]:
    """Kind, namespace and name of an object a caller passed in (Invalid if malformed)."""
    if not isinstance(obj, dict):
        raise Invalid("object", "?", "object", "must be a mapping")
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    where = name if isinstance(name, str) and name else "?"
    info = kind_of(obj.get("kind"), where)
    if not isinstance(meta, dict):
        raise Invalid(info.kind, where, "metadata", "is required")
    if not isinstance(name, str) or not name:
        raise Invalid(info.kind, where, "metadata.name", "is required")
    if "/" in name:
        raise Invalid(info.kind, name, "metadata.name", "may not contain '/'")
    api_version = obj.get("apiVersion")
    if api_version is not None and api_version != info.api_version:
        raise Invalid(info.kind, name, "apiVersion", f"must be {info.api_version!r}, not {api_version!r}")
    namespace = meta.get("namespace")
    if info.namespaced:
        if not isinstance(namespace, str) or not namespace:
            raise Invalid(info.kind, name, "metadata.namespace", "is required for a namespaced kind")
    else:
        if namespace not in (None, ""):
            raise Invalid(info.kind, name, "metadata.namespace", f"{info.kind} is not namespaced")
        namespace = ""
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is not None and not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise Invalid(info.kind, name, f"metadata.{key}", "must map strings to strings")
    held = meta.get("finalizers")
    if held is not None and not (isinstance(held, list) and all(isinstance(f, str) and f for f in held)):
        raise Invalid(info.kind, name, "metadata.finalizers", "must be a list of non-empty strings")
    return info, namespace, name


def grace_period(info: KindInfo, namespace: str, name: str, seconds: object) -> int | None:
    """The grace period a delete asks for, as the API server takes it: only Pods have graceful
    deletion (other kinds ignore it); a negative or non-integer value is refused."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise Invalid(
            info.kind, shown(namespace, name), "gracePeriodSeconds", f"{seconds!r} is not an integer"
        )
    if seconds < 0:
        raise Invalid(info.kind, shown(namespace, name), "gracePeriodSeconds", f"{seconds} must be >= 0")
    return seconds if info.kind == POD_KIND else None


def finalizers(meta: Obj) -> list[str]:
    value = meta.get("finalizers")
    return [str(f) for f in value] if isinstance(value, list) else []


def _grace_pending(meta: Obj) -> bool:
    """A pod deleted with a grace period that its final delete (grace 0) has not ended yet."""
    return bool(meta.get("deletionTimestamp")) and int(meta.get("deletionGracePeriodSeconds") or 0) > 0


def ends(obj: Obj) -> bool:
    """Whether a written object is gone instead: terminating, with no finalizer left and no pod grace
    period pending (the update that removes the last finalizer removes the object)."""
    meta = obj["metadata"]
    return bool(meta.get("deletionTimestamp")) and not finalizers(meta) and not _grace_pending(meta)


def check_version(info: KindInfo, namespace: str, name: str, wanted: object, stored: int | str) -> None:
    """The resourceVersion precondition: absent or empty means none; otherwise it must be current."""
    if wanted is None or wanted == "":
        return
    if str(wanted) != str(stored):
        raise Conflict(
            f'{info.kind} "{shown(namespace, name)}": resourceVersion {wanted} is stale '
            f"(now {stored}); re-read and retry"
        )


def _typed(info: KindInfo, obj: Obj) -> Obj:
    """The object with apiVersion and kind set from the kind table, first (as kubectl shows them)."""
    rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    return {"apiVersion": info.api_version, "kind": info.kind, **rest}


def _spec_part(info: KindInfo, obj: Obj) -> dict[str, Any]:
    """What a change of bumps metadata.generation: everything but metadata (and status for kinds with
    a status subresource)."""
    skip = {"metadata", "status"} if info.has_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skip and k not in ("apiVersion", "kind")}


def created(
    info: KindInfo, namespace: str, name: str, obj: Obj, *, uid: str, resource_version: str, now: float
) -> Obj:
    """``obj`` as the server stores it on create: typed, its identity and the metadata the server owns
    set, deletion fields dropped.  Copies only the metadata (and a dict status, which a store may
    derive fields into)."""
    new = _typed(info, obj)
    meta = new["metadata"] = dict(new["metadata"])
    if isinstance(new.get("status"), dict):
        new["status"] = dict(new["status"])
    meta["name"] = name
    if info.namespaced:
        meta["namespace"] = namespace
    for key in DELETION_METADATA:
        meta.pop(key, None)
    meta["uid"] = uid
    meta["resourceVersion"] = resource_version
    meta["creationTimestamp"] = format_timestamp(now)
    meta["generation"] = 1
    return new


def replaced(
    info: KindInfo, namespace: str, name: str, stored: Obj, incoming: Obj, *, status_only: bool
) -> Obj:
    """What an update (``status_only``: an update of the status subresource) of ``stored`` with the
    caller's ``incoming`` (a parsed copy the function may share) stores.  ``resourceVersion`` is the
    stored one: the caller compares the result with ``stored`` (equal: nothing changed, no new
    revision) and gives it the next revision otherwise."""
    if status_only:
        new = {**stored, "metadata": dict(stored["metadata"])}
        if "status" in incoming:
            new["status"] = incoming["status"]
        else:
            new.pop("status", None)
    else:
        new = {k: v for k, v in incoming.items() if k != "status"}
        if info.has_status:
            if "status" in stored:
                new["status"] = stored["status"]
        elif "status" in incoming:
            new["status"] = incoming["status"]
        meta = dict(incoming.get("metadata") or {})
        for key in (*SYSTEM_METADATA, *DELETION_METADATA):
            meta.pop(key, None)
            if key in stored["metadata"]:
                meta[key] = stored["metadata"][key]
        if stored["metadata"].get("deletionTimestamp"):
            had = set(finalizers(stored["metadata"]))
            added = [f for f in finalizers(meta) if f not in had]
            if added:
                raise Invalid(
                    info.kind,
                    shown(namespace, name),
                    "metadata.finalizers",
                    f"no new finalizers can be added while the object is being deleted (found {', '.join(added)})",
                )
        new["metadata"] = meta
    new = _typed(info, new)
    generation = int(stored["metadata"].get("generation", 1))
    if _spec_part(info, new) != _spec_part(info, stored):
        generation += 1
    new["metadata"]["generation"] = generation
    new["metadata"]["resourceVersion"] = stored["metadata"].get("resourceVersion")
    return new


def _with_metadata(stored: Obj) -> Obj:
    """A copy of ``stored`` whose metadata may be changed (the rest is shared)."""
    return {**stored, "metadata": dict(stored["metadata"])}


def _terminating(stored: Obj, *, at: float, grace: int) -> Obj:
    new = _with_metadata(stored)
    new["metadata"]["deletionTimestamp"] = format_timestamp(at)
    new["metadata"]["deletionGracePeriodSeconds"] = grace
    return new


def deleted(stored: Obj, grace: int | None, *, now: float) -> Deletion:
    """A delete (``grace``: the pod grace period it asks for, ``grace_period`` checked) of ``stored``:
    removed, or kept terminating when finalizers hold it or a pod is given a grace period > 0.  A
    delete of an object already terminating may only shorten a pod's grace period."""
    meta = stored["metadata"]
    held = bool(finalizers(meta))
    if meta.get("deletionTimestamp"):
        pending = int(meta.get("deletionGracePeriodSeconds") or 0)
        if grace is None or grace >= pending:
            return Deletion("keep", stored)
        requested = parse_timestamp(meta["deletionTimestamp"])
        start = now if requested is None else requested - pending
        new = _terminating(stored, at=start + grace, grace=grace)
        return Deletion("remove" if grace == 0 and not held else "write", new)
    if grace is not None and grace > 0:
        return Deletion("write", _terminating(stored, at=now + grace, grace=grace))
    if held:
        return Deletion("write", _terminating(stored, at=now, grace=0))
    return Deletion("remove", stored)


def finalizer_released(stored: Obj, finalizer: str, *, now: float) -> Deletion:
    """Drop ``finalizer`` from ``stored`` and delete it, as Spiderpool's agent does with a pod's
    SpiderEndpoint once its IPs are released (other finalizers, if any, keep it terminating)."""
    had = finalizers(stored["metadata"])
    rest = [f for f in had if f != finalizer]
    new = _with_metadata(stored)
    meta = new["metadata"]
    if rest:
        meta["finalizers"] = rest
    else:
        meta.pop("finalizers", None)
    if meta.get("deletionTimestamp"):
        if not rest:
            return Deletion("remove", new)
        return Deletion("write" if rest != had else "keep", new)
    if rest:
        return Deletion("write", _terminating(new, at=now, grace=0))
    return Deletion("remove", new)
