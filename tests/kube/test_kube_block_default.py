"""The agent's default block size on a cluster (issue 15): the agent writes the annotation onto a
SpiderIPPool with a PUT of the pool, as its ServiceAccount, which configs/kubernetes/rbac.yaml must grant
(update on spiderippools); kubectl then shows the pool annotated.  The pool is created by an admin, as
users do, so only the agent's own grants are in play."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ipam.block_default import BlockSizeDefaults, stamp_default_block_size
from ipam.errors import StoreError
from ipam.store.kube import KubeStore
from tests.kube.emulator.manifests import base_objects, cluster_actor_objects
from tests.kube_emulator import KubeEmulator

POOL = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderIPPool",
    "metadata": {"name": "p"},
    "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.30"]},
}


def test_the_agent_stamps_the_default_onto_a_pool_as_its_service_account(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    admin = store_factory(token=kube_emulator.admin_token)
    agent = store_factory(token=kube_emulator.agent_token)
    admin.create(POOL)
    stamped = stamp_default_block_size(
        agent, agent.get("SpiderIPPool", "p", allocated_ips=False), BlockSizeDefaults(ipv4=26)
    )
    assert stamped["metadata"]["annotations"] == {"spiderbgp.io/block-size": "26"}
    stored = kube_emulator.stored("SpiderIPPool", "p")
    assert stored is not None and stored["metadata"]["annotations"] == {"spiderbgp.io/block-size": "26"}


def test_without_the_update_grant_the_stamp_is_forbidden() -> None:
    """The grant is what makes the stamp work: with rbac.yaml's rule on spiderippools lacking
    ``update``, the agent's stamp is the API server's 403 and the pool stays as it was."""
    objects = base_objects() + cluster_actor_objects()
    rules = [
        rule
        for obj in objects
        if obj["kind"] == "ClusterRole" and obj["metadata"]["name"] == "spiderbgp"
        for rule in obj["rules"]
        if rule["resources"] == ["spiderippools"]
    ]
    assert len(rules) == 1 and "update" in rules[0]["verbs"]
    rules[0]["verbs"].remove("update")
    with KubeEmulator(rbac=objects) as emulator:
        admin = KubeStore.connect(emulator.configuration(emulator.admin_token))
        agent = KubeStore.connect(emulator.configuration(emulator.agent_token))
        try:
            admin.create(POOL)
            with pytest.raises(StoreError, match="forbidden"):
                stamp_default_block_size(
                    agent, agent.get("SpiderIPPool", "p", allocated_ips=False), BlockSizeDefaults(ipv4=26)
                )
        finally:
            admin.close()
            agent.close()
        stored = emulator.stored("SpiderIPPool", "p")
        assert stored is not None and "annotations" not in stored["metadata"]
