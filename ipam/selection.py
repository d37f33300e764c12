"""Which pools a pod's NIC may take addresses from, in which order (reference §3.2–§3.5), and the routes
its CNI result carries (§3.9).

:func:`candidates` is pure: the caller passes the pod, its namespace's annotations and labels, its
node's labels, the CNI config's default pools, every SpiderIPPool and the pod's top controller.  The
first rule that names pools wins: subnet annotations (auto pools) > ``ippools`` > ``ippool`` >
namespace defaults > CNI defaults > cluster defaults (``spec.default``).  Wildcards expand against the
pools of the family; the survivors of the filters (terminating, disabled, family, node, namespace, pod
affinity, multus) are sorted by Spiderpool's affinity priority with a *stable* sort, so pools of equal
priority keep the order the user wrote.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import netaddr

from ipam import annotations as an
from ipam.autopool import AppRequest, find_auto_pool, is_auto_pool, matches_app
from ipam.errors import AllocationError, AllocationReason
from ipam.model import IPPool
from ipam.ranges import Family
from ipam.workload import PodInfo, TopController

__all__ = [
    "ANNO_MULTUS_DEFAULT",
    "ANNO_MULTUS_NETWORKS",
    "FamilyCandidates",
    "NicCandidates",
    "NicRoute",
    "Selection",
    "Skip",
    "Source",
    "candidates",
    "describe_failure",
    "multus_network_for",
    "response_routes",
    "skip_reason",
    "sort_key",
]

ANNO_MULTUS_DEFAULT: Final = "v1.multus-cni.io/default-network"
ANNO_MULTUS_NETWORKS: Final = "k8s.v1.cni.cncf.io/networks"

Source = Literal["subnet", "ippools", "ippool", "namespace", "cni", "cluster-default"]

_SOURCE_TEXT: Final[dict[str, str]] = {
    "subnet": "SpiderSubnet auto pool",
    "ippools": f"pod annotation {an.ANNO_IPPOOLS}",
    "ippool": f"pod annotation {an.ANNO_IPPOOL}",
    "namespace": "namespace default pools",
    "cni": "CNI config default pools",
    "cluster-default": "cluster default pools",
}
_WILDCARD: Final = frozenset("*?[")


@dataclass(frozen=True)
class Skip:
    pool: str
    reason: str


@dataclass(frozen=True)
class FamilyCandidates:
    family: Family
    pools: tuple[str, ...]  # surviving pools, in the order to try them
    skipped: tuple[Skip, ...] = ()


@dataclass(frozen=True)
class NicCandidates:
    nic: str
    clean_gateway: bool
    families: tuple[FamilyCandidates, ...]

    def family(self, family: int) -> FamilyCandidates | None:
        return next((f for f in self.families if f.family == family), None)


@dataclass(frozen=True)
class Selection:
    """The candidate pools of every NIC to allocate now, and the rule that produced them."""

    source: Source
    nics: tuple[NicCandidates, ...]

    def nic(self, name: str) -> NicCandidates | None:
        return next((n for n in self.nics if n.nic == name), None)

    @property
    def source_text(self) -> str:
        return _SOURCE_TEXT[self.source]


@dataclass(frozen=True)
class NicRoute:
    """A route of a CNI result: ``dst`` via ``gw`` on ``interface``."""

    interface: str
    dst: str
    gw: str


# --------------------------------------------------------------------------------------------------
# filters and sort


def multus_network_for(
    pod: PodInfo, nic: str, *, default_nic: str = an.DEFAULT_NIC, cluster_network: str = ""
) -> str | None:
    """The ``namespace/name`` of the NetworkAttachmentDefinition behind ``nic``, or None.

    The first NIC uses ``v1.multus-cni.io/default-network`` (else ``cluster_network``); others come from
    ``k8s.v1.cni.cncf.io/networks`` (``ns/name@if`` text or JSON), an item without an interface name
    being ``net<index+1>`` and without a namespace being the pod's."""
    if nic in (default_nic, "0"):
        value = pod.annotations.get(ANNO_MULTUS_DEFAULT, "") or cluster_network
        return _qualify(value.split("@", 1)[0].strip(), pod.namespace) if value.strip() else None
    text = pod.annotations.get(ANNO_MULTUS_NETWORKS, "").strip()
    if not text:
        return None
    entries: list[tuple[str, str, str]] = []  # (namespace, name, interface)
    if text.startswith("["):
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(raw, list):
            return None
        for item in raw:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                ns = item.get("namespace")
                iface = item.get("interface")
                entries.append(
                    (ns if isinstance(ns, str) else "", item["name"], iface if isinstance(iface, str) else "")
                )
    else:
        for part in text.split(","):
            ref, _, iface = part.strip().partition("@")
            ns, _, name = ref.rpartition("/")
            entries.append((ns, name, iface))
    for index, (ns, name, iface) in enumerate(entries):
        if (iface or f"net{index + 1}") == nic:
            return f"{ns or pod.namespace}/{name}"
    return None


def _qualify(ref: str, namespace: str) -> str:
    return ref if "/" in ref else f"{namespace}/{ref}"


def skip_reason(
    pool: IPPool,
    family: int,
    pod: PodInfo,
    nic: str,
    *,
    namespace_labels: Mapping[str, str],
    node_labels: Mapping[str, str],
    top_controller: TopController,
    multus_namespace: str = "kube-system",
    multus_cluster_network: str = "",
) -> str | None:
    """Why ``pool`` cannot serve this pod's NIC (Spiderpool's filter order), or None when it can."""
    if pool.terminating:
        return "terminating"
    if pool.disable:
        return "disabled"
    if pool.ip_version != family:
        return f"ipVersion {pool.ip_version} != {family}"
    if pool.node_name:
        if pod.node_name not in pool.node_name:
            return f"node {pod.node_name or '(unscheduled)'} not in nodeName"
    elif pool.node_affinity is not None and not pool.node_affinity.matches(node_labels):
        return f"node {pod.node_name or '(unscheduled)'} does not match nodeAffinity"
    if pool.namespace_name:
        if pod.namespace not in pool.namespace_name:
            return f"namespace {pod.namespace} not in namespaceName"
    elif pool.namespace_affinity is not None and not pool.namespace_affinity.matches(namespace_labels):
        return f"namespace {pod.namespace} does not match namespaceAffinity"
    if is_auto_pool(pool):
        # Auto pools match the workload, not pod labels, and skip the multus check.
        if matches_app(pool, top_controller):
            return None
        return f"auto pool of another application (not {top_controller.kind} {top_controller.name})"
    if pool.pod_affinity is not None and not pool.pod_affinity.matches(pod.labels):
        return "podAffinity does not match"
    if pool.multus_name:  # checked only when set (the pre-v1.2 semantics)
        network = multus_network_for(pod, nic, cluster_network=multus_cluster_network)
        allowed = {_qualify(m, multus_namespace) for m in pool.multus_name}
        if network is None:
            return f"multusName {', '.join(pool.multus_name)} set but {nic} has no multus network"
        if network not in allowed:
            return f"multus network {network} of {nic} not in multusName"
    return None


def sort_key(pool: IPPool) -> tuple[bool, bool, bool, bool, bool, bool]:
    """Spiderpool's priority (highest first when sorted in reverse): podAffinity, nodeName,
    nodeAffinity, namespaceName, namespaceAffinity, multusName."""
    return (
        pool.pod_affinity is not None,
        bool(pool.node_name),
        pool.node_affinity is not None,
        bool(pool.namespace_name),
        pool.namespace_affinity is not None,
        bool(pool.multus_name),
    )


# --------------------------------------------------------------------------------------------------
# candidates


@dataclass(frozen=True)
class _Ask:
    """One NIC's requested pool names per family, before expansion and filtering."""

    nic: str
    clean_gateway: bool
    names: dict[int, tuple[str, ...]]


def _fail(
    pod: PodInfo, message: str, *, reason: AllocationReason = AllocationReason.NO_POOL
) -> AllocationError:
    return AllocationError(f'Pod "{pod.key}": {message}', reason=reason)


def _expand(
    pod: PodInfo, names: Sequence[str], family: int, by_name: Mapping[str, IPPool], where: str, nic: str
) -> list[str]:
    of_family = sorted(name for name, pool in by_name.items() if pool.ip_version == family)
    out: list[str] = []
    literal: set[str] = set()
    for name in names:
        if _WILDCARD & set(name):
            out.extend(
                m for m in of_family if fnmatch.fnmatchcase(m, name) and m not in out and m not in names
            )
            continue
        if name in literal:
            raise _fail(pod, f"{where}: IPPool {name} is listed twice for {nic}")
        literal.add(name)
        if name not in by_name:
            raise _fail(pod, f'{where}: SpiderIPPool "{name}" not found')
        out.append(name)
    return out


def _asks(
    pod: PodInfo,
    nic: str,
    parsed: an.PodIPAMAnnotations,
    namespace_annotations: Mapping[str, str],
    cni_default_v4: Sequence[str],
    cni_default_v6: Sequence[str],
    clean_gateway: bool,
    pools: Sequence[IPPool],
) -> tuple[Source, list[_Ask]]:
    if parsed.ippools is not None:
        asks = []
        for index, item in enumerate(parsed.ippools.items):
            name = item.interface or (nic if index == 0 else str(index))
            asks.append(_Ask(name, item.clean_gateway, {4: item.ipv4, 6: item.ipv6}))
        return "ippools", asks
    if parsed.ippool is not None:
        return "ippool", [_Ask(nic, clean_gateway, {4: parsed.ippool.ipv4, 6: parsed.ippool.ipv6})]
    ns_defaults = an.parse_namespace_defaults(pod.namespace, namespace_annotations)
    if not ns_defaults.empty:
        return "namespace", [_Ask(nic, clean_gateway, {4: ns_defaults.ipv4, 6: ns_defaults.ipv6})]
    if cni_default_v4 or cni_default_v6:
        return "cni", [_Ask(nic, clean_gateway, {4: tuple(cni_default_v4), 6: tuple(cni_default_v6)})]
    defaults = [p for p in pools if p.default]
    if not defaults:
        raise _fail(pod, "no IPPool available: no pool selection rule of any type applies")
    return "cluster-default", [
        _Ask(
            nic,
            clean_gateway,
            {f: tuple(p.name for p in defaults if p.ip_version == f) for f in (4, 6)},
        )
    ]


def _subnet_asks(
    pod: PodInfo,
    nic: str,
    subnets: an.SubnetsAnnotation,
    pools: Sequence[IPPool],
    top: TopController,
    families: Sequence[Family],
    clean_gateway: bool,
    enable_auto_pool: bool,
) -> list[_Ask]:
    key = subnets.key
    if not enable_auto_pool:
        raise _fail(pod, f"annotation {key} needs SpiderSubnet auto pools, which are disabled")
    if top.orphan:
        raise _fail(pod, f"annotation {key}: auto pools need a controller (Deployment, StatefulSet, ...)")
    choice = subnets.for_nic(nic)
    if choice is None:
        raise _fail(pod, f"annotation {key} does not list interface {nic}")
    names: dict[int, tuple[str, ...]] = {}
    for family in families:
        subnet = choice.ipv4 if family == 4 else choice.ipv6
        if subnet is None:
            continue  # a family the annotation leaves out is not allocated (as with ippool)
        request = AppRequest(top=top, nic=nic, family=family, subnet=subnet, ip_number=an.IPNumber(True, 0))
        pool = find_auto_pool(pools, request)
        if pool is None:
            raise _fail(
                pod,
                f'auto pool {request.pool_name} of SpiderSubnet "{subnet}" for {top.kind} '
                f"{top.namespace}/{top.name} does not exist yet",
                reason=AllocationReason.AWAITING_POOL,
            )
        names[family] = (pool.name,)
    if not names:
        enabled = " or ".join(f"IPv{f}" for f in families)
        raise _fail(pod, f"annotation {key} names no {enabled} SpiderSubnet for {nic}")
    return [_Ask(nic, clean_gateway, names)]


def candidates(
    pod: PodInfo,
    nic: str,
    *,
    namespace_annotations: Mapping[str, str],
    namespace_labels: Mapping[str, str],
    node_labels: Mapping[str, str],
    cni_default_v4: Sequence[str],
    cni_default_v6: Sequence[str],
    pools: Sequence[IPPool],
    top_controller: TopController,
    enable_v4: bool = True,
    enable_v6: bool = True,
    clean_gateway: bool = False,
    enable_auto_pool: bool = True,
    multus_namespace: str = "kube-system",
    multus_cluster_network: str = "",
) -> Selection:
    """The candidate pools of ``pod`` for the CNI call on ``nic`` (and, with ``ippools``, for every NIC
    the annotation lists).

    Raises AnnotationError for a malformed annotation and AllocationError (one line naming the pod) for
    a named pool that does not exist, a pool listed twice for one NIC, no applicable rule, or a family
    whose every candidate is filtered out (the message lists each pool and why)."""
    families: list[Family] = []
    if enable_v4:
        families.append(4)
    if enable_v6:
        families.append(6)
    parsed = an.parse_pod_annotations(pod.key, pod.annotations, nic=nic)
    source: Source
    if parsed.subnets is not None:
        source = "subnet"
        asks = _subnet_asks(
            pod, nic, parsed.subnets, pools, top_controller, families, clean_gateway, enable_auto_pool
        )
    else:
        source, asks = _asks(
            pod, nic, parsed, namespace_annotations, cni_default_v4, cni_default_v6, clean_gateway, pools
        )
    by_name = {p.name: p for p in pools}
    where = _SOURCE_TEXT[source]
    nics: list[NicCandidates] = []
    for ask in asks:
        result: list[FamilyCandidates] = []
        for family in families:
            names = ask.names.get(family, ())
            if not names:
                continue
            expanded = _expand(pod, names, family, by_name, where, ask.nic)
            survivors: list[IPPool] = []
            skipped: list[Skip] = []
            for name in expanded:
                pool = by_name[name]
                reason = skip_reason(
                    pool,
                    family,
                    pod,
                    ask.nic,
                    namespace_labels=namespace_labels,
                    node_labels=node_labels,
                    top_controller=top_controller,
                    multus_namespace=multus_namespace,
                    multus_cluster_network=multus_cluster_network,
                )
                if reason is None:
                    survivors.append(pool)
                else:
                    skipped.append(Skip(name, reason))
            survivors.sort(key=sort_key, reverse=True)  # list.sort is stable
            got = FamilyCandidates(family, tuple(p.name for p in survivors), tuple(skipped))
            if not got.pools:
                detail = (
                    "; ".join(f"pool {s.pool}: {s.reason}" for s in skipped) or f"no IPv{family} pool matches"
                )
                raise _fail(pod, f"no IPv{family} IPPool available for {ask.nic} ({where}): {detail}")
            result.append(got)
        nics.append(NicCandidates(ask.nic, ask.clean_gateway, tuple(result)))
    if not any(n.families for n in nics):
        enabled = " or ".join(f"IPv{f}" for f in families) or "any enabled family"
        raise _fail(pod, f"{where} name no pool of {enabled} for {nic}")
    return Selection(source, tuple(nics))


# --------------------------------------------------------------------------------------------------
# result routes and failure text


def response_routes(
    pool: IPPool, nic: str, clean_gateway: bool, annotation_routes: Sequence[an.AnnotationRoute]
) -> tuple[NicRoute, ...]:
    """The routes a NIC's CNI result carries for an address of ``pool``, in Spiderpool's order: the
    pool's routes, the ``ipam.spidernet.io/routes`` entries whose gateway lies in the pool's subnet, then
    the default route via the pool's gateway unless ``clean_gateway``."""
    out = [NicRoute(nic, r.dst, r.gw) for r in pool.routes]
    if annotation_routes:  # most pods carry none: the subnet is parsed only when there is one to test
        subnet = netaddr.IPNetwork(pool.subnet)
        for route in annotation_routes:
            if route.version == pool.ip_version and netaddr.IPAddress(route.gw) in subnet:
                out.append(NicRoute(nic, route.dst, route.gw))
    if pool.gateway is not None and not clean_gateway:
        out.append(NicRoute(nic, "0.0.0.0/0" if pool.ip_version == 4 else "::/0", pool.gateway))
    return tuple(out)


def describe_failure(family: int, nic: str, selection: Selection, per_pool_errors: Mapping[str, str]) -> str:
    """One line saying why no address of ``family`` could be given to ``nic``: each candidate tried
    with its error (in order), then each pool filtered out with its reason."""
    parts: list[str] = []
    found = selection.nic(nic)
    fam = found.family(family) if found is not None else None
    if fam is not None:
        for name in fam.pools:
            parts.append(f"pool {name}: {per_pool_errors.get(name, 'not tried')}")
        parts.extend(f"pool {s.pool}: {s.reason}" for s in fam.skipped)
    for name, error in per_pool_errors.items():
        if fam is None or name not in fam.pools:
            parts.append(f"pool {name}: {error}")
    detail = "; ".join(parts) if parts else f"no IPv{family} candidate pools"
    return f"no IPv{family} address for {nic}: {detail}"
