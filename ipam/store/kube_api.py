"""The HTTP layer of the Kubernetes store: one generic request path through the official client.

Every call goes through ``kubernetes.client.ApiClient`` (``param_serialize`` for the host, auth headers
and query encoding, ``call_api`` for the request), so one code path serves core/v1, apps/v1, batch/v1,
coordination.k8s.io/v1 and the Spiderpool custom resources alike.  HTTP failures become the store
errors of ``ipam.errors``: 404 NotFound, 409 AlreadyExists or Conflict, 410 Gone, 400/422 Invalid, 5xx,
429 and connection failures StoreUnavailable.  Reads are retried a few times on StoreUnavailable;
writes never are (the caller's resourceVersion precondition decides what a retry means).
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s

from ipam.errors import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    IpamError,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from ipam.kinds import KindInfo

__all__ = ["DEFAULT_RETRY", "Backoff", "KubeApi", "WatchStream", "resource_path"]

Obj = dict[str, Any]


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff, client-go's ``retry.DefaultRetry`` by default (what Spiderpool uses):
    5 steps from 10 ms, factor 1.5, 10 % jitter."""

    steps: int = 5
    duration: float = 0.010
    factor: float = 1.5
    jitter: float = 0.1

    def delays(self, rand: Callable[[], float]) -> Iterator[float]:
        """The pauses between ``steps`` attempts (one fewer than the attempts)."""
        d = self.duration
        for _ in range(self.steps - 1):
            yield d * (1 + self.jitter * rand())
            d *= self.factor


DEFAULT_RETRY = Backoff()


def resource_path(info: KindInfo, namespace: str = "", name: str = "", subresource: str = "") -> str:
    """The API path of a kind's collection (``name`` empty) or one object, as the API server names it."""
    base = "/api/v1" if not info.group else f"/apis/{info.api_version}"
    if info.namespaced and namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{info.plural}"
    if name:
        base += f"/{quote(name, safe='')}"
    if subresource:
        base += f"/{subresource}"
    return base


def _where(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


class WatchStream:
    """One open watch: iterate to get the decoded events; ``close()`` from any thread ends it."""

    def __init__(self, response: urllib3.BaseHTTPResponse, what: str) -> None:
        self._response = response
        self._what = what
        self._closed = threading.Event()

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            with contextlib.suppress(RuntimeError, OSError, ValueError):  # already finished or released
                self._response.shutdown()
            self._response.release_conn()

    def __iter__(self) -> Iterator[Obj]:
        buf = b""
        try:
            for chunk in self._response.stream(None, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
            if not self._closed.is_set():
                raise StoreUnavailable(f"watch of {self._what}: the stream broke ({err})") from None
        finally:
            self.close()


class KubeApi:
    """Requests against one API server.  Thread-safe (the client's urllib3 pool is)."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        timeout: float = 10.0,
        read_retries: Backoff = DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.client = api_client
        self.timeout = timeout
        self.read_retries = read_retries
        self._sleep = sleep
        self._rand = rand or random.random

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    # -- requests -----------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Obj | None = None,
        *,
        timeout: float | tuple[float, float] | None = None,
    ) -> Any:
        """Send one request; returns the kubernetes RESTResponse (body not read)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            m, url, hdrs, data, _ = self.client.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            return self.client.call_api(
                m, url, header_params=hdrs, body=data, _request_timeout=timeout or self.timeout
            )
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise StoreUnavailable(f"Kubernetes API {self.host}: {_reason(err)}") from None
        except k8s.ApiException as err:  # raised by the client for TLS failures (status 0)
            raise StoreUnavailable(f"Kubernetes API {self.host}: {err.reason}") from None

    def request(
        self,
        method: str,
        info: KindInfo,
        *,
        namespace: str = "",
        name: str = "",
        subresource: str = "",
        query: Sequence[tuple[str, str]] = (),
        body: Obj | None = None,
        about: str = "",
    ) -> Obj:
        """One JSON request on a kind; the decoded body of a 2xx answer, a store error otherwise.
        ``about`` names the object in errors when the path does not (a create)."""
        path = resource_path(info, namespace, name, subresource)
        attempts = self.read_retries.steps if method == "GET" else 1
        delays = self.read_retries.delays(self._rand)
        for attempt in range(attempts):
            try:
                resp = self._send(method, path, query, body)
                try:
                    raw = resp.read()
                except (urllib3.exceptions.HTTPError, OSError) as err:
                    raise StoreUnavailable(f"Kubernetes API {self.host}: {_reason(err)}") from None
                status = int(resp.status)
                doc = _decode(raw)
                if 200 <= status < 300:
                    if not isinstance(doc, dict):
                        raise StoreUnavailable(f"Kubernetes API {self.host}: {path}: answer is not an object")
                    return doc
                raise self.error(status, doc, info, namespace, name or about)
            except StoreUnavailable:
                if attempt + 1 >= attempts:
                    raise
                self._sleep(next(delays))
        raise AssertionError("unreachable")

    def list_all(
        self,
        info: KindInfo,
        *,
        namespace: str = "",
        query: Sequence[tuple[str, str]] = (),
        page_size: int = 500,
    ) -> tuple[list[Obj], str]:
        """Every object of a kind (as ``query`` selects them), read in pages of ``page_size`` from one
        consistent snapshot, and that snapshot's resourceVersion.  When the snapshot is compacted
        before the last page (410 on the ``continue`` token) the list is read again in one request
        without a limit, as client-go's pager does (``FullListIfExpired``)."""
        items: list[Obj] = []
        cont = ""
        while True:
            paged = [*query, ("limit", str(page_size))]
            if cont:
                paged.append(("continue", cont))
            try:
                doc = self.request("GET", info, namespace=namespace, query=paged)
            except Gone:
                if not cont:
                    raise
                doc = self.request("GET", info, namespace=namespace, query=list(query))
                items = []
            items.extend(doc.get("items") or [])
            meta = doc.get("metadata") or {}
            cont = str(meta.get("continue") or "")
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    def error(self, status: int, doc: object, info: KindInfo, namespace: str, name: str) -> IpamError:
        """The store error for a non-2xx answer (a Kubernetes ``Status`` object, or anything else)."""
        st: Mapping[str, Any] = doc if isinstance(doc, dict) else {}
        reason = str(st.get("reason") or "")
        message = str(st.get("message") or f"HTTP {status}")
        details = st.get("details") if isinstance(st.get("details"), dict) else {}
        assert isinstance(details, dict)
        where = _where(namespace, name)
        if status == 404:
            if details.get("kind") == "namespaces" and details.get("name") not in (None, name):
                return NotFound("Namespace", str(details["name"]))
            return NotFound(info.kind, name, namespace)
        if status == 409 and reason == "AlreadyExists":
            return AlreadyExists(info.kind, name, namespace)
        if status == 409:
            if "has been modified" in message:
                message = "resourceVersion is stale (the object has been modified); re-read and retry"
            elif "Precondition failed" in message:
                message = message[message.index("Precondition failed") :]
            return Conflict(f'{info.kind} "{where}": {message}')
        if status == 410:
            return Gone(f"{info.kind}: {message}")
        if status in (400, 422):
            causes = details.get("causes") if isinstance(details.get("causes"), list) else []
            assert isinstance(causes, list)
            if causes and isinstance(causes[0], dict):
                return Invalid(
                    info.kind, where, str(causes[0].get("field", "")), str(causes[0].get("message", message))
                )
            return Invalid(info.kind, where, "object", message)
        if status in (401, 403):
            return StoreError(f'{info.kind} "{where}": {reason or "Forbidden"}: {message}')
        if status == 429 or status >= 500:
            return StoreUnavailable(f"Kubernetes API {self.host}: {info.kind} {where}: {status} {message}")
        return StoreError(f'{info.kind} "{where}": HTTP {status}: {message}')

    def watch(
        self,
        info: KindInfo,
        *,
        resource_version: str,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int = 300,
    ) -> WatchStream:
        """Open a watch of a kind from ``resource_version`` (the server's own timeout ``timeout_seconds``).
        Raises Gone when the server answers 410 right away; an ERROR event in the stream is the
        caller's to read."""
        query = [
            ("watch", "1"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        path = resource_path(info, namespace)
        resp = self._send("GET", path, query, timeout=(self.timeout, timeout_seconds + 30))
        status = int(resp.status)
        if status != 200:
            raise self.error(status, _decode(resp.read()), info, namespace, "")
        return WatchStream(resp.response, info.plural)


def _decode(raw: bytes | None) -> object:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:200]


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    inner = reason if isinstance(reason, BaseException) else err
    text = str(inner)
    # urllib3 nests "<urllib3.connection.HTTPConnection object at 0x..>: Failed to establish ..."
    if ">: " in text:
        text = text.split(">: ", 1)[1]
    return text or type(inner).__name__
