"""List pagination as kube-apiserver serves it: ``limit`` cuts a list into pages, and every page after
the first is read from the same consistent snapshot, the first page's resourceVersion, named by an
opaque ``continue`` token (base64 JSON ``{"v": "meta.k8s.io/v1", "rv": N, "start": "ns/name\\u0000"}``,
the API server's own format).  A token whose revision has been compacted answers 410 ``Expired``."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

__all__ = ["EXPIRED_MESSAGE", "Continue", "decode_continue", "encode_continue"]

EXPIRED_MESSAGE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a "
    "new list without the continue parameter, or use the continue token in this response to retrieve "
    "the remainder of the results. Continuing with the provided token results in an inconsistent list - "
    "objects that were created, modified, or deleted between the time the first chunk was returned and "
    "now may show up in the list."
)


@dataclass(frozen=True)
class Continue:
    rv: int  # the snapshot every page is read from
    after: tuple[str, str]  # (namespace, name) of the last item already served


def encode_continue(token: Continue) -> str:
    ns, name = token.after
    start = f"{ns}/{name}\x00" if ns else f"{name}\x00"
    doc = {"v": "meta.k8s.io/v1", "rv": token.rv, "start": start}
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def decode_continue(text: str) -> Continue:
    """Raises ValueError with the API server's words when the token is not one it issued."""
    try:
        doc = json.loads(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, binascii.Error):
        raise ValueError("continue key is not valid: illegal base64 data") from None
    if not isinstance(doc, dict) or doc.get("v") != "meta.k8s.io/v1":
        raise ValueError("continue key is not valid: server does not recognize this encoded key")
    rv, start = doc.get("rv"), doc.get("start")
    if not isinstance(rv, int) or rv <= 0 or not isinstance(start, str) or not start.endswith("\x00"):
        raise ValueError(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        )
    key = start[:-1]
    ns, _, name = key.rpartition("/")
    return Continue(rv, (ns, name))
