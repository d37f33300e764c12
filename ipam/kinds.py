"""The kinds of object the system stores, with the names kubectl knows them by."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GENERIC_KINDS", "KINDS", "KindInfo", "kind_info", "resolve_kind"]

SPIDER_API = "spiderpool.spidernet.io/v2beta1"


@dataclass(frozen=True)
class KindInfo:
    kind: str
    api_version: str
    plural: str
    namespaced: bool
    has_status: bool  # has a status subresource (update_status writes only status)
    short_names: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


GENERIC_KINDS: tuple[KindInfo, ...] = (
    KindInfo("Service", "v1", "services", True, True, ("svc",)),
    KindInfo("Endpoints", "v1", "endpoints", True, False, ("ep",)),
    KindInfo("ConfigMap", "v1", "configmaps", True, False, ("cm",)),
    KindInfo("Secret", "v1", "secrets", True, False, ()),
    KindInfo("ServiceAccount", "v1", "serviceaccounts", True, False, ("sa",)),
    KindInfo("PersistentVolumeClaim", "v1", "persistentvolumeclaims", True, True, ("pvc",)),
    KindInfo("PersistentVolume", "v1", "persistentvolumes", False, True, ("pv",)),
    KindInfo("ReplicationController", "v1", "replicationcontrollers", True, True, ("rc",)),
    KindInfo("LimitRange", "v1", "limitranges", True, False, ("limits",)),
    KindInfo("ResourceQuota", "v1", "resourcequotas", True, True, ("quota",)),
    KindInfo("Event", "v1", "events", True, False, ("ev",)),
    KindInfo("ControllerRevision", "apps/v1", "controllerrevisions", True, False, ()),
    KindInfo("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", True, False, ()),
    KindInfo("Ingress", "networking.k8s.io/v1", "ingresses", True, True, ("ing",)),
    KindInfo("IngressClass", "networking.k8s.io/v1", "ingressclasses", False, False, ()),
    KindInfo("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", True, False, ("netpol",)),
    KindInfo("Role", "rbac.authorization.k8s.io/v1", "roles", True, False, ()),
    KindInfo("RoleBinding", "rbac.authorization.k8s.io/v1", "rolebindings", True, False, ()),
    KindInfo("ClusterRole", "rbac.authorization.k8s.io/v1", "clusterroles", False, False, ()),
    KindInfo("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "clusterrolebindings", False, False, ()),
    KindInfo("PodDisruptionBudget", "policy/v1", "poddisruptionbudgets", True, True, ("pdb",)),
    KindInfo("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers", True, True, ("hpa",)),
    KindInfo("PriorityClass", "scheduling.k8s.io/v1", "priorityclasses", False, False, ("pc",)),
    KindInfo("StorageClass", "storage.k8s.io/v1", "storageclasses", False, False, ("sc",)),
    KindInfo(
        "CustomResourceDefinition",
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        False,
        True,
        ("crd", "crds"),
    ),
    # Multus' network attachments, which Spiderpool's multi-interface examples create
    KindInfo(
        "NetworkAttachmentDefinition",
        "k8s.cni.cncf.io/v1",
        "network-attachment-definitions",
        True,
        False,
        ("net-attach-def",),
    ),
)

KINDS: tuple[KindInfo, ...] = (
    KindInfo("SpiderIPPool", SPIDER_API, "spiderippools", False, True, ("sp",)),
    KindInfo("SpiderSubnet", SPIDER_API, "spidersubnets", False, True, ("ss",)),
    KindInfo("SpiderReservedIP", SPIDER_API, "spiderreservedips", False, False, ("sr",)),
    # SpiderEndpoint keeps everything in status but has no status subresource (Spiderpool writes it with Update).
    KindInfo("SpiderEndpoint", SPIDER_API, "spiderendpoints", True, False, ("se",)),
    # a node's claim on an aligned block of a pool with spiderbgp.io/block-size (ipam.blocks)
    KindInfo("SpiderIPBlock", "spiderbgp.io/v1alpha1", "spideripblocks", False, True, ("sib",)),
    KindInfo("Pod", "v1", "pods", True, True, ("po",)),
    KindInfo("Namespace", "v1", "namespaces", False, True, ("ns",)),
    KindInfo("Node", "v1", "nodes", False, True, ("no",)),
    KindInfo("Deployment", "apps/v1", "deployments", True, True, ("deploy",)),
    KindInfo("ReplicaSet", "apps/v1", "replicasets", True, True, ("rs",)),
    KindInfo("StatefulSet", "apps/v1", "statefulsets", True, True, ("sts",)),
    KindInfo("DaemonSet", "apps/v1", "daemonsets", True, True, ("ds",)),
    KindInfo("Job", "batch/v1", "jobs", True, True, ()),
    KindInfo("CronJob", "batch/v1", "cronjobs", True, True, ("cj",)),
    KindInfo("Lease", "coordination.k8s.io/v1", "leases", True, False, ()),
    # Kinds nothing here acts on, stored as the API server stores them, so manifests that carry them
    # (Spiderpool's examples: a Service beside a StatefulSet, RBAC and Multus objects) apply unchanged.
    *GENERIC_KINDS,
)

_BY_NAME: dict[str, KindInfo] = {}
for _info in KINDS:
    for _alias in (_info.kind, _info.kind.lower(), _info.plural, _info.plural[:-1], *_info.short_names):
        _BY_NAME[_alias.lower()] = _info


def kind_info(kind: str) -> KindInfo:
    """The KindInfo of an exact kind name (``SpiderIPPool``); KeyError names the kind otherwise."""
    info = _BY_NAME.get(kind.lower())
    if info is None or info.kind != kind:
        raise KeyError(f"unknown kind {kind!r}")
    return info


def resolve_kind(name: str) -> KindInfo:
    """What kubectl accepts on its command line: kind, plural, singular or short name, any case."""
    info = _BY_NAME.get(name.lower())
    if info is None:
        known = ", ".join(sorted({i.kind for i in KINDS}))
        raise KeyError(f'unknown resource type "{name}" (known: {known})')
    return info
