"""The node-level side of the agent's readiness: the Node's ``NetworkUnavailable`` condition.

Kubernetes' node lifecycle controller taints a node whose ``NetworkUnavailable`` condition is
``True`` with ``node.kubernetes.io/network-unavailable:NoSchedule``, so no new pod (except those
tolerating it, like this agent) is scheduled where its address could not be announced.  The agent
sets the condition ``True`` (reason ``SpiderbgpNotReady``, message: why) until BGP has converged, and
``False`` (reason ``SpiderbgpIsUp``) once it has, as calico-node sets ``CalicoIsUp``.

Pure: the new Node object from the old one; the agent does the read and the write.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["CONDITION", "REASON_DOWN", "REASON_UP", "with_network_condition"]

CONDITION = "NetworkUnavailable"
REASON_UP = "SpiderbgpIsUp"
REASON_DOWN = "SpiderbgpNotReady"


def with_network_condition(
    node: Mapping[str, Any], *, unavailable: bool, message: str, now: str
) -> dict[str, Any] | None:
    """``node`` with its NetworkUnavailable condition saying ``unavailable``; None when it already
    does (same status, reason and message: nothing to write).  ``lastTransitionTime`` moves only
    when the status flips."""
    status_text = "True" if unavailable else "False"
    reason = REASON_DOWN if unavailable else REASON_UP
    status = node.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    conditions = [c for c in conditions if isinstance(c, Mapping)] if isinstance(conditions, list) else []
    old = next((c for c in conditions if c.get("type") == CONDITION), None)
    if old is not None and (old.get("status"), old.get("reason"), old.get("message")) == (
        status_text,
        reason,
        message,
    ):
        return None
    transition = (
        now if old is None or old.get("status") != status_text else old.get("lastTransitionTime", now)
    )
    new_condition = {
        "type": CONDITION,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "lastHeartbeatTime": now,
    }
    out = copy.deepcopy(dict(node))
    out_status = out.setdefault("status", {})
    if not isinstance(out_status, dict):
        out_status = out["status"] = {}
    out_status["conditions"] = [
        *(copy.deepcopy(dict(c)) for c in conditions if c.get("type") != CONDITION),
        new_condition,
    ]
    return out
