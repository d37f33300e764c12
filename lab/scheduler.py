"""The lab's kube-scheduler stand-in: pure functions that pick a node for a pod.

It honours what Spiderpool's examples and the lab's tests use: ``spec.nodeName`` (the scheduler is
bypassed), ``spec.nodeSelector``, required node affinity (``nodeSelectorTerms`` with
``matchExpressions`` on labels and ``matchFields`` on ``metadata.name``; In, NotIn, Exists,
DoesNotExist, Gt, Lt), and required pod affinity / anti-affinity on any topology key (the examples use
``kubernetes.io/hostname``).  Among the nodes that fit, the one running the fewest pods wins (ties: the
topology's order), which spreads replicas as the default scoring does.

A pod that fits nowhere gets kube-scheduler's message:
``0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.``
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ipam.records import Obj
from ipam.selectors import LabelSelector, SelectorError

__all__ = [
    "HOSTNAME_LABEL",
    "Placement",
    "node_fits",
    "schedule",
]

HOSTNAME_LABEL = "kubernetes.io/hostname"

_SELECTOR_REASON = "didn't match Pod's node affinity/selector"
_ANTI_AFFINITY_REASON = "didn't match pod anti-affinity rules"
_AFFINITY_REASON = "didn't match pod affinity rules"
_NOT_READY_REASON = "had untolerated taint {node.kubernetes.io/not-ready: }"
_UNSCHEDULABLE_REASON = "were unschedulable"


@dataclass(frozen=True)
class Placement:
    """The scheduler's answer: a node, or the reason no node fits (``node`` is then empty)."""

    node: str
    message: str = ""


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _node_ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _requirement_matches(req: Mapping[str, Any], value: str | None) -> bool:
    """One NodeSelectorRequirement against a label (or field) value; None = absent."""
    op = req.get("operator")
    values = [str(v) for v in req.get("values") or []]
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt"):
        if value is None or len(values) != 1:
            return False
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def _term_matches(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """A NodeSelectorTerm: every expression and every field requirement holds.  An empty term matches
    nothing, as in Kubernetes."""
    exprs = list(term.get("matchExpressions") or [])
    fields = list(term.get("matchFields") or [])
    if not exprs and not fields:
        return False
    labels = _labels(node)
    for req in exprs:
        if not isinstance(req, Mapping) or not _requirement_matches(req, labels.get(str(req.get("key")))):
            return False
    for req in fields:
        value = _name(node) if isinstance(req, Mapping) and req.get("key") == "metadata.name" else None
        if not isinstance(req, Mapping) or not _requirement_matches(req, value):
            return False
    return True


def node_fits(spec: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """nodeSelector and required node affinity of a pod spec against one node (DaemonSets use it too)."""
    labels = _labels(node)
    selector = spec.get("nodeSelector") or {}
    if isinstance(selector, Mapping) and any(labels.get(str(k)) != str(v) for k, v in selector.items()):
        return False
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = affinity.get("nodeSelectorTerms") if isinstance(affinity, Mapping) else None
    if terms:
        return any(isinstance(t, Mapping) and _term_matches(t, node) for t in terms)
    return True


def _pod_terms(spec: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    section = (spec.get("affinity") or {}).get(kind) or {}
    terms = (
        section.get("requiredDuringSchedulingIgnoredDuringExecution")
        if isinstance(section, Mapping)
        else None
    )
    return [t for t in terms or [] if isinstance(t, Mapping)]


def _matching_topologies(
    term: Mapping[str, Any],
    pod_namespace: str,
    pods: Sequence[Obj],
    node_by_name: Mapping[str, Obj],
) -> set[str]:
    """The topology values (of ``term.topologyKey``) of the nodes running pods the term selects."""
    key = str(term.get("topologyKey") or HOSTNAME_LABEL)
    try:
        selector = LabelSelector.parse(term.get("labelSelector") or {}, "labelSelector")
    except SelectorError:
        return set()
    namespaces = {str(n) for n in term.get("namespaces") or []} or {pod_namespace}
    found: set[str] = set()
    for other in pods:
        meta = other.get("metadata") or {}
        node = str((other.get("spec") or {}).get("nodeName") or "")
        if not node or meta.get("deletionTimestamp") or str(meta.get("namespace")) not in namespaces:
            continue
        if (other.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if selector.matches(_labels(other)) and node in node_by_name:
            value = _labels(node_by_name[node]).get(key)
            if value is not None:
                found.add(value)
    return found


def schedule(pod: Obj, nodes: Sequence[Obj], pods: Sequence[Obj]) -> Placement:
    """Pick a node for ``pod`` among ``nodes`` given the ``pods`` already placed (pure)."""
    spec = pod.get("spec") or {}
    namespace = str(pod["metadata"].get("namespace") or "default")
    uid = pod["metadata"].get("uid")
    others = [p for p in pods if p["metadata"].get("uid") != uid]
    node_by_name = {_name(n): n for n in nodes}
    anti = [
        (
            str(t.get("topologyKey") or HOSTNAME_LABEL),
            _matching_topologies(t, namespace, others, node_by_name),
        )
        for t in _pod_terms(spec, "podAntiAffinity")
    ]
    affine = [
        (
            str(t.get("topologyKey") or HOSTNAME_LABEL),
            _matching_topologies(t, namespace, others, node_by_name),
        )
        for t in _pod_terms(spec, "podAffinity")
    ]
    reasons: Counter[str] = Counter()
    fitting: list[str] = []
    for node in nodes:
        labels = _labels(node)
        if not _node_ready(node):
            reasons[_NOT_READY_REASON] += 1
        elif (node.get("spec") or {}).get("unschedulable"):
            reasons[_UNSCHEDULABLE_REASON] += 1
        elif not node_fits(spec, node):
            reasons[_SELECTOR_REASON] += 1
        elif any(labels.get(key) in taken for key, taken in anti):
            reasons[_ANTI_AFFINITY_REASON] += 1
        elif any(taken and labels.get(key) not in taken for key, taken in affine):
            reasons[_AFFINITY_REASON] += 1
        else:
            fitting.append(_name(node))
    if not fitting:
        detail = ", ".join(f"{n} node(s) {why}" for why, n in sorted(reasons.items(), key=lambda kv: kv[0]))
        return Placement(
            "", f"0/{len(nodes)} nodes are available: {detail}." if detail else "no nodes available"
        )
    load = Counter(
        str((p.get("spec") or {}).get("nodeName"))
        for p in others
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )
    order = {name: i for i, name in enumerate(node_by_name)}
    return Placement(min(fitting, key=lambda n: (load[n], order[n])))
