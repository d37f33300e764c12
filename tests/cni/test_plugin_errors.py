"""Error paths through the whole chain: rendered plugin -> socket -> IpamBackend -> IpamService -> SQLite.

Each failure a user or the cluster can cause comes back as one CNI error object: the code the runtime
acts on, a ``details`` line that names the pod and the pool, field or annotation at fault, no
traceback, and nothing written to the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipam.store.sqlite import SqliteStore
from tests.cni.conftest import Agent, Plugin, Result, cni_env, netconf, pod_env, write_lock

ELSEWHERE = """\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: elsewhere}
spec: {subnet: 10.246.0.0/24, ips: [10.246.0.5-10.246.0.6], nodeName: [node9]}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: tiny2}
spec: {subnet: 10.247.0.0/24, ips: [10.247.0.5]}
"""


def state(store: SqliteStore) -> dict[str, Any]:
    """Every allocation record and endpoint: equal before and after means nothing was written."""
    pools = [p["metadata"]["name"] for p in store.list("SpiderIPPool")]
    return {
        "records": {p: store.records(p) for p in pools},
        "endpoints": store.list("SpiderEndpoint"),
        "versions": {p: store.usage(p).resource_version for p in pools},
    }


def error(res: Result) -> dict[str, Any]:
    assert res.rc == 1, res
    assert "Traceback" not in res.stdout + res.stderr
    body: dict[str, Any] = res.json
    assert set(body) == {"cniVersion", "code", "msg", "details"}
    assert "\n" not in body["details"] and body["msg"]
    return body


def test_pod_missing_from_the_store_is_101(plugin: Plugin, agent: Agent) -> None:
    before = state(agent.store)
    body = error(plugin.run(cni_env("ADD", "c1", uid="0b7c"), netconf(agent.socket_path)))
    assert body["code"] == 101 and body["msg"] == "pod not found"
    assert body["details"] == "pod default/pod-c1 not found in the store"
    assert state(agent.store) == before and agent.events.added == []
    assert agent.operations == [("add", 101)]
    # once the kubelet's pod is in the store, the runtime's retry succeeds
    assert plugin.run(pod_env(agent, "ADD", "c1"), netconf(agent.socket_path)).rc == 0


def test_pod_recreated_under_a_new_uid_is_try_again(plugin: Plugin, agent: Agent) -> None:
    old = agent.cluster.pod("pod-c1")
    agent.cluster.delete_pod("pod-c1")
    new = agent.cluster.pod("pod-c1")
    body = error(plugin.run(cni_env("ADD", "c1", uid=old), netconf(agent.socket_path)))
    assert body["code"] == 11 and old in body["details"] and new in body["details"]
    assert agent.store.list("SpiderEndpoint") == []


def test_exhausted_pools_are_100_naming_every_pool(plugin: Plugin, agent: Agent) -> None:
    agent.cluster.apply(ELSEWHERE)
    conf = netconf(agent.socket_path, default_ipv4_ippool=["tiny", "tiny2"])
    assert plugin.run(pod_env(agent, "ADD", "a"), conf).json["ips"][0]["address"] == "10.245.0.5/24"
    assert plugin.run(pod_env(agent, "ADD", "b"), conf).json["ips"][0]["address"] == "10.247.0.5/24"
    env = pod_env(agent, "ADD", "c")
    before = state(agent.store)
    body = error(plugin.run(env, conf))
    assert body["code"] == 100 and body["msg"] == "no IP available"
    assert "pool tiny: all IP addresses used out" in body["details"]
    assert "pool tiny2: all IP addresses used out" in body["details"]
    assert state(agent.store) == before


def test_no_candidate_pool_is_102_naming_the_filter(plugin: Plugin, agent: Agent) -> None:
    agent.cluster.apply(ELSEWHERE)
    agent.cluster.pod("pod-c1", annotations={"ipam.spidernet.io/ippool": '{"ipv4": ["elsewhere"]}'})
    before = state(agent.store)
    body = error(plugin.run(pod_env(agent, "ADD", "c1"), netconf(agent.socket_path)))
    assert body["code"] == 102 and body["msg"] == "no eligible IP pool"
    assert body["details"].startswith('Pod "default/pod-c1": no IPv4 IPPool available for eth0')
    assert "pool elsewhere: node node1 not in nodeName" in body["details"]
    assert state(agent.store) == before


@pytest.mark.parametrize(
    ("annotation", "value", "reason"),
    [
        ("ipam.spidernet.io/ippool", "{not json", "invalid JSON"),
        ("ipam.spidernet.io/ippool", '{"ipv4": "pool4"}', 'ipv4: expected a list of names, got "pool4"'),
        (
            "ipam.spidernet.io/ippools",
            '[{"interface": "eth0", "ipv4": ["pool4"]}, {"interface": "eth0"}]',
            "duplicate interface eth0",
        ),
    ],
)
def test_bad_pod_annotation_is_one_line_naming_pod_and_annotation(
    plugin: Plugin, agent: Agent, annotation: str, value: str, reason: str
) -> None:
    agent.cluster.pod("pod-c1", annotations={annotation: value})
    before = state(agent.store)
    body = error(plugin.run(pod_env(agent, "ADD", "c1"), netconf(agent.socket_path)))
    assert body["code"] == 102
    assert body["details"].startswith(f'Pod "default/pod-c1": metadata.annotations[{annotation}]: ')
    assert reason in body["details"]
    assert state(agent.store) == before


@pytest.fixture
def locked_agent(tmp_path: Path, store: SqliteStore) -> Iterator[Agent]:
    """An agent whose store waits at most 0.3 s for another writer's lock."""
    impatient = SqliteStore(store.path, busy_timeout=0.3)
    a = Agent(tmp_path / "locked" / "agent.sock", impatient)
    a.start()
    try:
        yield a
    finally:
        a.stop()
        impatient.close()


def test_store_unavailable_is_try_again_and_writes_nothing(
    plugin: Plugin, locked_agent: Agent, store: SqliteStore
) -> None:
    env = pod_env(locked_agent, "ADD")
    conf = netconf(locked_agent.socket_path)
    with write_lock(store):
        body = error(plugin.run(env, conf))
        assert body["code"] == 11 and body["msg"] == "object store unavailable"
        assert str(store.path) in body["details"] and "locked by another writer" in body["details"]
    assert store.records("pool4") == [] and store.list("SpiderEndpoint") == []
    assert locked_agent.operations == [("add", 11)]
    assert plugin.run(env, conf).json["ips"][0]["address"] == "10.244.100.10/24"


def test_store_closed_is_try_again_for_every_command(
    plugin: Plugin, locked_agent: Agent, store: SqliteStore
) -> None:
    conf = netconf(locked_agent.socket_path, "1.1.0")
    env = pod_env(locked_agent, "ADD")
    added = plugin.run(env, conf).json
    uid = locked_agent.cluster.uid("pod-c1")
    locked_agent.store.close()  # the agent's store is gone (database closed under it)
    assert error(plugin.run(env, conf))["code"] == 11
    assert error(plugin.run(cni_env("DEL", uid=uid), conf))["code"] == 11
    assert error(plugin.run(cni_env("CHECK", uid=uid), {**conf, "prevResult": added}))["code"] == 11
    gc = {**conf, "cni.dev/valid-attachments": []}
    assert error(plugin.run({"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}, gc))["code"] == 11
    assert [r.ip for r in store.records("pool4")] == ["10.244.100.10"]
