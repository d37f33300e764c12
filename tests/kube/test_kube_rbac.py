"""Authorization: the emulator answers as kube-apiserver's RBAC authorizer does, from the roles in
configs/kubernetes/rbac.yaml, so a write the agent does without a grant fails here as on a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ipam.admin import finish_terminating
from ipam.block_claims import list_blocks
from ipam.blocks import block_object
from ipam.errors import StoreError
from ipam.kinds import kind_info
from ipam.model import FINALIZER, IPPool
from ipam.ranges import ip_to_int
from ipam.records import Claim, IPRecord
from ipam.store.kube import KubeStore
from ipam.store.kube_api import resource_path
from spiderbgp.node_condition import with_network_condition
from tests.kube.emulator.manifests import agent_user, base_objects
from tests.kube.emulator.rbac import ANONYMOUS, Attributes, Authorizer, User, forbidden_message
from tests.kube_emulator import KubeEmulator

SPIDER = "spiderpool.spidernet.io/v2beta1"
Obj = dict[str, Any]


def subnet(name: str) -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderSubnet",
        "metadata": {"name": name, "finalizers": [FINALIZER]},
        "spec": {"subnet": "10.7.0.0/24", "ips": ["10.7.0.10-10.7.0.20"]},
    }


def http(
    emulator: KubeEmulator, method: str, path: str, token: str | None, body: Obj | None = None
) -> tuple[int, Any]:
    return emulator.call(method, path, body, token=token or "")


def test_the_leader_finishes_a_terminating_subnet_as_the_agent(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """The production bug: the finalizer of a deleted SpiderSubnet is removed with a PUT on
    spidersubnets, which rbac.yaml did not grant (the subnet stayed terminating forever)."""
    admin = store_factory(token=kube_emulator.admin_token)
    agent = store_factory(token=kube_emulator.agent_token)
    admin.create(subnet("s1"))
    admin.delete("SpiderSubnet", "s1")
    assert kube_emulator.stored("SpiderSubnet", "s1") is not None  # terminating, held by the finalizer
    assert finish_terminating(agent, "SpiderSubnet", "s1") is True
    assert kube_emulator.stored("SpiderSubnet", "s1") is None


def test_a_write_without_a_grant_is_the_api_servers_403(kube_emulator: KubeEmulator) -> None:
    path = resource_path(kind_info("SpiderSubnet"))
    code, created = http(kube_emulator, "POST", path, kube_emulator.admin_token, subnet("s1"))
    assert code == 201
    code, body = http(kube_emulator, "PUT", f"{path}/s1", kube_emulator.agent_token, created)
    assert code == 200  # granted by rbac.yaml
    code, body = http(kube_emulator, "DELETE", f"{path}/s1", kube_emulator.agent_token)
    assert code == 403
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'spidersubnets.spiderpool.spidernet.io "s1" is forbidden: User '
        '"system:serviceaccount:kube-system:spiderbgp" cannot delete resource "spidersubnets" '
        'in API group "spiderpool.spidernet.io" at the cluster scope',
        "reason": "Forbidden",
        "details": {"name": "s1", "group": "spiderpool.spidernet.io", "kind": "spidersubnets"},
        "code": 403,
    }
    assert kube_emulator.stored("SpiderSubnet", "s1") is not None


def test_the_store_names_the_refusal_in_one_line(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    agent = store_factory(token=kube_emulator.agent_token)
    with pytest.raises(StoreError) as err:
        agent.create(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "default"}, "spec": {}}
        )
    assert 'cannot create resource "pods" in API group "" in the namespace "default"' in str(err.value)
    assert "\n" not in str(err.value)


def test_anonymous_is_forbidden_and_a_bad_token_unauthorized(kube_emulator: KubeEmulator) -> None:
    path = resource_path(kind_info("Pod"), "default")
    code, body = http(kube_emulator, "GET", path, None)
    assert (code, body["reason"]) == (403, "Forbidden")
    assert body["message"] == (
        'pods is forbidden: User "system:anonymous" cannot list resource "pods" in API group "" '
        'in the namespace "default"'
    )
    code, body = http(kube_emulator, "GET", path, "not-a-token")
    assert (code, body["reason"], body["message"]) == (401, "Unauthorized", "Unauthorized")


def _can(
    auth: Authorizer,
    user: User,
    verb: str,
    resource: str,
    namespace: str = "",
    name: str = "",
    group: str = "",
) -> bool:
    sub = ""
    if "/" in resource:
        resource, sub = resource.split("/", 1)
    return auth.allows(Attributes(user, verb, group, resource, sub, namespace, name))


def test_role_bindings_hold_in_their_namespace_and_resource_names_limit_by_name() -> None:
    auth = Authorizer(base_objects())
    agent = agent_user()
    lease = "coordination.k8s.io"
    assert _can(auth, agent, "create", "leases", "kube-system", group=lease)
    assert not _can(auth, agent, "create", "leases", "default", group=lease)  # a Role, not a ClusterRole
    assert _can(auth, agent, "update", "leases", "kube-system", "spiderbgp-controller", lease)
    assert not _can(auth, agent, "update", "leases", "kube-system", "other", lease)
    assert not _can(auth, agent, "list", "leases", "kube-system", group=lease)  # a name rule lists nothing
    spider = "spiderpool.spidernet.io"
    assert _can(auth, agent, "update", "spiderippools/status", name="p", group=spider)
    assert not _can(auth, agent, "update", "spiderreservedips", name="r", group=spider)
    assert not _can(auth, ANONYMOUS, "get", "pods", "default", "p")
    assert _can(auth, User("root", ("system:masters",)), "delete", "nodes", name="n1")


def test_forbidden_message_names_subresource_and_scope() -> None:
    a = Attributes(agent_user(), "update", "spiderpool.spidernet.io", "spiderippools", "status", "", "p1")
    assert forbidden_message(a) == (
        'spiderippools.spiderpool.spidernet.io "p1" is forbidden: User '
        '"system:serviceaccount:kube-system:spiderbgp" cannot update resource "spiderippools/status" '
        'in API group "spiderpool.spidernet.io" at the cluster scope'
    )


def test_the_agent_writes_its_nodes_network_condition(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """bgp.nodeCondition (on by default): the agent writes NetworkUnavailable into its Node's status,
    a PUT on nodes/status, which rbac.yaml did not grant either."""
    kube_emulator.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}, "status": {}})
    agent = store_factory(token=kube_emulator.agent_token)
    new = with_network_condition(
        agent.get("Node", "node1"), unavailable=False, message="BGP converged", now="2026-01-01T00:00:00Z"
    )
    assert new is not None
    agent.update_status(new)
    stored = kube_emulator.stored("Node", "node1")
    assert stored is not None
    assert [c["type"] for c in stored["status"]["conditions"]] == ["NetworkUnavailable"]
    with pytest.raises(StoreError, match="forbidden"):
        agent.update(new)  # the Node itself stays read-only


def test_the_agent_claims_writes_and_returns_allocation_blocks(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """SpiderIPBlock (issue 15): a node creates the block it claims and writes its records into the
    block's status, the leader deletes an empty one, all as the DaemonSet's ServiceAccount."""
    admin = store_factory(token=kube_emulator.admin_token)
    agent = store_factory(token=kube_emulator.agent_token)
    pool = admin.create(
        {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderIPPool",
            "metadata": {"name": "bp", "annotations": {"spiderbgp.io/block-size": "29"}},
            "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.30"]},
        }
    )
    block = agent.create(block_object(IPPool.from_obj(pool), ip_to_int("10.0.0.8", 4), 29, "node1"))
    assert [b.cidr for b in list_blocks(agent)] == ["10.0.0.8/29"]
    version = agent.usage("bp").resource_version
    agent.commit(claims=[Claim("bp", version, "10.0.0.9", "default/a", "u")])  # a status PUT of the block
    assert agent.get("SpiderIPBlock", block["metadata"]["name"])["status"]["allocatedIPCount"] == 1
    agent.commit(releases=[IPRecord("bp", "10.0.0.9", "default/a", "u")])
    agent.delete("SpiderIPBlock", block["metadata"]["name"])
    assert list_blocks(agent) == []
