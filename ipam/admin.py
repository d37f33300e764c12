"""Writing objects the way ``kubectl apply`` and ``kubectl delete`` do, through admission.

Spiderpool runs its rules in a webhook; here they run in ``ipam.admission`` before every write, with
the same read -> check -> conditional write -> retry-on-Conflict loop as allocations, so a check such
as "no excluded IP is in use" cannot interleave with a concurrent allocation (a claim bumps the pool's
resourceVersion, which fails this write's precondition, which re-reads and re-checks).

Like Spiderpool's mutating webhook, admission gives every SpiderIPPool and SpiderSubnet the finalizer
``spiderpool.spidernet.io``, so ``delete_object`` (``kubectl delete``) leaves a pool that still holds
allocations terminating until they are released, instead of forgetting IPs that pods still use.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

import yaml

from ipam import admission, safe_yaml
from ipam.blocks import block_size_changes
from ipam.errors import AlreadyExists, Conflict, Invalid, IpamError, NotFound
from ipam.kinds import KINDS, KindInfo, kind_info, resolve_kind
from ipam.model import FINALIZER, IPPool, Subnet
from ipam.ranges import total_ip_count
from ipam.records import Obj
from ipam.store.protocol import Store

__all__ = [
    "ApplyOutcome",
    "DocumentError",
    "apply_documents",
    "apply_object",
    "delete_object",
    "finish_terminating",
    "load_documents",
    "owned_pools",
    "update_object",
]

ApplyOutcome = Literal["created", "configured", "unchanged"]
ADMITTED_KINDS = ("SpiderIPPool", "SpiderSubnet", "SpiderReservedIP", "SpiderIPBlock")
FINALIZED_KINDS = ("SpiderIPPool", "SpiderSubnet")  # Spiderpool's webhook gives these its finalizer
_RETRIES = 8


class DocumentError(IpamError):
    """A YAML document that is not a Kubernetes object: ``<source>: document N: reason``."""


def load_documents(text: str, *, source: str) -> list[Obj]:
    """Parse multi-document YAML into objects, checking only the envelope (apiVersion/kind/name)."""
    try:
        raw_docs = safe_yaml.load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise DocumentError(f"{source}: {where}{getattr(exc, 'problem', None) or 'invalid YAML'}") from None
    docs: list[Obj] = []
    for index, doc in enumerate(raw_docs, start=1):
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            items: list[Any] = doc["items"]
        else:
            items = [doc]
        for item in items:
            docs.append(_check_envelope(item, f"{source}: document {index}"))
    if not docs:
        raise DocumentError(f"{source}: no objects found")
    return docs


def _check_envelope(doc: object, where: str) -> Obj:
    if not isinstance(doc, dict):
        raise DocumentError(f"{where}: must be a mapping (an object), not {type(doc).__name__}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise DocumentError(f"{where}: kind: is required")
    try:
        info = resolve_kind(kind)
    except KeyError:
        raise DocumentError(f'{where}: kind: unknown kind "{kind}"') from None
    if info.kind != kind:
        raise DocumentError(f'{where}: kind: "{kind}" is not a kind name (did you mean "{info.kind}"?)')
    if doc.get("apiVersion") != info.api_version:
        raise DocumentError(
            f'{where}: apiVersion: {kind} needs "{info.api_version}", not {doc.get("apiVersion")!r}'
        )
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise DocumentError(f"{where}: metadata.name: is required")
    namespace = metadata.get("namespace")
    if info.namespaced:
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise DocumentError(f"{where}: metadata.namespace: must be a non-empty string")
    elif namespace not in (None, ""):
        raise DocumentError(f"{where}: metadata.namespace: {kind} is cluster-scoped")
    for key in ("spec", "status"):
        if key in doc and not isinstance(doc[key], dict | type(None)):
            raise DocumentError(f"{where}: {key}: must be a mapping")
    return copy.deepcopy(doc)


def _namespace(info: KindInfo, obj: Obj) -> str:
    return str(obj["metadata"].get("namespace") or "default") if info.namespaced else ""


def _in_use(store: Store, kind: str, obj: Obj) -> dict[str, str]:
    """Allocated IPs an update must not remove: the pool's own records, or for a SpiderSubnet the
    records of every pool of the same CIDR (ip -> holder, for the error message)."""
    name = obj["metadata"]["name"]
    if kind == "SpiderIPPool":
        pools = [name]
    elif kind == "SpiderSubnet":
        subnet = (obj.get("spec") or {}).get("subnet")
        pools = [
            p["metadata"]["name"]
            for p in store.list("SpiderIPPool")
            if p.get("spec", {}).get("subnet") == subnet
        ]
    else:
        return {}
    in_use: dict[str, str] = {}
    for pool in pools:
        try:
            in_use.update({r.ip: r.pod if kind == "SpiderIPPool" else pool for r in store.records(pool)})
        except NotFound:
            continue
    return in_use


Listing = Callable[[str], list[Obj]]
"""The stored objects of a (cluster-scoped, admitted) kind that a write must not collide with."""


class _Overlay:
    """Stored objects of the admitted kinds, listed once for a whole apply and overlaid with what the
    apply admits or writes, so checking N documents reads each kind once, not N times."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_kind: dict[str, dict[str, Obj]] = {}

    def _kind(self, kind: str) -> dict[str, Obj]:
        if kind not in self._by_kind:
            listed = self._store.list(kind, allocated_ips=False)
            self._by_kind[kind] = {o["metadata"]["name"]: o for o in listed}
        return self._by_kind[kind]

    def __call__(self, kind: str) -> list[Obj]:
        return list(self._kind(kind).values())

    def put(self, obj: Obj) -> None:
        if obj["kind"] in ADMITTED_KINDS:
            self._kind(obj["kind"])[obj["metadata"]["name"]] = obj


def _admit(store: Store, obj: Obj, old: Obj | None, listing: Listing | None = None) -> Obj:
    """``listing``: the stored objects to check against (default: the store's, read now)."""
    kind = obj["kind"]
    admission.validate_metadata(kind, kind_info(kind).namespaced, obj)
    admission.validate_owner_references(kind, obj)
    admission.validate_size(kind, obj["metadata"]["name"], obj)
    if kind not in ADMITTED_KINDS:
        return obj
    name = obj["metadata"]["name"]

    def stored(of_kind: str) -> list[Obj]:
        return listing(of_kind) if listing is not None else store.list(of_kind, allocated_ips=False)

    admitted = admission.admit(
        obj,
        old=old,
        existing=[o for o in stored(kind) if o["metadata"]["name"] != name],
        in_use=_in_use(store, kind, obj),
        subnets=stored("SpiderSubnet") if kind == "SpiderIPPool" else (),
        pools=stored("SpiderIPPool") if kind == "SpiderSubnet" else (),
        blocks=stored("SpiderIPBlock") if kind == "SpiderIPPool" and block_size_changes(obj, old) else (),
    )
    if kind in FINALIZED_KINDS:
        _add_finalizer(admitted, old)
        # totalIPCount is Spiderpool's controller's job; here it follows every write of the spec
        usable = (IPPool if kind == "SpiderIPPool" else Subnet).from_obj(admitted).usable
        status: dict[str, Any] = admitted["status"] if isinstance(admitted.get("status"), dict) else {}
        admitted["status"] = {**status, "totalIPCount": total_ip_count(usable.size)}
    return admitted


def _add_finalizer(obj: Obj, old: Obj | None) -> None:
    """Spiderpool's webhook: the object gets ``spiderpool.spidernet.io`` unless it is being deleted (a
    terminating object may not take a new finalizer)."""
    if old is not None and old["metadata"].get("deletionTimestamp"):
        return
    meta = obj["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER not in finalizers:
        meta["finalizers"] = [*finalizers, FINALIZER]


def _desired(store: Store, obj: Obj) -> tuple[Obj | None, Obj]:
    """The stored object (if any) and what it becomes: apply replaces what the user wrote and keeps what
    the system owns (uid, resourceVersion, status of kinds with a status subresource)."""
    info = kind_info(obj["kind"])
    try:
        old: Obj | None = store.get(info.kind, obj["metadata"]["name"], _namespace(info, obj))
    except NotFound:
        return None, copy.deepcopy(obj)
    assert old is not None
    return old, _merged(info, old, obj)


def _merged(info: KindInfo, old: Obj, obj: Obj) -> Obj:
    """What ``old`` becomes when ``obj`` is applied over it."""
    desired = copy.deepcopy(old)
    for key in ("labels", "annotations", "ownerReferences", "finalizers"):
        if key in obj["metadata"]:
            desired["metadata"][key] = copy.deepcopy(obj["metadata"][key])
    for key, value in obj.items():
        if key not in ("metadata", "status", "apiVersion", "kind"):
            desired[key] = copy.deepcopy(value)
    if not info.has_status and "status" in obj:
        desired["status"] = copy.deepcopy(obj["status"])
    return desired


def apply_object(store: Store, obj: Obj, *, listing: Listing | None = None) -> tuple[ApplyOutcome, Obj]:
    """Create or update one object through admission; retries on Conflict, re-reading each time.
    ``listing``: what to check the object against instead of reading the store's (``apply_documents``
    inside one transaction)."""
    info = kind_info(obj["kind"])
    name = obj["metadata"]["name"]
    if info.namespaced:
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": _namespace(info, obj)}}
    for attempt in range(_RETRIES):
        old, desired = _desired(store, obj)
        admitted = _admit(store, desired, old, listing if attempt == 0 else None)
        try:
            if old is None:
                written = store.create(admitted)
                outcome: ApplyOutcome = "created"
            elif _comparable(admitted) == _comparable(old):
                return "unchanged", old
            else:
                written = store.update(admitted)
                outcome = "configured"
            status = {
                k: v
                for k, v in (admitted.get("status") or {}).items()
                if k not in ("allocatedIPs", "allocatedIPCount")
            }
            if info.has_status and any(written.get("status", {}).get(k) != v for k, v in status.items()):
                written["status"] = {**written.get("status", {}), **status}
                written = store.update_status(written)
            return outcome, written
        except (Conflict, AlreadyExists):
            continue
    raise Conflict(f'{info.kind} "{name}": kept changing while being written; try again')


def update_object(
    store: Store, kind: str, name: str, change: Callable[[Obj], Obj | None], namespace: str = ""
) -> Obj | None:
    """Read-modify-write one stored object through admission, as a controller's update goes through
    Spiderpool's webhooks: ``change`` gets a copy of the stored object and returns what it becomes (None:
    nothing to do).  The write is conditional on the version read; on Conflict it reads and calls
    ``change`` again, so a concurrent write (an allocation, a user's apply) is never overwritten.
    Returns the written object, or None when ``change`` declined or nothing changed.  Raises NotFound,
    Invalid (admission refused the result; nothing is written), Conflict."""
    info = kind_info(kind)
    for _ in range(_RETRIES):
        old = store.get(info.kind, name, namespace)
        desired = change(copy.deepcopy(old))
        if desired is None:
            return None
        admitted = _admit(store, desired, old)
        if _comparable(admitted) == _comparable(old):
            return None
        try:
            return store.update(admitted)
        except Conflict:
            continue
    raise Conflict(f'{info.kind} "{name}": kept changing while being written; try again')


def _comparable(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {
        "metadata": {k: meta.get(k) for k in ("labels", "annotations", "ownerReferences", "finalizers")},
        "body": {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")},
    }


def object_ref(info: KindInfo, name: str) -> str:
    return f"{info.kind.lower()}.{info.group}/{name}" if info.group else f"{info.kind.lower()}/{name}"


def apply_documents(
    store: Store,
    docs: Sequence[Obj],
    *,
    transaction: Callable[[], AbstractContextManager[None]] | None = None,
) -> list[str]:
    """Apply documents as one change: each document is admitted against the stored objects as the
    earlier documents of the same list leave them (the same object twice is an update of the first, a
    pool may not overlap one written before it in the file), and nothing is written if any is
    rejected.  With a ``transaction`` (the SQLite store's ``batch``) the documents are admitted and
    written inside it, in one pass: a rejection rolls every earlier write back, and a crash leaves all
    or none.  Without one (the Kubernetes API has no transactions) every document is admitted first,
    then each is written alone.  Returns kubectl's line per document (``<kind>.<group>/<name>
    created``), once all are written."""
    if transaction is None:
        _check_documents(store, docs)
        return _write_documents(store, docs)
    with transaction():
        return _write_documents(store, docs)


def _check_documents(store: Store, docs: Sequence[Obj]) -> None:
    """Admit every document without writing, each against the store as the earlier ones leave it."""
    staged: dict[tuple[str, str, str], Obj] = {}  # (kind, namespace, name) -> as admitted
    planned = _Overlay(store)
    for doc in docs:
        info = kind_info(doc["kind"])
        if info.namespaced:
            doc = {**doc, "metadata": {**doc["metadata"], "namespace": _namespace(info, doc)}}
        key = (info.kind, _namespace(info, doc), doc["metadata"]["name"])
        base: Obj | None
        if key in staged:
            base = staged[key]  # an earlier document of this list: this one updates what it wrote
            desired = _merged(info, base, doc)
        else:
            base, desired = _desired(store, doc)
        staged[key] = admitted = _admit(store, desired, base, planned)
        planned.put(admitted)


def _write_documents(store: Store, docs: Sequence[Obj]) -> list[str]:
    # listed once (inside a transaction, nobody else writes until it ends; without one, a concurrent
    # writer is met by a retry, which reads the store again)
    written = _Overlay(store)
    lines: list[str] = []
    for doc in docs:
        outcome, obj = apply_object(store, doc, listing=written)
        written.put(obj)
        lines.append(f"{object_ref(kind_info(doc['kind']), doc['metadata']['name'])} {outcome}")
    return lines


# What Kubernetes' namespace controller deletes first: owners before the pods they would replace.
_WORKLOAD_KINDS = ("CronJob", "Job", "Deployment", "DaemonSet", "StatefulSet", "ReplicaSet")
DEFAULT_GRACE_SECONDS = 30  # a Pod's default spec.terminationGracePeriodSeconds


def pod_grace_seconds(pod: Obj) -> int:
    """The grace period a delete gives a pod, as the API server's pod strategy does: 0 for a pod no
    kubelet runs (not scheduled, or Succeeded/Failed), else its ``spec.terminationGracePeriodSeconds``
    (default 30)."""
    spec = pod.get("spec") or {}
    phase = (pod.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        return 0
    grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    return (
        grace
        if isinstance(grace, int) and not isinstance(grace, bool) and grace >= 0
        else DEFAULT_GRACE_SECONDS
    )


def delete_namespace_contents(store: Store, namespace: str) -> dict[str, int]:
    """What Kubernetes' namespace controller does before a Namespace goes: delete every object in it,
    workloads first (so nothing makes new pods), then pods gracefully (each with its
    terminationGracePeriodSeconds: it stays terminating, with deletionTimestamp, for the kubelet --
    the lab's controller -- to tear its sandbox down, which releases its IPs, and then delete it for
    good), then everything else (SpiderEndpoints keep Spiderpool's finalizer until their IPs are
    released).  Returns how many objects of each kind were deleted or marked terminating."""
    order = [*_WORKLOAD_KINDS, "Pod"]
    kinds = order + [i.kind for i in KINDS if i.namespaced and i.kind not in order]
    counts: dict[str, int] = {}
    for kind in kinds:
        for obj in store.list(kind, namespace=namespace, allocated_ips=False):
            meta = obj["metadata"]
            if meta.get("deletionTimestamp") and kind != "Pod":
                continue  # already terminating
            grace = pod_grace_seconds(obj) if kind == "Pod" else None
            try:
                store.delete(kind, meta["name"], namespace, grace_period_seconds=grace)
            except NotFound:
                continue
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def delete_object(
    store: Store,
    kind: str,
    name: str,
    namespace: str = "",
    *,
    refuse_in_use: bool = False,
    cascade_namespace: bool = True,
) -> str:
    """Delete an object as ``kubectl delete`` does: the store removes it, or keeps it terminating while
    finalizers hold it (``ipam.store.protocol``).  A SpiderIPPool carries Spiderpool's finalizer, so one that
    still holds allocations stays, terminating: its pods keep their IPs, no new IP comes from it, and
    the pool controller removes it once the last is released.  What Spiderpool's controller does for an
    empty pool or a subnet (drop the finalizer) is done here at once, so deleting an unused pool
    removes it.  A SpiderSubnet stays terminating while SpiderIPPools name it as their owner: the
    leader's owner GC (``ipam.controllers.owner_gc``) deletes them, as Kubernetes' garbage collector would, and the
    pool controller removes the subnet once they are gone.

    Returns kubectl's line ``<kind>.<group>/<name> deleted``; while the object stays, the reason
    follows in parentheses (``... deleted (terminating until its 2 allocated IPs are released)``).

    ``refuse_in_use`` (the CLI): a SpiderIPPool without finalizers (written before admission added
    Spiderpool's, or straight through the store) that still holds allocations would be removed with its records
    while pods use them; that is refused with one line naming metadata.finalizers, changing nothing.
    The check and the delete cannot interleave with an allocation: a claim bumps the pool's
    resourceVersion, which fails the delete's precondition and re-checks.

    A Namespace (``cascade_namespace``, for stores without a namespace controller of their own: the
    SQLite store) takes its objects with it (:func:`delete_namespace_contents`); the line says how
    many pods are still terminating."""
    info = kind_info(kind)
    ref = object_ref(info, name)
    contents: dict[str, int] = {}
    if kind == "Namespace" and cascade_namespace:
        store.get(kind, name)  # NotFound before anything is deleted
        contents = delete_namespace_contents(store, name)
    for _ in range(_RETRIES):
        obj = store.get(kind, name, namespace)
        meta = obj["metadata"]
        if refuse_in_use and kind == "SpiderIPPool" and not meta.get("finalizers"):
            count = len(store.records(name))
            if count:
                raise Invalid(
                    kind,
                    name,
                    "metadata.finalizers",
                    f"no finalizer keeps the pool while {count} IPs are still allocated, so "
                    "deleting it would drop their records; apply it again (that adds the finalizer) or "
                    "release them first",
                )
        try:
            store.delete(kind, name, namespace, resource_version=meta.get("resourceVersion"))
        except Conflict:
            continue
        break
    else:
        raise Conflict(f'{kind} "{name}": kept changing while being deleted; try again')
    if kind in FINALIZED_KINDS:
        for _ in range(_RETRIES):
            try:
                if finish_terminating(store, kind, name):
                    return f"{ref} deleted"
                break
            except Conflict:
                continue
    try:
        kept = store.get(kind, name, namespace)
    except NotFound:
        if contents:
            shown = ", ".join(f"{count} {k}" for k, count in contents.items())
            pods = [p for p in store.list("Pod", namespace=name, allocated_ips=False)]
            if pods:
                shown += f"; {len(pods)} pods terminating until their sandboxes are torn down"
            return f"{ref} deleted (with its objects: {shown})"
        return f"{ref} deleted"
    return f"{ref} deleted ({_why_kept(store, kind, name, kept)})"


def _why_kept(store: Store, kind: str, name: str, obj: Obj) -> str:
    meta = obj["metadata"]
    if kind == "SpiderIPPool":
        count = len(store.records(name))
        if count:
            return f"terminating until its {count} allocated IPs are released"
    if kind == "SpiderSubnet":
        owned = owned_pools(store, str(meta.get("uid") or ""))
        if owned:
            shown = ", ".join(owned[:5]) + (", ..." if len(owned) > 5 else "")
            return (
                f"terminating until the {len(owned)} SpiderIPPools it owns are deleted: {shown}; "
                "the leader's controllers delete them, each once its IPs are released"
            )
    grace = int(meta.get("deletionGracePeriodSeconds") or 0)
    if grace > 0:
        return f"terminating, grace period {grace}s until {meta.get('deletionTimestamp')}"
    finalizers = ", ".join(str(f) for f in meta.get("finalizers") or [])
    return f"terminating until its finalizers are removed: {finalizers}"


def owned_pools(store: Store, subnet_uid: str) -> list[str]:
    """Names of the stored SpiderIPPools whose ownerReferences name the SpiderSubnet ``subnet_uid``."""
    if not subnet_uid:
        return []
    out = []
    for obj in store.list(IPPool.KIND, allocated_ips=False):
        refs = obj["metadata"].get("ownerReferences") or []
        if any(isinstance(r, dict) and r.get("uid") == subnet_uid for r in refs):
            out.append(str(obj["metadata"]["name"]))
    return out


def finish_terminating(store: Store, kind: str, name: str) -> bool:
    """Spiderpool's controller step for a terminating SpiderIPPool (once it holds no records) or
    SpiderSubnet (once no SpiderIPPool names it in its ownerReferences): remove the finalizer ``spiderpool.spidernet.io``, so the store removes the object if no
    other finalizer holds it.  True when the object is gone (or absent); False while it stays (not
    terminating, records left, or another finalizer).  Raises Conflict when it changed meanwhile."""
    try:
        obj = store.get(kind, name, allocated_ips=False)
    except NotFound:
        return True
    meta = obj["metadata"]
    if not meta.get("deletionTimestamp"):
        return False
    if kind == IPPool.KIND and store.records(name):
        return False  # the IP GC (or CNI DEL) releases them first
    if kind == Subnet.KIND and owned_pools(store, str(meta.get("uid") or "")):
        return False  # the owner GC (ipam.controllers.owner_gc) deletes them first
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER in finalizers:
        meta["finalizers"] = [f for f in finalizers if f != FINALIZER]
        try:
            store.update(obj)  # the last finalizer of a terminating object: the store removes it
        except NotFound:
            return True
    try:
        store.get(kind, name, allocated_ips=False)
    except NotFound:
        return True
    return False
