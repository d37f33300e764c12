"""One agent process serving: socket modes, health/readiness/metrics, ADD/DEL through the installed
plugin file, the CLI's views of what it did, and a clean SIGTERM exit."""

from __future__ import annotations

import stat
from pathlib import Path

import yaml

from spiderbgp.agent_client import AgentClient
from tests.agent.conftest import (
    POOL,
    AgentFactory,
    Plugin,
    added_ip,
    cli,
    eventually,
    namespace_doc,
    pod_doc,
    pool_doc,
)


def test_serve_add_del_metrics_and_views(
    tmp_path: Path, db: Path, agents: AgentFactory, plugin: Plugin
) -> None:
    objects = tmp_path / "objects.yaml"
    objects.write_text(
        yaml.safe_dump_all([namespace_doc(), pool_doc(), pod_doc("web-0"), pod_doc("web-1")], sort_keys=False)
    )
    applied = cli(db, "apply", "-f", str(objects))
    assert applied.rc == 0, applied.stderr
    uid = cli(db, "get", "pod", "web-0", "-o", "json").json["metadata"]["uid"]

    agent = agents("node1")
    # the socket: directory 0700, socket 0600, both created by the agent
    assert stat.S_IMODE(agent.socket_path.parent.stat().st_mode) == 0o700
    sock_mode = agent.socket_path.stat().st_mode
    assert stat.S_ISSOCK(sock_mode) and stat.S_IMODE(sock_mode) == 0o600

    # health, readiness (TCP and the socket), metrics
    assert agent.http("/healthz") == (200, "ok\n")
    assert agent.http("/readyz") == (200, "ok\n")
    client = AgentClient(str(agent.socket_path))
    assert client.get_json("/readyz")["status"] == "ok"
    assert client.get_json("/healthz")["status"] == "ok"
    eventually(lambda: agent.leader_metric() == 1, 5.0, "the only agent takes the Lease")
    before = agent.metrics()
    assert before["spiderbgp_ipam_allocations_total"] == 0
    assert before["spiderbgp_ipam_releases_total"] == 0
    assert before[f'spiderbgp_ipam_pool_allocated_ips{{pool="{POOL}"}}'] == 0
    assert any(name.startswith("spiderbgp_ipam_store_conflicts") for name in before)

    # ADD through the installed plugin: the pool's first IP with the pool's prefix and gateway
    res = plugin.add(agent.socket_path, "web-0", uid)
    assert res.rc == 0, res
    assert res.json["ips"] == [{"address": "10.244.100.10/16", "gateway": "10.244.0.1"}]
    assert res.json["cniVersion"] == "1.0.0"
    again = plugin.add(agent.socket_path, "web-0", uid)
    assert again.json["ips"] == res.json["ips"], "repeated ADD must give the same IP"
    uid1 = cli(db, "get", "pod", "web-1", "-o", "json").json["metadata"]["uid"]
    assert added_ip(plugin.add(agent.socket_path, "web-1", uid1)) == "10.244.100.11"

    endpoints = cli(db, "get", "se")
    assert endpoints.rc == 0, endpoints.stderr
    rows = {line.split()[0]: line.split() for line in endpoints.stdout.splitlines()[1:]}
    assert rows["web-0"][1:4] == ["eth0", POOL, "10.244.100.10/16"] and rows["web-0"][-1] == "node1"
    assert rows["web-1"][3] == "10.244.100.11/16"
    pools = cli(db, "get", "sp").stdout.splitlines()
    assert pools[1].split()[:4] == [POOL, "4", "10.244.0.0/16", "2"], pools

    after = agent.metrics()
    assert after["spiderbgp_ipam_allocations_total"] == 3  # new, repeated, new
    assert after['spiderbgp_ipam_request_seconds_count{operation="add"}'] == 3
    assert after[f'spiderbgp_ipam_pool_allocated_ips{{pool="{POOL}"}}'] == 2
    assert after[f'spiderbgp_ipam_pool_total_ips{{pool="{POOL}"}}'] == 241

    # an ADD for a pod the store does not know: the plugin's code 101, counted as an error, no record
    missing = plugin.add(agent.socket_path, "ghost")
    assert missing.rc != 0 and missing.json["code"] == 101 and "ghost" in missing.json["details"]
    assert "Traceback" not in missing.stdout + missing.stderr
    errors = agent.metrics()
    assert errors['spiderbgp_ipam_errors_total{operation="add"}'] == 1
    assert errors["spiderbgp_ipam_allocations_total"] == 3

    # DEL of a live pod's container keeps its IP (Spiderpool: kept for the next sandbox)
    kept = plugin.delete(agent.socket_path, "web-1", uid1)
    assert (kept.rc, kept.stdout) == (0, ""), kept
    assert "10.244.100.11/16" in cli(db, "get", "se", "web-1").stdout
    # the pod deleted, then DEL twice (idempotent): one release, by the DEL or by the leader's GC,
    # whichever comes first (this agent is both)
    assert cli(db, "delete", "pod", "web-1").rc == 0
    for _ in range(2):
        deleted = plugin.delete(agent.socket_path, "web-1", uid1)
        assert (deleted.rc, deleted.stdout) == (0, ""), deleted
    eventually(lambda: agent.metrics()["spiderbgp_ipam_releases_total"] == 1, 5.0, "one release counted")
    final = agent.metrics()
    assert final["spiderbgp_ipam_releases_total"] == 1
    assert final['spiderbgp_ipam_request_seconds_count{operation="del"}'] == 3
    assert final[f'spiderbgp_ipam_pool_allocated_ips{{pool="{POOL}"}}'] == 1
    assert "web-1" not in cli(db, "get", "se").stdout

    # BGP is not configured on this agent; the CLI reads the socket path from the agent's config
    status = cli(db, "bgp", "status", "--config", str(agent.config_path))
    assert status.rc == 0, status.stderr
    assert status.stdout.splitlines()[0] == "BGP is not configured on this agent"
    assert "No IPv4 peers found." in status.stdout
    routes = cli(db, "bgp", "routes", "--socket", str(agent.socket_path))
    assert routes.rc == 0 and "BGP is not configured" in routes.stdout

    check = cli(db, "ipam", "check")
    assert check.rc == 0, check.stdout + check.stderr

    # SIGTERM: exit 0, the socket file gone, the endpoint of web-0 still recorded
    assert agent.stop() == 0, agent.log()
    assert not agent.socket_path.exists()
    assert "Traceback" not in agent.log()
    assert "store is closed" not in agent.log(), "a controller ran on after the store closed"
    unreachable = cli(db, "bgp", "status", "--socket", str(agent.socket_path))
    assert unreachable.rc == 1 and len(unreachable.stderr.splitlines()) == 1
    assert str(agent.socket_path) in unreachable.stderr
    assert "10.244.100.10/16" in cli(db, "get", "se", "web-0").stdout
