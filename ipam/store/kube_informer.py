"""An informer: a list+watch cache of one kind, kept current by a background thread.

It lists the kind, then watches from the list's resourceVersion.  When a stream ends (the server's
timeout, or a dropped connection) it resumes the watch from the last resourceVersion it saw; when the
server answers 410 Gone (that revision is no longer in its history) it lists again and replaces the
cache.  Reads (``get``, ``list``) are served from memory: they are for the hot path (pods, namespaces,
nodes, pools), never for a write's precondition, which the store always takes from the server.

The store feeds its own successful writes in (``observe``/``forget``) so a process reads its own writes
at once; a watch event never replaces a newer object, and a deletion is remembered so a late event
cannot bring the object back.
"""

from __future__ import annotations

import builtins
import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from ipam.errors import Gone, StoreError, StoreUnavailable
from ipam.kinds import KindInfo
from ipam.records import WatchEvent
from ipam.store.kube_api import KubeApi

__all__ = ["Informer", "rv_newer"]

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

_TOMBSTONES = 4096  # deletions remembered (against late events resurrecting an object)


def rv_newer(a: str, b: str) -> bool:
    """Is resourceVersion ``a`` newer than ``b``?  Kubernetes says they are opaque, but every API server
    issues etcd revisions (integers); anything else is taken as newer (the server knows best)."""
    try:
        return int(a) > int(b)
    except ValueError:
        return a != b


def _key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta["name"]))


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "0")


class Informer:
    """List+watch cache of one kind (optionally one namespace / one label selector)."""

    def __init__(
        self,
        api: KubeApi,
        info: KindInfo,
        *,
        namespace: str = "",
        label_selector: str = "",
        watch_timeout: int = 300,
        max_backoff: float = 5.0,
        on_event: Callable[[WatchEvent], None] | None = None,
    ) -> None:
        self.api = api
        self.info = info
        self.namespace = namespace
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.on_event = on_event
        self.lists = 0  # full lists done (1 + re-lists after 410)
        self.resumes = 0  # watches re-opened from a resourceVersion
        self.last_error: str = ""
        self._lock = threading.Lock()
        self._items: dict[Key, Obj] = {}
        self._tombstones: OrderedDict[Key, str] = OrderedDict()
        self._rv = ""
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._stream_lock = threading.Lock()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> Informer:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.info.plural}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    @property
    def resource_version(self) -> str:
        with self._lock:
            return self._rv

    # -- reads --------------------------------------------------------------------------------------

    def get(self, name: str, namespace: str = "") -> Obj | None:
        with self._lock:
            obj = self._items.get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, namespace: str | None = None, labels: Mapping[str, str] | None = None) -> list[Obj]:
        want = dict(labels or {})
        with self._lock:
            out = []
            for key in sorted(self._items):
                if namespace is not None and self.info.namespaced and key[0] != namespace:
                    continue
                obj = self._items[key]
                have = obj["metadata"].get("labels") or {}
                if all(have.get(k) == v for k, v in want.items()):
                    out.append(copy.deepcopy(obj))
            return out

    def shared(self) -> builtins.list[Obj]:
        """The cached objects themselves, not copies, for read-only scans (the cache replaces an object
        on change and never edits one in place, so what this returns stays as it was read)."""
        with self._lock:
            return list(self._items.values())

    # -- write-through --------------------------------------------------------------------------------

    def observe(self, obj: Obj) -> None:
        """Take an object this process just wrote (or read from the server) unless we hold a newer one."""
        self._apply("MODIFIED", obj)

    def forget(self, obj: Obj) -> None:
        """An object this process just deleted (``obj`` carries the deletion's resourceVersion if known)."""
        self._apply("DELETED", obj)

    def _apply(self, kind: str, obj: Obj) -> bool:
        key, rv = _key(obj), _rv(obj)
        with self._lock:
            have = self._items.get(key)
            dead = self._tombstones.get(key)
            if kind == "DELETED":
                if have is not None and rv_newer(_rv(have), rv):
                    return False
                self._items.pop(key, None)
                self._tombstones[key] = rv
                self._tombstones.move_to_end(key)
                while len(self._tombstones) > _TOMBSTONES:
                    self._tombstones.popitem(last=False)
                return have is not None
            if have is not None and not rv_newer(rv, _rv(have)):
                return False
            if have is None and dead is not None and not rv_newer(rv, dead):
                return False
            self._tombstones.pop(key, None)
            self._items[key] = copy.deepcopy(obj)
            return True

    # -- the loop -------------------------------------------------------------------------------------

    def _typed(self, obj: Obj) -> Obj:
        obj.setdefault("apiVersion", self.info.api_version)
        obj.setdefault("kind", self.info.kind)
        return obj

    def _relist(self) -> None:
        query = [("labelSelector", self.label_selector)] if self.label_selector else []
        found, rv = self.api.list_all(self.info, namespace=self.namespace, query=query)
        items = [self._typed(o) for o in found]
        fresh = {_key(o): o for o in items}
        with self._lock:
            old = self._items
            self._items = fresh
            self._tombstones.clear()
            self._rv = rv
        self.lists += 1
        self._synced.set()
        if self.on_event is not None:
            for key, obj in fresh.items():
                if key not in old:
                    self.on_event(WatchEvent("ADDED", copy.deepcopy(obj), _rv(obj)))
                elif _rv(old[key]) != _rv(obj):
                    self.on_event(WatchEvent("MODIFIED", copy.deepcopy(obj), _rv(obj)))
            for key, obj in old.items():
                if key not in fresh:
                    self.on_event(WatchEvent("DELETED", copy.deepcopy(obj), rv))

    def _watch_once(self) -> None:
        stream = self.api.watch(
            self.info,
            resource_version=self._rv,
            namespace=self.namespace,
            label_selector=self.label_selector,
            timeout_seconds=self.watch_timeout,
        )
        with self._stream_lock:
            if self._stop.is_set():
                stream.close()
                return
            self._stream = stream
        try:
            for ev in stream:
                if self._stop.is_set():
                    return
                ev_type = ev.get("type")
                obj = ev.get("object") or {}
                if ev_type == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(f"{self.info.kind}: {obj.get('message', 'too old resource version')}")
                    raise StoreUnavailable(f"watch of {self.info.plural}: {obj.get('message', ev)}")
                rv = _rv(obj)
                if ev_type == "BOOKMARK":
                    with self._lock:
                        self._rv = rv
                    continue
                if ev_type not in ("ADDED", "MODIFIED", "DELETED"):
                    continue
                changed = self._apply(str(ev_type), self._typed(obj))
                with self._lock:
                    self._rv = rv
                if changed and self.on_event is not None:
                    self.on_event(WatchEvent(ev_type, copy.deepcopy(obj), rv))
        finally:
            with self._stream_lock:
                self._stream = None
            stream.close()

    def _run(self) -> None:
        need_list = True
        backoff = 0.05
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                else:
                    self.resumes += 1
                self._watch_once()
                backoff = 0.05
            except Gone:
                need_list = True
            except StoreError as err:
                self.last_error = str(err)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
