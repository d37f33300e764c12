"""An HTTP emulator of the Kubernetes API server, for tests.

This is the project's only stand-in for a real component.  No API server can run on these machines
(Debian ships no ``kube-apiserver`` and nothing can be downloaded), so the Kubernetes backend of the
object store (``ipam.store.kube``) is tested against this emulator, over real HTTP, through the official
``kubernetes`` client.  Everything else in the test suite runs real components.

It implements, with the API server's semantics, what the backend relies on:

* core/v1 pods, namespaces, nodes; apps/v1 and batch/v1 workloads; coordination.k8s.io/v1 leases; the
  ``spiderpool.spidernet.io/v2beta1`` custom resources; all at their real URL paths
  (``/api/v1/namespaces/{ns}/pods/{name}``, ``/apis/{group}/{version}/{plural}/{name}/status``, ...);
* GET, LIST (``labelSelector`` with equality and set-based requirements, ``fieldSelector`` equality on
  the fields each kind's storage supports, 400 BadRequest for the others: every kind metadata.name and
  metadata.namespace, Pods spec.nodeName, status.phase and a few more, as kubelet's node-filtered
  watch uses them; ``limit``/``continue``), POST (201, 409 AlreadyExists), PUT with the ``metadata.resourceVersion``
  precondition (409 Conflict as a ``Status`` object with reason ``Conflict``; custom resources refuse an
  update without resourceVersion, as ``AllowUnconditionalUpdate`` is false for them), the status
  subresource (``PUT .../status`` changes only status; the main PUT ignores status for kinds that have
  the subresource), DELETE with ``preconditions``, finalizers and pod graceful deletion (see below);
* the API server's deletion rules: an object with finalizers gets ``deletionTimestamp`` (now) and
  ``deletionGracePeriodSeconds: 0`` once and stays, terminating; a Pod deleted with
  ``gracePeriodSeconds`` G > 0 stays with ``deletionTimestamp`` = now + G and
  ``deletionGracePeriodSeconds`` = G until a delete with a shorter grace (the kubelet's grace 0) ends
  it; the PUT that removes the last finalizer of a terminating object whose grace is 0 removes it; a
  PUT may not add a finalizer to a terminating object (422) and cannot set or clear
  ``deletionTimestamp``/``deletionGracePeriodSeconds`` (the stored values are kept; create drops them);
* one global resourceVersion counter (like etcd's revision), ``generation`` bumped on spec changes,
  no new resourceVersion for an update that changes nothing;
* watch (``?watch=1&resourceVersion=N``): newline-delimited JSON events after N from a bounded history,
  ADDED/DELETED when a label change moves an object into/out of a label selector, and an ``ERROR``
  event with a 410 ``Expired`` Status when N is older than the history window; without N the stream
  starts with ADDED events of the current objects; BOOKMARK events (``allowWatchBookmarks``) every
  ``bookmark_interval`` and before the watch times out;
* history compaction by time, as kube-apiserver has etcd compact every ``--etcd-compaction-interval``:
  each compaction drops the revisions older than the previous compaction's (``compact_if_due``);
* paged lists served from one snapshot: ``continue`` tokens in the API server's format name the first
  page's revision, later pages are that revision's objects (410 ``Expired`` once it is compacted);
* authorization (``tests/kube/emulator/rbac.py``): bearer tokens name users (``token_for``;
  ``admin_token``, ``agent_token``, ``harness_token``), no token is ``system:anonymous``, and every
  request is checked against the RBAC objects of ``configs/kubernetes`` (403 Forbidden Status);
* injected faults: latency on every request, 409 conflicts on the Nth write (or every Nth), 5xx
  errors, and dropped watch streams.

* admission as the API server's decoding and validation do it (``tests/kube/emulator/schema.py`` and
  ``metadata.py``): custom resources are pruned, defaulted and validated against the
  ``openAPIV3Schema`` of their CRD in ``configs/kubernetes/crds`` (CEL rules included), and every
  object's metadata against ``ValidateObjectMeta``'s rules; a refusal is 422 ``Invalid`` with every
  field in ``details.causes``.  ``put()`` bypasses it, as a controller's own state would.

* the garbage collector (``tests/kube/emulator/gc.py``): after every write, dependents of deleted owners
  go (background), ``propagationPolicy: Foreground`` keeps the owner with the ``foregroundDeletion``
  finalizer until no ``blockOwnerDeletion`` dependent is left, ``Orphan`` strips the references;
* the namespace controller: a deleted Namespace is ``Terminating``, refuses creates (403), has its
  objects deleted and goes once it is empty.

* PATCH (``tests/kube/emulator/patch.py``): merge patch, JSON patch, and strategic merge patch for
  built-in kinds (415 for custom resources, as the API server answers);

* discovery (``/api``, ``/apis``, ...) for authenticated users, and custom resources as a ``Table``
  of their CRD's printer columns when a client asks for one (``tests/kube/emulator/discovery.py``),
  so ``kubectl get sp`` works against the emulator;

Not emulated (not used by the backend): server-side apply, admission webhooks,
aggregated discovery, defaulting of built-in kinds (a new Pod gets no ``status.phase``), and a Pod's default grace period (a DELETE without
``gracePeriodSeconds`` is not graceful here; the API server would take
``spec.terminationGracePeriodSeconds``).

The server runs an aiohttp application on 127.0.0.1 at a random port in its own event-loop thread, so
synchronous code (the ``kubernetes`` client) and asyncio code can both use it.  ``kube_emulator`` is a
pytest fixture that yields a started emulator and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import cProfile
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client as k8s

from ipam.kinds import KINDS, KindInfo
from ipam.selectors import LabelSelector
from tests.kube.emulator.discovery import discovery_documents, printer_columns, to_table, wants_table
from tests.kube.emulator.faults import Faults
from tests.kube.emulator.gc import (
    FOREGROUND,
    ORPHAN,
    blocks_owner,
    owner_uids,
    propagation_policy,
    without_owners,
)
from tests.kube.emulator.manifests import (
    agent_user,
    base_objects,
    cluster_actor_objects,
    harness_user,
)
from tests.kube.emulator.metadata import meta_causes
from tests.kube.emulator.paging import EXPIRED_MESSAGE, Continue, decode_continue, encode_continue
from tests.kube.emulator.patch import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    apply_patch,
)
from tests.kube.emulator.rbac import ANONYMOUS, Attributes, Authorizer, User, forbidden_message, verb_of
from tests.kube.emulator.schema import CrdSchema
from tests.kube.emulator.selectors import field_value, parse_field_selector, parse_label_selector
from tests.kube.emulator.status import (
    BUILTIN_GROUPS,
    MODIFIED,
    ApiError,
    conflict,
    details,
    invalid,
    not_found,
    resource_name,
)

__all__ = [
    "EmulatorProcess",
    "Faults",
    "KubeEmulator",
    "WatchRequest",
    "client_configuration",
    "http_call",
    "kube_emulator",
    "parse_label_selector",
]

Obj = dict[str, Any]

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
ADMIN_PATH = "/_emulator/"  # the harness's requests (``start(admin_endpoint=True)``)


# ---------------------------------------------------------------------------------------------------
# the store


@dataclass(frozen=True)
class WatchRequest:
    """A watch a client opened: the kind, the resourceVersion it resumed from ("" or "0": none), and
    its whole query (``fieldSelector``, ``labelSelector``, ...)."""

    kind: str
    resource_version: str
    query: dict[str, str]


@dataclass(frozen=True)
class _Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    info: KindInfo
    obj: Obj
    old: Obj | None  # the previous state (MODIFIED, DELETED)


@dataclass(frozen=True)
class _Target:
    info: KindInfo
    namespace: str  # "" for cluster-scoped kinds and all-namespace lists
    name: str  # "" for collections
    subresource: str  # "" or "status"


_STATUS_ON_CREATE: dict[str, Obj] = {"Namespace": {"phase": "Active"}}
_BUILTIN_GROUPS = BUILTIN_GROUPS


_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _now(offset: float = 0.0) -> str:
    return datetime.fromtimestamp(datetime.now(UTC).timestamp() + offset, UTC).strftime(_TIME_FORMAT)


def _shifted(stamp: str, seconds: float) -> str:
    """An RFC 3339 timestamp moved by ``seconds`` (now + seconds if ``stamp`` does not parse)."""
    try:
        base = datetime.strptime(stamp, _TIME_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return _now(seconds)
    return datetime.fromtimestamp(base + seconds, UTC).strftime(_TIME_FORMAT)


def _prefix(info: KindInfo) -> str:
    return info.api_version + "/" + info.plural


def _key(info: KindInfo, namespace: str, name: str) -> tuple[str, str, str]:
    return (_prefix(info), namespace, name)


def _content(obj: Obj) -> Obj:
    """Everything but metadata and status: what bumps ``generation`` when it changes."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class KubeEmulator:
    """The emulated API server.  ``start()`` it (or use it as a context manager); ``url`` is its base URL."""

    def __init__(
        self,
        *,
        history: int = 2000,
        namespaces: tuple[str, ...] = DEFAULT_NAMESPACES,
        require_namespaces: bool = True,
        rbac: list[Obj] | None = None,
        compaction_interval: float = 300.0,
        bookmark_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rbac``: the Role/ClusterRole objects and bindings that authorize requests (default: those of
        ``configs/kubernetes`` and the tests' cluster actors).  ``compaction_interval``: how often the
        history is compacted, as kube-apiserver asks etcd every ``--etcd-compaction-interval`` (5 min):
        each compaction drops the revisions older than the one seen at the previous compaction, so a
        revision lives between one and two intervals (``clock`` measures them).  ``bookmark_interval``:
        how often a quiet watch that allows bookmarks gets a BOOKMARK (the API server: about a minute).
        ``history``: how many events the watch history holds at most, as the watch cache's size."""
        self.compaction_interval = compaction_interval
        self.bookmark_interval = bookmark_interval
        self._clock = clock
        self._next_compaction = clock() + compaction_interval
        self._rv_at_last_compaction = 0
        self.faults = Faults()
        self.authorizer = Authorizer(rbac if rbac is not None else base_objects() + cluster_actor_objects())
        self._schemas = {
            crd["spec"]["names"]["kind"]: CrdSchema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            for crd in base_objects()
            if crd["kind"] == "CustomResourceDefinition"
        }
        self._columns = {
            crd["spec"]["names"]["kind"]: printer_columns(crd)
            for crd in base_objects()
            if crd["kind"] == "CustomResourceDefinition"
        }
        self._discovery = discovery_documents(KINDS)
        self._tokens: dict[str, User] = {}
        self.admin_token = self.token_for(
            User("kubernetes-admin", ("system:masters", "system:authenticated"))
        )
        self.agent_token = self.token_for(agent_user())
        self.harness_token = self.token_for(harness_user())
        # As the NamespaceLifecycle admission plugin: creating in a missing namespace is 404.
        self.require_namespaces = require_namespaces
        self.history_size = history
        self.requests = 0  # requests handled, for tests and benchmarks
        self.watches: list[WatchRequest] = []  # every watch opened (with a valid selector), in order
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], Obj] = {}
        # the same objects by kind (``_prefix``), then (namespace, name): lists and watches of one kind
        # need not scan every object
        self._of_kind: dict[str, dict[tuple[str, str], Obj]] = {}
        self._history: deque[_Event] = deque()
        self._compacted = 0  # watches from below this revision get 410
        self._rv = 0
        self._by_path: dict[tuple[str, str], KindInfo] = {(i.api_version, i.plural): i for i in KINDS}
        self._by_prefix: dict[str, KindInfo] = {_prefix(i): i for i in KINDS}
        # the garbage collector's view: objects by uid, dependents by owner uid, and what to look at
        self._uid_index: dict[str, tuple[str, str, str]] = {}
        self._dependents: dict[str, set[tuple[str, str, str]]] = {}
        self._gc_owners: set[str] = set()
        self._gc_dependents: set[tuple[str, str, str]] = set()
        self._ns_due: set[str] = set()
        self._collecting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        # one event per kind (by URL prefix), replaced at each write of that kind: a write wakes only
        # the watches of its kind; _kind_rv: each kind's last revision (never compacted)
        self._changed: dict[str, asyncio.Event] = {}
        self._kind_rv: dict[str, int] = {}
        self._watch_tasks: set[asyncio.Task[Any]] = set()
        self.url = ""
        self._admin_endpoint = False
        for ns in namespaces:
            self.put(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns},
                    "status": {"phase": "Active"},
                }
            )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, port: int = 0, *, admin_endpoint: bool = False) -> KubeEmulator:
        """Serve on 127.0.0.1:``port`` (0: a free port).  ``admin_endpoint``: also answer the harness's
        ``/_emulator/`` requests (``GET /_emulator/stats``: requests handled and the revision; ``PUT
        /_emulator/faults`` with ``{"latency": seconds}``), for the cluster admin's token only, so a
        harness in another process can read and steer what a test in-process reads and sets directly
        (``serve`` turns it on).  These requests are not counted, delayed or faulted."""
        self._admin_endpoint = admin_endpoint
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="kube-emulator", daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._serve(port), loop)
        bound = fut.result(timeout=10)
        self.url = f"http://127.0.0.1:{bound}"
        return self

    def in_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the server's event-loop thread and wait for it (``serve --profile`` enables and
        disables its profiler there: a profiler sees only the thread it was enabled in)."""
        loop = self._loop
        assert loop is not None, "the emulator is not started"

        async def call() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    def serve_tls(self, cert_file: str, key_file: str) -> str:
        """Also serve HTTPS on another free port of 127.0.0.1 with this certificate; its base URL.  For
        clients that send a bearer token only over TLS, as kubectl does."""
        loop = self._loop
        assert loop is not None and self._runner is not None, "the emulator is not started"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        runner = self._runner

        async def add_site() -> int:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
            await site.start()
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            bound: int = server.sockets[0].getsockname()[1]
            return bound

        port = asyncio.run_coroutine_threadsafe(add_site(), loop).result(timeout=10)
        return f"https://127.0.0.1:{port}"

    async def _serve(self, port: int) -> int:
        self._changed = {}
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            for task in list(self._watch_tasks):
                task.cancel()
            if self._runner is not None:
                await self._runner.cleanup()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()
        self._loop = None

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- identities -------------------------------------------------------------------------------

    def token_for(self, user: User) -> str:
        """A bearer token that authenticates as ``user`` (as a ServiceAccount token would)."""
        token = uuid.uuid4().hex
        self._tokens[token] = user
        return token

    def configuration(self, token: str | None = None) -> k8s.Configuration:
        """A client configuration for this server, authenticated with ``token`` (default: the harness:
        the agent's ServiceAccount that also plays the cluster's other actors)."""
        return client_configuration(self.url, token or self.harness_token)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """One raw request over HTTP (for tests of the API itself): the status and the decoded body.
        As the cluster admin unless ``token`` says who (``""``: no token, anonymous)."""
        return http_call(
            self.url,
            method,
            path,
            body,
            token=self.admin_token if token is None else token,
            content_type=content_type,
        )

    def _user(self, request: web.Request) -> User:
        header = request.headers.get("Authorization", "")
        if not header:
            return ANONYMOUS
        scheme, _, token = header.partition(" ")
        user = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    def _authorize(self, request: web.Request, t: _Target) -> None:
        watch = request.query.get("watch") in ("1", "true")
        attrs = Attributes(
            user=self._user(request),
            verb=verb_of(request.method, named=bool(t.name), watch=watch),
            group=t.info.group,
            resource=t.info.plural,
            subresource=t.subresource,
            namespace=t.namespace,
            name=t.name,
        )
        if not self.authorizer.allows(attrs):
            details: Obj = {"kind": t.info.plural}
            if t.name:
                details["name"] = t.name
            if t.info.group:
                details["group"] = t.info.group
            raise ApiError(403, "Forbidden", forbidden_message(attrs), details)

    # -- direct access for tests (bypasses HTTP and faults) ---------------------------------------

    @property
    def revision(self) -> int:
        with self._lock:
            return self._rv

    @property
    def compacted_revision(self) -> int:
        """Watches and continue tokens from before this revision get 410."""
        with self._lock:
            return self._compacted

    def put(self, obj: Obj) -> Obj:
        """Create or replace an object as-is (status included, not validated), as a controller would
        leave it; a custom resource is pruned and defaulted, as the API server reads it from etcd."""
        info = self._info_of(obj)
        meta = obj.get("metadata", {})
        ns = meta.get("namespace", "") if info.namespaced else ""
        with self._lock:
            old = self._objects.get(_key(info, ns, meta["name"]))
            schema = self._schemas.get(info.kind)
            new = schema.admit(obj) if schema is not None else copy.deepcopy(obj)
            if old is None:
                self._fill_new(new, info, ns)
            else:
                new["metadata"] = {**old["metadata"], **new["metadata"]}
            out = self._commit(info, new, old)
            self._collect_garbage()
            return out

    def stored(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        info = self._info_of({"kind": kind})
        with self._lock:
            obj = self._objects.get(_key(info, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def compact(self) -> None:
        """Forget all watch history: every watch from an older resourceVersion now gets 410 Gone."""
        with self._lock:
            self._compact_to(self._rv)

    def compact_if_due(self) -> None:
        """Run the periodic compactions whose time (by ``clock``) has come; every request and every
        write does this first."""
        now = self._clock()
        with self._lock:
            while now >= self._next_compaction:
                self._compact_to(self._rv_at_last_compaction)
                self._rv_at_last_compaction = self._rv
                self._next_compaction += self.compaction_interval

    def _compact_to(self, rv: int) -> None:
        self._compacted = max(self._compacted, rv)
        while self._history and self._history[0].rv <= self._compacted:
            self._history.popleft()

    # -- state changes (under self._lock) -----------------------------------------------------------

    def _info_of(self, obj: Obj) -> KindInfo:
        for info in KINDS:
            if info.kind == obj.get("kind") and obj.get("apiVersion", info.api_version) == info.api_version:
                return info
        raise KeyError(f"unknown kind {obj.get('kind')!r}")

    def _fill_new(self, obj: Obj, info: KindInfo, namespace: str) -> None:
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        obj["apiVersion"], obj["kind"] = info.api_version, info.kind

    def _commit(self, info: KindInfo, new: Obj | None, old: Obj | None, last: Obj | None = None) -> Obj:
        """Store ``new`` (None: delete ``old``, whose final state is ``last`` if given) under a new
        revision and record the event."""
        self.compact_if_due()
        self._rv += 1
        if new is None:
            assert old is not None
            meta = old["metadata"]
            del self._objects[_key(info, meta.get("namespace", ""), meta["name"])]
            del self._of_kind[_prefix(info)][(meta.get("namespace", ""), meta["name"])]
            self._index(info, None, old)
            gone = copy.deepcopy(last if last is not None else old)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._record(_Event(self._rv, "DELETED", info, gone, old))
            return gone
        new["metadata"]["resourceVersion"] = str(self._rv)
        meta = new["metadata"]
        self._objects[_key(info, meta.get("namespace", ""), meta["name"])] = new
        self._of_kind.setdefault(_prefix(info), {})[(meta.get("namespace", ""), meta["name"])] = new
        self._index(info, new, old)
        self._record(_Event(self._rv, "ADDED" if old is None else "MODIFIED", info, new, old))
        return copy.deepcopy(new)

    # -- the garbage collector and the namespace controller (under self._lock) ----------------------

    def _index(self, info: KindInfo, new: Obj | None, old: Obj | None) -> None:
        """Keep the GC's indexes right after a change, and note what the collector must look at."""
        cur = new if new is not None else old
        assert cur is not None
        meta = cur["metadata"]
        key = _key(info, meta.get("namespace", ""), meta["name"])
        uid = str(meta.get("uid") or "")
        before = set(owner_uids(old)) if old is not None else set()
        after = set(owner_uids(new)) if new is not None else set()
        for owner in before - after:
            self._dependents.get(owner, set()).discard(key)
        for owner in after - before:
            self._dependents.setdefault(owner, set()).add(key)
        if new is None:
            self._uid_index.pop(uid, None)
            self._gc_owners.add(uid)  # its dependents may have to go
            self._gc_owners.update(before)  # a foreground owner may be free to go
        else:
            self._uid_index[uid] = key
            if after:
                self._gc_dependents.add(key)
            if meta.get("deletionTimestamp"):
                self._gc_owners.add(uid)
                self._gc_owners.update(after)
                if info.kind == "Namespace":
                    self._ns_due.add(meta["name"])
        if info.namespaced and meta.get("namespace"):
            ns = self._objects.get(_key(self._info_of(_NS), "", meta["namespace"]))
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                self._ns_due.add(meta["namespace"])

    def _collect_garbage(self) -> None:
        """Run the garbage collector and the namespace controller until they have nothing left to do
        (each of their writes is a write of its own, with its own revision and watch event)."""
        with self._lock:
            if self._collecting:
                return  # a write of the collector itself: the running loop picks its work up
            self._collecting = True
            try:
                while True:
                    if self._gc_dependents:
                        self._gc_dependent(self._gc_dependents.pop())
                    elif self._gc_owners:
                        self._gc_owner(self._gc_owners.pop())
                    elif self._ns_due:
                        self._gc_namespace(self._ns_due.pop())
                    else:
                        return
            finally:
                self._collecting = False

    def _gc_dependent(self, key: tuple[str, str, str]) -> None:
        obj = self._objects.get(key)
        if obj is None:
            return
        uids = set(owner_uids(obj))
        absent = {u for u in uids if u not in self._uid_index}
        if not absent:
            return
        info = self._by_prefix[key[0]]
        if absent == uids:
            self._gc_delete(info, obj, "Background")  # every owner is gone
        else:
            self._commit(info, without_owners(obj, absent), obj)  # a live owner keeps it

    def _gc_owner(self, uid: str) -> None:
        deps = sorted(self._dependents.get(uid, set()))
        key = self._uid_index.get(uid)
        if key is None:
            self._gc_dependents.update(deps)
            return
        owner = self._objects[key]
        meta = owner["metadata"]
        finalizers = meta.get("finalizers") or []
        if not meta.get("deletionTimestamp"):
            return
        info = self._by_prefix[key[0]]
        if ORPHAN in finalizers:
            for dk in deps:
                if (dep := self._objects.get(dk)) is not None:
                    self._commit(self._by_prefix[dk[0]], without_owners(dep, {uid}), dep)
            self._drop_finalizer(info, owner, ORPHAN)
        elif FOREGROUND in finalizers:
            for dk in deps:
                dep = self._objects.get(dk)
                if dep is not None and not dep["metadata"].get("deletionTimestamp"):
                    grand = self._dependents.get(str(dep["metadata"].get("uid")))
                    self._gc_delete(self._by_prefix[dk[0]], dep, "Foreground" if grand else "Background")
            left = [self._objects[dk] for dk in deps if dk in self._objects]
            if not any(blocks_owner(d, uid) for d in left):
                self._drop_finalizer(info, self._objects[key], FOREGROUND)

    def _gc_namespace(self, name: str) -> None:
        ns = self._objects.get(_key(self._info_of(_NS), "", name))
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        inside = [
            (k, o)
            for k, o in sorted(self._objects.items())
            if k[1] == name and self._by_prefix[k[0]].namespaced
        ]
        for k, obj in inside:
            if not obj["metadata"].get("deletionTimestamp"):
                self._gc_delete(self._by_prefix[k[0]], obj, "Background")
        if not any(k in self._objects for k, _ in inside):
            last = copy.deepcopy(ns)
            last.setdefault("spec", {})["finalizers"] = []
            self._commit(self._info_of(_NS), None, ns, last)  # empty: the namespace goes

    def _gc_delete(self, info: KindInfo, obj: Obj, policy: str) -> None:
        meta = obj["metadata"]
        target = _Target(info, meta.get("namespace", "") if info.namespaced else "", meta["name"], "")
        self._delete(target, {"propagationPolicy": policy}, {})

    def _drop_finalizer(self, info: KindInfo, obj: Obj, finalizer: str) -> None:
        new = copy.deepcopy(obj)
        meta = new["metadata"]
        meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != finalizer]
        if not meta["finalizers"]:
            del meta["finalizers"]
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not meta.get("deletionGracePeriodSeconds")
        ):
            self._commit(info, None, obj, new)
        else:
            self._commit(info, new, obj)

    def _record(self, event: _Event) -> None:
        self._history.append(event)
        while len(self._history) > self.history_size:
            self._compacted = self._history.popleft().rv
        prefix = _prefix(event.info)
        self._kind_rv[prefix] = event.rv
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake, prefix)

    def _wake(self, prefix: str) -> None:
        """Wake the watches of one kind (in the event loop)."""
        changed = self._changed.pop(prefix, None)
        if changed is not None:
            changed.set()

    def _changed_of(self, prefix: str) -> asyncio.Event:
        """What the watches of a kind wait on (in the event loop): set at the kind's next write."""
        changed = self._changed.get(prefix)
        if changed is None:
            changed = self._changed[prefix] = asyncio.Event()
        return changed

    # -- HTTP ---------------------------------------------------------------------------------------

    def _parse_path(self, path: str) -> _Target:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            api_version, rest = "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] == "status"):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3 or (len(rest) == 3 and rest[2] != "status"):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        info = self._by_path.get((api_version, rest[0]))
        if info is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if namespace and not info.namespaced:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub == "status" and not info.has_status:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        return _Target(info, namespace, name, sub)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._admin_endpoint and request.path.startswith(ADMIN_PATH):
            return await self._handle_admin(request)
        with self._lock:
            self.requests += 1
        self.compact_if_due()
        faults = self.faults
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        try:
            if request.path == "/version":
                return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-emulator"})
            if request.method == "GET" and (doc := self._discovery.get(request.path.rstrip("/"))) is not None:
                # the system:discovery ClusterRole: every authenticated user may read these
                if "system:authenticated" not in self._user(request).groups:
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'forbidden: User "system:anonymous" cannot get path "{request.path}"',
                    )
                return web.json_response(doc)
            status = faults.take_error(request.method)
            if status:
                raise ApiError(status, "InternalError", f"injected error {status}")
            target = self._parse_path(request.path)
            self._authorize(request, target)
            body: Obj | None = None
            if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.can_read_body:
                try:
                    body = json.loads(await request.read() or b"null")
                except ValueError as err:
                    raise ApiError(400, "BadRequest", f"invalid JSON body: {err}") from err
            if request.method in ("POST", "PUT", "PATCH", "DELETE") and faults.take_write_conflict():
                raise conflict(target.info, target.name or "(collection)", MODIFIED)
            if request.method == "GET":
                if target.name:
                    return web.json_response(self._as_asked(request, target, self._get(target)))
                if request.query.get("watch") in ("1", "true"):
                    return await self._watch(request, target)
                return web.json_response(self._as_asked(request, target, self._list(target, request.query)))
            if request.method == "POST" and not target.name:
                created = self._create(target, body)
                self._collect_garbage()
                return web.json_response(created, status=201)
            if request.method == "PUT" and target.name:
                updated = self._update(target, body)
                self._collect_garbage()
                return web.json_response(updated)
            if request.method == "PATCH" and target.name:
                patched = self._patch(target, body, request.content_type)
                self._collect_garbage()
                return web.json_response(patched)
            if request.method == "DELETE" and target.name and not target.subresource:
                deleted = self._delete(target, body, request.query)
                self._collect_garbage()
                return web.json_response(deleted)
            raise ApiError(
                405, "MethodNotAllowed", f"the server does not allow this method ({request.method})"
            )
        except ApiError as err:
            return web.json_response(err.status(), status=err.code)

    async def _handle_admin(self, request: web.Request) -> web.StreamResponse:
        """The harness's ``/_emulator/`` requests (``start(admin_endpoint=True)``), the admin's only."""
        try:
            user = self._user(request)
            if "system:masters" not in user.groups:
                raise ApiError(403, "Forbidden", f'User "{user.name}" cannot use {request.path}')
            if request.method == "GET" and request.path == ADMIN_PATH + "stats":
                with self._lock:
                    return web.json_response({"requests": self.requests, "revision": self._rv})
            if request.method == "PUT" and request.path == ADMIN_PATH + "faults":
                try:
                    body = json.loads(await request.read() or b"null")
                    latency = float(body["latency"])
                except (ValueError, KeyError, TypeError) as err:
                    raise ApiError(
                        400, "BadRequest", f'{ADMIN_PATH}faults: want {{"latency": seconds}} ({err})'
                    ) from err
                if latency < 0:
                    raise ApiError(400, "BadRequest", f"{ADMIN_PATH}faults: latency {latency} is negative")
                self.faults.latency = latency
                return web.json_response({"latency": latency})
            raise ApiError(404, "NotFound", f"no {request.method} {request.path}")
        except ApiError as err:
            return web.json_response(err.status(), status=err.code)

    def _as_asked(self, request: web.Request, t: _Target, answer: Obj) -> Obj:
        """``answer`` (an object or a list) as a Table when the client asks for one (``kubectl get``) and
        the kind is a custom resource, whose CRD says the columns; else as it is."""
        columns = self._columns.get(t.info.kind)
        if columns is None or t.subresource or not wants_table(request.headers.get("Accept", "")):
            return answer
        items = answer.get("items", [answer])
        return to_table(items, columns, answer["metadata"].get("resourceVersion", ""))

    def _get(self, t: _Target) -> Obj:
        with self._lock:
            obj = self._objects.get(_key(t.info, t.namespace, t.name))
            if obj is None:
                raise not_found(t.info, t.name)
            return obj  # serialized by the handler at once; stored objects are never changed in place

    def _selectors(
        self, query: Mapping[str, str], info: KindInfo
    ) -> tuple[LabelSelector | None, list[tuple[str, bool, str]]]:
        try:
            labels = parse_label_selector(query["labelSelector"]) if query.get("labelSelector") else None
            fields = parse_field_selector(
                query.get("fieldSelector", ""), info.kind, builtin=info.group in _BUILTIN_GROUPS
            )
        except ValueError as err:
            raise ApiError(400, "BadRequest", str(err)) from err
        return labels, fields

    @staticmethod
    def _selected(
        obj: Obj, t: _Target, labels: LabelSelector | None, fields: list[tuple[str, bool, str]]
    ) -> bool:
        meta = obj["metadata"]
        if t.namespace and meta.get("namespace") != t.namespace:
            return False
        if labels is not None and not labels.matches(meta.get("labels") or {}):
            return False
        return all((field_value(obj, path) == value) == eq for path, eq, value in fields)

    def _snapshot(self, info: KindInfo, rv: int) -> dict[tuple[str, str], Obj]:
        """The objects of a kind as they were at revision ``rv`` (under the lock; ``rv`` not compacted):
        today's objects with the later events undone."""
        state = dict(self._of_kind.get(_prefix(info), {}))
        for ev in reversed(self._history):
            if ev.rv <= rv:
                break
            if ev.info is not info:
                continue
            meta = ev.obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if ev.old is None:
                state.pop(key, None)
            else:
                state[key] = ev.old
        return state

    def _list(self, t: _Target, query: Mapping[str, str]) -> Obj:
        labels, fields = self._selectors(query, t.info)
        try:
            limit = int(query.get("limit") or 0)
            token = decode_continue(query["continue"]) if query.get("continue") else None
        except ValueError as err:
            raise ApiError(400, "BadRequest", str(err)) from None
        with self._lock:
            if token is None:
                rv = self._rv
                state = dict(self._of_kind.get(_prefix(t.info), {}))
            else:
                rv = token.rv
                if rv < self._compacted or rv > self._rv:
                    raise ApiError(410, "Expired", EXPIRED_MESSAGE)
                state = self._snapshot(t.info, rv)
            keys = sorted(k for k, o in state.items() if self._selected(o, t, labels, fields))
            if token is not None:
                keys = [k for k in keys if k > token.after]
            page = keys[:limit] if limit > 0 else keys
            out = []
            for key in page:
                # Serialized by the handler at once and stored objects are never changed in place
                # (every write stores a new object), so the stored object itself goes out.
                item = state[key]
                if t.info.group in _BUILTIN_GROUPS:  # built-in list items carry no apiVersion/kind
                    item = {k: v for k, v in item.items() if k not in ("apiVersion", "kind")}
                out.append(item)
        meta: Obj = {"resourceVersion": str(rv)}
        if len(page) < len(keys):
            meta["continue"] = encode_continue(Continue(rv, page[-1]))
            meta["remainingItemCount"] = len(keys) - len(page)
        return {
            "apiVersion": t.info.api_version,
            "kind": t.info.kind + "List",
            "metadata": meta,
            "items": out,
        }

    def _check_body(self, t: _Target, body: Obj | None, name: str | None) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "the request body is not an object with metadata")
        if body.get("kind") != t.info.kind or body.get("apiVersion") != t.info.api_version:
            raise ApiError(
                400,
                "BadRequest",
                f"the body is {body.get('apiVersion')}/{body.get('kind')}, "
                f"not {t.info.api_version}/{t.info.kind}",
            )
        meta = body["metadata"]
        ns = meta.get("namespace")
        if t.info.namespaced and ns and ns != t.namespace:
            raise ApiError(
                400, "BadRequest", "the namespace of the provided object does not match the namespace sent"
            )
        if name is not None and meta.get("name") != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        finalizers = meta.get("finalizers")
        if finalizers is not None and not (
            isinstance(finalizers, list) and all(isinstance(f, str) for f in finalizers)
        ):
            raise ApiError(
                400,
                "BadRequest",
                "json: cannot unmarshal into Go struct field ObjectMeta.metadata.finalizers of type []string",
            )
        return copy.deepcopy(body)

    def _admit(self, info: KindInfo, obj: Obj, old: Obj | None) -> Obj:
        """As the API server's decoding, defaulting and validation: the object as it is stored (a custom
        resource pruned and defaulted by its CRD's schema), or 422 Invalid naming every bad field."""
        causes = meta_causes(obj["metadata"], kind=info.kind)
        schema = self._schemas.get(info.kind)
        if schema is not None:
            obj = schema.admit(obj)
            if not causes:
                causes = schema.validate(obj, old)
        if causes:
            raise invalid(info, str(obj["metadata"].get("name") or ""), causes)
        return obj

    def _create(self, t: _Target, body: Obj | None) -> Obj:
        if t.info.namespaced and not t.namespace:
            raise ApiError(405, "MethodNotAllowed", "create needs a namespace")
        obj = self._check_body(t, body, None)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        if not name:
            raise ApiError(422, "Invalid", f"{t.info.kind}: metadata.name: Required value: name is required")
        if meta.get("resourceVersion"):
            raise ApiError(
                422,
                "Invalid",
                f'{t.info.kind} "{name}" is invalid: metadata.resourceVersion: must be unset to create',
            )
        if t.info.has_status:
            obj.pop("status", None)
            if t.info.kind in _STATUS_ON_CREATE:
                obj["status"] = copy.deepcopy(_STATUS_ON_CREATE[t.info.kind])
        for stale in _SERVER_META:
            meta.pop(stale, None)
        obj = self._admit(t.info, obj, None)
        with self._lock:
            if (
                self.require_namespaces
                and t.info.namespaced
                and _key(self._info_of(_NS), "", t.namespace) not in self._objects
            ):
                raise ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{t.namespace}" not found',
                    {"name": t.namespace, "kind": "namespaces"},
                )
            ns_obj = (
                self._objects.get(_key(self._info_of(_NS), "", t.namespace)) if t.info.namespaced else None
            )
            if ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                why = f"namespace {t.namespace} is being terminated"
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{resource_name(t.info)} "{name}" is forbidden: unable to create new content in '
                    f"namespace {t.namespace} because it is being terminated",
                    {
                        **details(t.info, name),
                        "causes": [
                            {"reason": "NamespaceTerminating", "message": why, "field": "metadata.namespace"}
                        ],
                    },
                )
            if _key(t.info, t.namespace, name) in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource_name(t.info)} "{name}" already exists',
                    details(t.info, name),
                )
            self._fill_new(obj, t.info, t.namespace)
            return self._commit(t.info, obj, None)

    def _update(self, t: _Target, body: Obj | None) -> Obj:
        obj = self._check_body(t, body, t.name)
        with self._lock:
            old = self._objects.get(_key(t.info, t.namespace, t.name))
            if old is None:
                raise not_found(t.info, t.name)
            rv = obj["metadata"].get("resourceVersion")
            if rv:
                if rv != old["metadata"]["resourceVersion"]:
                    raise conflict(t.info, t.name, MODIFIED)
            elif t.info.group not in _BUILTIN_GROUPS:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{t.info.kind}.{t.info.group} "{t.name}" is invalid: metadata.resourceVersion: '
                    "Invalid value: 0x0: must be specified for an update",
                )
            if old["metadata"].get("deletionTimestamp") and t.subresource != "status":
                had = set(old["metadata"].get("finalizers") or [])
                added = [f for f in obj["metadata"].get("finalizers") or [] if f not in had]
                if added:
                    why = f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added}"
                    raise ApiError(
                        422,
                        "Invalid",
                        f'{t.info.kind} "{t.name}" is invalid: metadata.finalizers: {why}',
                        {
                            **details(t.info, t.name),
                            "causes": [
                                {
                                    "reason": "FieldValueForbidden",
                                    "message": why,
                                    "field": "metadata.finalizers",
                                }
                            ],
                        },
                    )
            new = copy.deepcopy(old)
            if t.subresource == "status":
                if "status" in obj:
                    new["status"] = obj["status"]
                else:
                    new.pop("status", None)
            else:
                keep = {k: old["metadata"][k] for k in _SERVER_META if k in old["metadata"]}
                new = {k: v for k, v in obj.items() if k != "status"}
                meta = {k: v for k, v in obj["metadata"].items() if k not in _SERVER_META}
                new["metadata"] = {**meta, **keep}
                if t.info.has_status:
                    if "status" in old:
                        new["status"] = copy.deepcopy(old["status"])
                elif "status" in obj:
                    new["status"] = obj["status"]
                if _content(new) != _content(old):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            new = self._admit(t.info, new, old)
            if new == old:
                return copy.deepcopy(old)
            meta = new["metadata"]
            if (
                meta.get("deletionTimestamp")
                and not meta.get("finalizers")
                and not meta.get("deletionGracePeriodSeconds")
            ):
                return self._commit(t.info, None, old, new)  # its last finalizer went: gone
            return self._commit(t.info, new, old)

    def _patch(self, t: _Target, patch: Any, content_type: str) -> Obj:
        """PATCH: the patch applied to the stored object, then written as an update (unconditional
        unless the patch names a resourceVersion, as the API server does)."""
        with self._lock:
            old = self._objects.get(_key(t.info, t.namespace, t.name))
            if old is None:
                raise not_found(t.info, t.name)
            try:
                new = apply_patch(old, content_type, patch, builtin=t.info.group in _BUILTIN_GROUPS)
            except LookupError:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: "
                    f"{JSON_PATCH}, {MERGE_PATCH}, application/apply-patch+yaml"
                    + (f", {STRATEGIC_MERGE_PATCH}" if t.info.group in _BUILTIN_GROUPS else ""),
                ) from None
            except PatchError as err:
                raise ApiError(422, "Invalid", f'{t.info.kind} "{t.name}" is invalid: {err}') from None
            if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
                raise ApiError(
                    422, "Invalid", f'{t.info.kind} "{t.name}" is invalid: the patch removed metadata'
                )
            asked = isinstance(patch, dict) and "resourceVersion" in (patch.get("metadata") or {})
            if not asked:
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self._update(t, new)

    def _delete(self, t: _Target, body: Obj | None, query: Mapping[str, str]) -> Obj:
        pre = (body or {}).get("preconditions") or {}
        grace_text = (body or {}).get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        grace: int | None = None
        if grace_text is not None:
            try:
                grace = int(grace_text)
            except (TypeError, ValueError):
                raise ApiError(
                    400, "BadRequest", f"gracePeriodSeconds: {grace_text!r} is not an integer"
                ) from None
            if grace < 0:
                why = f"Invalid value: {grace}: must be >= 0"
                raise ApiError(
                    422,
                    "Invalid",
                    f"gracePeriodSeconds: {why}",
                    {
                        **details(t.info, t.name),
                        "causes": [
                            {"reason": "FieldValueInvalid", "message": why, "field": "gracePeriodSeconds"}
                        ],
                    },
                )
        try:
            policy = propagation_policy(body, query)
        except ValueError as err:
            raise ApiError(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: {err}') from None
        if t.info.kind != "Pod":
            grace = None  # only pods have graceful deletion
        with self._lock:
            old = self._objects.get(_key(t.info, t.namespace, t.name))
            if old is None:
                raise not_found(t.info, t.name)
            meta = old["metadata"]
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise conflict(
                    t.info,
                    t.name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise conflict(
                    t.info,
                    t.name,
                    f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                    f"ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            held = bool(meta.get("finalizers"))
            new = copy.deepcopy(old)
            if meta.get("deletionTimestamp"):
                pending = int(meta.get("deletionGracePeriodSeconds") or 0)
                if grace is None or grace >= pending:
                    return copy.deepcopy(old)  # already terminating: only a shorter grace changes it
                new["metadata"]["deletionTimestamp"] = _shifted(meta["deletionTimestamp"], grace - pending)
                new["metadata"]["deletionGracePeriodSeconds"] = grace
                if grace == 0 and not held:
                    return self._commit(t.info, None, old, new)
                return self._commit(t.info, new, old)
            if t.info.kind == "Namespace":  # the namespace controller empties it, then it goes
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                new["status"] = {**(new.get("status") or {}), "phase": "Terminating"}
                return self._commit(t.info, new, old)
            gc_finalizer = {"Foreground": FOREGROUND, "Orphan": ORPHAN}.get(policy)
            if gc_finalizer is not None:
                finalizers = list(new["metadata"].get("finalizers") or [])
                if gc_finalizer not in finalizers:
                    new["metadata"]["finalizers"] = [*finalizers, gc_finalizer]
                held = True
            if grace is not None and grace > 0:
                new["metadata"]["deletionTimestamp"] = _now(grace)
                new["metadata"]["deletionGracePeriodSeconds"] = grace
                return self._commit(t.info, new, old)
            if held:
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                return self._commit(t.info, new, old)
            return self._commit(t.info, None, old)

    # -- watch --------------------------------------------------------------------------------------

    def _events_after(
        self,
        since: int,
        t: _Target,
        labels: LabelSelector | None,
        fields: list[tuple[str, bool, str]],
        running: bool = False,
    ) -> tuple[list[tuple[int, str, Obj]], int] | None:
        """Matching events after ``since`` (None when ``since`` was compacted away), and the last rv.

        ``running``: ``since`` is where a running watch got to, not a client's resourceVersion.  Such a
        watch is woken only by writes of its kind, so other kinds' writes may have been compacted past
        it; it has missed nothing if its kind has no event after ``since`` (as when every write woke it)."""
        with self._lock:
            if running and self._kind_rv.get(_prefix(t.info), 0) <= since:
                return [], self._rv  # no event of this kind after ``since``
            if since < self._compacted:
                return None
            out: list[tuple[int, str, Obj]] = []
            newer: list[_Event] = []  # the history is in revision order: only its tail is newer
            for ev in reversed(self._history):
                if ev.rv <= since:
                    break
                newer.append(ev)
            for ev in reversed(newer):
                if ev.info is not t.info:
                    continue
                now_in = ev.type != "DELETED" and self._selected(ev.obj, t, labels, fields)
                was_in = ev.old is not None and self._selected(ev.old, t, labels, fields)
                if ev.type == "DELETED":
                    if was_in:
                        out.append((ev.rv, "DELETED", ev.obj))
                elif now_in and was_in:
                    out.append((ev.rv, "MODIFIED", ev.obj))
                elif now_in:
                    out.append((ev.rv, "ADDED", ev.obj))
                elif was_in:
                    gone = copy.deepcopy(ev.obj)
                    out.append((ev.rv, "DELETED", gone))
            return out, self._rv

    async def _watch(self, request: web.Request, t: _Target) -> web.StreamResponse:
        labels, fields = self._selectors(request.query, t.info)
        with self._lock:
            self.watches.append(
                WatchRequest(t.info.kind, request.query.get("resourceVersion", ""), dict(request.query))
            )
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true")
        drop_after: int | None = None  # cut the stream once ``sent`` reaches it
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._watch_tasks.add(task)
        sent = 0

        async def send(ev_type: str, obj: Obj) -> bool:
            nonlocal sent, drop_after
            if drop_after is None and (more := self.faults.take_watch_drop()) is not None:
                drop_after = sent + more
            if drop_after is not None and sent >= drop_after:
                if request.transport is not None:
                    request.transport.close()  # cut the stream mid-way, as a broken connection does
                return False
            out = obj  # serialized at once: no copy needed unless a top-level key is added
            if t.info.group in _BUILTIN_GROUPS and ev_type not in ("ERROR", "BOOKMARK"):
                out = {**obj}
                out.setdefault("apiVersion", t.info.api_version)
                out.setdefault("kind", t.info.kind)
            await resp.write(json.dumps({"type": ev_type, "object": out}).encode() + b"\n")
            sent += 1
            return True

        try:
            rv_text = request.query.get("resourceVersion", "")
            if rv_text in ("", "0"):
                with self._lock:
                    since = self._rv
                    current = [  # stored objects are never changed in place: no copy
                        o
                        for _, o in sorted(self._of_kind.get(_prefix(t.info), {}).items())
                        if self._selected(o, t, labels, fields)
                    ]
                for obj in current:
                    if not await send("ADDED", obj):
                        return resp
            else:
                try:
                    since = int(rv_text)
                except ValueError:
                    since = -1
            running = False  # the first look starts from the client's resourceVersion
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                changed = self._changed_of(_prefix(t.info))
                found = self._events_after(since, t, labels, fields, running)
                running = True
                if found is None:
                    expired = ApiError(
                        410, "Expired", f"too old resource version: {since} ({self._compacted})"
                    )
                    await send("ERROR", expired.status())
                    break
                events, last = found
                for _, ev_type, obj in events:
                    if not await send(ev_type, obj):
                        return resp
                since = last  # every event up to ``last`` was looked at: none left for this watch
                now = loop.time()
                if bookmarks and (now >= next_bookmark or now >= deadline):
                    # a quiet watch learns how far it is, so it can resume after a compaction
                    # (the API server also sends one just before the watch times out)
                    bookmark: Obj = {
                        "apiVersion": t.info.api_version,
                        "kind": t.info.kind,
                        "metadata": {"resourceVersion": str(since)},
                    }
                    if not await send("BOOKMARK", bookmark):
                        return resp
                    next_bookmark = now + self.bookmark_interval
                remaining = deadline - now
                if remaining <= 0:
                    break
                wait = min(remaining, next_bookmark - now) if bookmarks else remaining
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.0))
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watch_tasks.discard(task)
        return resp


_NS: Obj = {"apiVersion": "v1", "kind": "Namespace"}
_SERVER_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds")


@pytest.fixture
def kube_emulator() -> Iterator[KubeEmulator]:
    """A started emulator, stopped (with its watch streams) after the test."""
    emulator = KubeEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()


# ---------------------------------------------------------------------------------------------------
# the emulator in a process of its own


def client_configuration(url: str, token: str) -> k8s.Configuration:
    """A ``kubernetes`` client configuration for the emulator at ``url``, authenticated with ``token``."""
    cfg = k8s.Configuration()
    cfg.host = url
    cfg.api_key["authorization"] = token
    cfg.api_key_prefix["authorization"] = "Bearer"
    return cfg


def http_call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str = "",
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """One raw request to the emulator at ``url``: the status and the decoded body (``token`` "": anonymous)."""
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class EmulatorProcess:
    """The emulator served by ``python -m tests.kube_emulator serve`` in a child process, so that clients
    in other processes (benchmarks) do not share an interpreter, and its GIL, with it.

    ``start()`` launches it and reads its one JSON line (``url``, ``admin_token``, ``agent_token``,
    ``harness_token``); ``stop()`` closes its stdin (the server stops when stdin ends, so it also goes
    when this process dies) and waits for it, terminating and then killing that one PID if it lingers.
    Latency and the request count go through the admin endpoint (``/_emulator/``)."""

    def __init__(
        self, *, history: int = 100_000, latency: float = 0.0, profile: str = "", tls_dir: str = ""
    ) -> None:
        """``tls_dir``: also serve HTTPS (``tls_url``, trusting ``ca_file``) with a certificate made there."""
        self.history = history
        self.tls_dir = tls_dir
        self.tls_url = ""
        self.ca_file = ""
        self.latency = latency
        self.profile = profile  # a file for the server's cProfile statistics, written when it stops
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.admin_token = ""
        self.agent_token = ""
        self.harness_token = ""

    def start(self) -> EmulatorProcess:
        argv = [sys.executable, "-m", "tests.kube_emulator", "serve", "--port", "0"]
        argv += ["--history", str(self.history), "--latency-ms", repr(self.latency * 1000)]
        if self.profile:
            argv += ["--profile", self.profile]
        if self.tls_dir:
            argv += ["--tls-dir", self.tls_dir]
        root = Path(__file__).resolve().parent.parent  # ``-m tests.kube_emulator`` from the checkout
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError(f"the emulator process exited before it served: {' '.join(argv)}")
        info = json.loads(line)
        self.url = info["url"]
        self.admin_token = info["admin_token"]
        self.agent_token = info["agent_token"]
        self.harness_token = info["harness_token"]
        self.tls_url = info.get("tls_url", "")
        self.ca_file = info.get("ca_file", "")
        return self

    def configuration(self, token: str) -> k8s.Configuration:
        return client_configuration(self.url, token)

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = http_call(self.url, method, ADMIN_PATH + path, body, token=self.admin_token)
        if status != 200:
            raise RuntimeError(f"emulator {ADMIN_PATH}{path}: {status} {answer}")
        return answer

    @property
    def requests(self) -> int:
        """Requests the server has handled (the admin endpoint's own not counted)."""
        return int(self._admin("GET", "stats")["requests"])

    @property
    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far (Linux ``/proc``)."""
        assert self.proc is not None, "the emulator process is not started"
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def set_latency(self, seconds: float) -> None:
        """Delay every request from now by ``seconds`` (``faults.latency``)."""
        self._admin("PUT", "faults", {"latency": seconds})
        self.latency = seconds

    def stop(self) -> int | None:
        """Stop the server and wait for its process; its exit status (None if it was not started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.proc = None
        return proc.returncode

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, made with the openssl command."""
    cert, key = directory / "emulator.crt", directory / "emulator.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def serve(argv: list[str]) -> int:
    """``python -m tests.kube_emulator serve [--port N] [--history N] [--latency-ms MS] [--profile FILE]``:
    serve the emulator on 127.0.0.1 until stdin ends or SIGTERM/SIGINT comes, after printing one JSON
    line with ``url``, ``host``, ``port`` and the ``admin_token``, ``agent_token`` and ``harness_token``.
    ``--profile``: the server thread's cProfile statistics, written to FILE when it stops."""
    parser = argparse.ArgumentParser(prog="python -m tests.kube_emulator serve", description=serve.__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--history", type=int, default=100_000, help="watch history size (events)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument("--profile", default="", help="write the server thread's cProfile stats here")
    parser.add_argument(
        "--tls-dir", default="", help="also serve HTTPS with a self-signed certificate made in this directory"
    )
    args = parser.parse_args(argv)
    if args.latency_ms < 0:
        parser.error(f"--latency-ms {args.latency_ms:g} is negative")
    emulator = KubeEmulator(history=args.history)
    emulator.faults.latency = args.latency_ms / 1000
    emulator.start(args.port, admin_endpoint=True)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        emulator.in_loop(profiler.enable)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())

    def until_stdin_ends() -> None:
        for _ in sys.stdin:
            pass
        done.set()

    threading.Thread(target=until_stdin_ends, name="stdin", daemon=True).start()
    port = int(emulator.url.rsplit(":", 1)[1])
    tls: dict[str, str] = {}
    if args.tls_dir:
        cert, key = self_signed_certificate(Path(args.tls_dir))
        tls = {"tls_url": emulator.serve_tls(str(cert), str(key)), "ca_file": str(cert)}
    print(
        json.dumps(
            {
                "url": emulator.url,
                "host": "127.0.0.1",
                "port": port,
                "pid": os.getpid(),
                "admin_token": emulator.admin_token,
                "agent_token": emulator.agent_token,
                "harness_token": emulator.harness_token,
                **tls,
            }
        ),
        flush=True,
    )
    done.wait()
    if profiler is not None:
        emulator.in_loop(profiler.disable)
        profiler.dump_stats(args.profile)
    emulator.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit(
            "usage: python -m tests.kube_emulator serve [--port N] [--history N] [--latency-ms MS] [--profile FILE]"
        )
    sys.exit(serve(sys.argv[2:]))
