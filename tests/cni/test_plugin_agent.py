"""The rendered plugin file, run as a subprocess (``python -I -S``), against the agent's real backend
(IpamBackend over IpamService over SqliteStore) on a unix socket."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from ipam.store.sqlite import SqliteStore
from tests.cni.conftest import Agent, Plugin, cni_env, netconf, pod_env, records, write_lock


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_result_in_every_version(plugin: Plugin, agent: Agent, version: str) -> None:
    res = plugin.run(pod_env(agent, "ADD"), netconf(agent.socket_path, version))
    assert res.rc == 0, res
    out = res.json
    assert out["cniVersion"] == version
    ip = out["ips"][0]
    assert ip["address"] == "10.244.100.10/24" and ip["gateway"] == "10.244.100.1"
    if version.startswith("0."):
        assert ip["version"] == "4"
    else:
        assert "version" not in ip
    assert "interface" not in ip and "interfaces" not in out
    assert out["routes"] == [
        {"dst": "10.99.0.0/16", "gw": "10.244.100.1"},
        {"dst": "0.0.0.0/0", "gw": "10.244.100.1"},
    ]
    # the record is durable and names the pod and the UID the store gave it; the announcer was told
    (record,) = agent.store.records("pool4")
    assert (record.ip, record.pod, record.pod_uid) == (
        "10.244.100.10",
        "default/pod-c1",
        agent.cluster.uid("pod-c1"),
    )
    assert agent.events.added == [{"10.244.100.10": "10.244.100.0/24"}]


def test_dual_stack_clean_gateway_and_pool_prefix(plugin: Plugin, agent: Agent) -> None:
    conf = netconf(
        agent.socket_path,
        "0.4.0",
        default_ipv4_ippool=["pool4"],
        default_ipv6_ippool=["pool6"],
        clean_gateway=True,
    )
    out = plugin.run(pod_env(agent, "ADD"), conf).json
    # Spiderpool keeps each address's gateway and drops only the default routes (cleanGateway)
    assert out["ips"] == [
        {"version": "4", "address": "10.244.100.10/24", "gateway": "10.244.100.1"},
        {"version": "6", "address": "fd00:244::10/64", "gateway": "fd00:244::1"},
    ]
    assert out["routes"] == [{"dst": "10.99.0.0/16", "gw": "10.244.100.1"}]
    assert agent.events.added == [{"10.244.100.10": "10.244.100.0/24", "fd00:244::10": "fd00:244::/64"}]


def test_repeated_add_same_ip_then_del_idempotent(plugin: Plugin, agent: Agent) -> None:
    conf = netconf(agent.socket_path)
    first = plugin.run(pod_env(agent, "ADD", "c1"), conf).json["ips"]
    assert plugin.run(pod_env(agent, "ADD", "c1"), conf).json["ips"] == first
    assert plugin.run(pod_env(agent, "ADD", "c2"), conf).json["ips"][0]["address"] == "10.244.100.11/24"
    uid = agent.cluster.uid("pod-c1")
    # DEL while the pod is alive keeps its IP for the next sandbox (Spiderpool's semantics)
    res = plugin.run(cni_env("DEL", "c1", uid=uid), conf)
    assert (res.rc, res.stdout) == (0, ""), res
    assert agent.cluster.ips("pool4") == ["10.244.100.10", "10.244.100.11"] and agent.events.removed == []
    # once the pod is gone, DEL (naming its UID) releases; a second DEL is a no-op
    agent.cluster.delete_pod("pod-c1")
    for _ in range(2):
        res = plugin.run(cni_env("DEL", "c1", uid=uid), conf)
        assert (res.rc, res.stdout) == (0, ""), res
    assert agent.cluster.ips("pool4") == ["10.244.100.11"]
    assert agent.events.removed == [["10.244.100.10"]]
    # DEL of something never added, without CNI_NETNS or CNI_ARGS, succeeds too
    env = cni_env("DEL", "never-added")
    del env["CNI_NETNS"], env["CNI_ARGS"]
    assert plugin.run(env, conf).rc == 0
    assert plugin.run(pod_env(agent, "ADD", "c3"), conf).json["ips"][0]["address"] == "10.244.100.10/24"


def test_ippools_first_add_allocates_every_nic_and_del_releases_them(plugin: Plugin, agent: Agent) -> None:
    annotations = {
        "ipam.spidernet.io/ippools": json.dumps(
            [{"interface": "eth0", "ipv4": ["pool4"]}, {"interface": "net1", "ipv6": ["pool6"]}]
        )
    }
    uid = agent.cluster.pod("multi", annotations=annotations)
    conf = netconf(agent.socket_path)
    eth0 = plugin.run(cni_env("ADD", "ctr", "eth0", uid=uid, pod="multi"), conf).json
    assert [ip["address"] for ip in eth0["ips"]] == ["10.244.100.10/24"]
    # net1's address was taken by eth0's ADD, in the same commit
    assert records(agent.store, ["pool4", "pool6"]) == [
        ("10.244.100.10", "default/multi"),
        ("fd00:244::10", "default/multi"),
    ]
    net1 = plugin.run(cni_env("ADD", "ctr", "net1", uid=uid, pod="multi"), conf).json
    assert [ip["address"] for ip in net1["ips"]] == ["fd00:244::10/64"]
    agent.cluster.delete_pod("multi")
    res = plugin.run(cni_env("DEL", "ctr", "eth0", uid=uid, pod="multi"), conf)
    assert (res.rc, res.stdout) == (0, ""), res
    assert records(agent.store, ["pool4", "pool6"]) == []
    assert plugin.run(cni_env("DEL", "ctr", "net1", uid=uid, pod="multi"), conf).rc == 0


def test_add_with_prev_result_keeps_it(plugin: Plugin, agent: Agent) -> None:
    conf = netconf(agent.socket_path, "1.0.0")
    conf["prevResult"] = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [],
        "dns": {"nameservers": ["1.1.1.1"]},
    }
    out = plugin.run(pod_env(agent, "ADD"), conf).json
    assert out["interfaces"] == [{"name": "eth0", "sandbox": "/x"}] and out["dns"] == {
        "nameservers": ["1.1.1.1"]
    }
    assert out["ips"] == [{"address": "10.244.100.10/24", "gateway": "10.244.100.1"}]


def test_exhausted_pool_is_code_100_and_status_50(plugin: Plugin, agent: Agent) -> None:
    conf = netconf(agent.socket_path, default_ipv4_ippool=["tiny"])
    assert plugin.run(pod_env(agent, "ADD", "a"), conf).rc == 0
    assert plugin.run(pod_env(agent, "STATUS"), conf).rc == 1
    res = plugin.run(pod_env(agent, "ADD", "b"), conf)
    assert res.rc == 1 and res.json["code"] == 100 and "tiny" in res.json["details"]
    status = plugin.run({"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"}, conf)
    assert status.rc == 1 and status.json["code"] == 50, status
    uid = agent.cluster.uid("pod-a")
    agent.cluster.delete_pod("pod-a")
    assert plugin.run(cni_env("DEL", "a", uid=uid), conf).rc == 0
    assert plugin.run({"CNI_COMMAND": "STATUS"}, conf).rc == 0
    assert plugin.run(pod_env(agent, "ADD", "b"), conf).json["ips"][0]["address"] == "10.245.0.5/24"


def test_unknown_pool_is_plugin_code(plugin: Plugin, agent: Agent) -> None:
    res = plugin.run(pod_env(agent, "ADD"), netconf(agent.socket_path, default_ipv4_ippool=["nope"]))
    assert res.rc == 1 and res.json["code"] == 102 and "nope" in res.json["details"], res
    assert "Traceback" not in res.stdout + res.stderr
    assert agent.store.records("pool4") == [] and agent.store.list("SpiderEndpoint") == []


def test_check_matches_agent_record(plugin: Plugin, agent: Agent) -> None:
    conf = netconf(agent.socket_path, "0.4.0")
    added = plugin.run(pod_env(agent, "ADD"), conf).json
    conf["prevResult"] = added
    res = plugin.run(pod_env(agent, "CHECK"), conf)
    assert (res.rc, res.stdout) == (0, ""), res
    conf["prevResult"] = {**added, "ips": [{"version": "4", "address": "10.244.100.99/24"}]}
    res = plugin.run(pod_env(agent, "CHECK"), conf)
    assert res.rc == 1 and res.json["code"] == 103 and "10.244.100.99" in res.json["details"]
    del conf["prevResult"]
    assert plugin.run(pod_env(agent, "CHECK"), conf).json["code"] == 7
    conf["prevResult"] = added
    res = plugin.run(pod_env(agent, "CHECK", "other"), conf)  # a container that holds nothing
    assert res.rc == 1 and res.json["code"] == 103 and "no allocation" in res.json["details"]


def test_gc_releases_only_stale_attachments(plugin: Plugin, agent: Agent) -> None:
    conf = netconf(agent.socket_path)
    for c in ("keep", "alive", "gone"):
        assert plugin.run(pod_env(agent, "ADD", c), conf).rc == 0
    agent.cluster.delete_pod("pod-gone")
    conf["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "eth0"}]
    res = plugin.run({"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}, conf)
    assert (res.rc, res.stdout) == (0, ""), res
    # the live pod keeps its IP as on DEL; only the gone pod's attachment is released
    assert [r.pod for r in agent.store.records("pool4")] == ["default/pod-keep", "default/pod-alive"]
    assert agent.events.removed == [["10.244.100.12"]]
    # GC of another network touches nothing
    res = plugin.run(
        {"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"},
        {**conf, "name": "other", "cni.dev/valid-attachments": []},
    )
    assert res.rc == 0 and len(agent.store.records("pool4")) == 2


@pytest.mark.parametrize(("command", "version"), [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "1.0.0")])
def test_version_gates(plugin: Plugin, agent: Agent, command: str, version: str) -> None:
    conf = netconf(agent.socket_path, version)
    conf["prevResult"] = {"ips": []}
    conf["cni.dev/valid-attachments"] = []
    res = plugin.run(cni_env(command), conf)
    assert res.rc == 1 and res.json["code"] == 1 and command in res.json["details"]
    assert agent.observed == []


def test_agent_down_no_socket(plugin: Plugin, tmp_path: Path) -> None:
    conf = netconf(tmp_path / "missing.sock")
    for command, code in (("ADD", 11), ("DEL", 11), ("CHECK", 11), ("STATUS", 50)):
        conf["prevResult"] = {"ips": []}
        res = plugin.run(cni_env(command), conf)
        assert res.rc == 1 and res.json["code"] == code, res
        assert "missing.sock" in res.json["details"] and "does not exist" in res.json["details"]


def test_stale_socket_nobody_listening(plugin: Plugin, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    path.chmod(0o600)
    res = plugin.run(cni_env("ADD"), netconf(path))
    assert res.json["code"] == 11 and "cannot talk to the agent" in res.json["details"]


def test_socket_with_wrong_mode_or_kind_is_refused(plugin: Plugin, agent: Agent, tmp_path: Path) -> None:
    env = pod_env(agent, "ADD")
    os.chmod(agent.socket_path, 0o666)
    res = plugin.run(env, netconf(agent.socket_path))
    assert (
        res.json["code"] == 11
        and "mode 0666" in res.json["details"]
        and str(agent.socket_path) in res.json["details"]
    )
    os.chmod(agent.socket_path, 0o600)
    if os.geteuid() == 0:
        os.chown(agent.socket_path, 1234, -1)
        res = plugin.run(env, netconf(agent.socket_path))
        assert res.json["code"] == 11 and "owned by uid 1234" in res.json["details"]
        os.chown(agent.socket_path, 0, -1)
    regular = tmp_path / "regular"
    regular.write_text("")
    regular.chmod(0o600)
    assert "not a unix socket" in plugin.run(env, netconf(regular)).json["details"]
    assert agent.observed == []
    assert plugin.run(env, netconf(agent.socket_path)).rc == 0


def test_agent_stuck_on_a_locked_store_times_out_with_code_11(
    plugin: Plugin, agent: Agent, store: SqliteStore
) -> None:
    """Another writer holds the database: the agent's commit waits (busy timeout 10 s), the plugin gives
    up after its netconf timeout with 'try again later'; the late ADD completes, and the runtime's retry
    gets the same IP."""
    env = pod_env(agent, "ADD")
    with write_lock(store):
        res = plugin.run(env, netconf(agent.socket_path, timeout=0.3))
        assert res.json["code"] == 11 and "no answer within 0.3s" in res.json["details"], res
        assert store.records("pool4") == []
    retry = plugin.run(env, netconf(agent.socket_path))
    assert retry.rc == 0 and retry.json["ips"][0]["address"] == "10.244.100.10/24"
    assert agent.cluster.ips("pool4") == ["10.244.100.10"]


def test_metrics_observer_sees_every_call(plugin: Plugin, agent: Agent) -> None:
    assert plugin.run(pod_env(agent, "ADD"), netconf(agent.socket_path)).rc == 0
    assert agent.operations == [("add", 0)]
    plugin.run(pod_env(agent, "ADD", "x"), netconf(agent.socket_path, default_ipv4_ippool=["nope"]))
    assert agent.operations[-1] == ("add", 102)


def test_logs_go_to_the_log_file_never_stdout(plugin: Plugin, agent: Agent, tmp_path: Path) -> None:
    log = tmp_path / "plugin.log"
    res = plugin.run(
        pod_env(agent, "ADD"), netconf(agent.socket_path, log_level="debug", log_file_path=str(log))
    )
    assert res.rc == 0 and res.stderr == ""
    text = log.read_text()
    assert "DEBUG" in text and "ADD default/pod-c1 eth0" in text
