"""The rest of Spiderpool's docs/example in the lab, rewritten in our words: ``basic`` (the cluster's
default pool), ``route`` (a pool's routes and gateway) and ``ippool-affinity-pod`` (a pool reserved by
a pod label selector).  test_cluster.py covers statefulset, ippool-multi, ippool-affinity-node,
reserved-ip and spider-subnet.

One lab for this module, built by ``python -m lab up`` through test_cluster's fixture (imported, not
copied); each test removes what it applied, so the order of the tests does not matter."""

from __future__ import annotations

import os

import pytest
import yaml

from lab.invariants import fetch_pages
from lab.kubelet import served_name
from lab.verbs import apply_file, wait_settled
from tests.lab.test_cluster import MANIFESTS, Cluster, _remove, assert_invariants, ip_of, pods, records
from tests.lab.test_cluster import cluster as lab_cluster

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

__all__ = ["lab_cluster"]  # the module-scoped fixture, under this name: one lab for this module


def test_basic_every_replica_takes_the_cluster_default_pool(lab_cluster: Cluster) -> None:
    """basic: no IPAM annotation anywhere; the pool with ``spec.default: true`` serves all replicas."""
    c = lab_cluster
    apply_file(c.store, MANIFESTS / "example-basic.yaml")
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    replicas = {n: p for n, p in pods(c, "default").items() if n.startswith("plain-app-")}
    assert len(replicas) == 3
    held = records(c, "example-everyone-v4")
    assert sorted(held) == ["172.18.46.40", "172.18.46.41", "172.18.46.42"], "lowest free first"
    assert {held[ip_of(p)] for p in replicas.values()} == {f"default/{n}" for n in replicas}
    # reachable from the client, only through the routes the nodes announce over BGP
    answers = fetch_pages(c.lab, [ip_of(p) for p in replicas.values()])
    assert answers == {ip_of(p): served_name(f"default/{n}") for n, p in replicas.items()}
    assert_invariants(c)
    _remove(c, "example-basic.yaml")


def test_route_the_pools_routes_reach_the_pod(lab_cluster: Cluster) -> None:
    """route: the pool's ``spec.routes`` and ``spec.gateway`` go into the allocation (the IPAM result is
    built from the SpiderEndpoint's entry, as tests/cni checks) with their gateways; the pod's namespace
    holds each extra destination via the Calico-style next hop, the node's end of the veth.  A /32 on a
    veth has no on-link 172.18.47.1, so neither a Calico pod nor the lab's uses that gateway: the pod's
    default route stays via 169.254.1.1 and the client reaches it through BGP as any other pod."""
    c = lab_cluster
    apply_file(c.store, MANIFESTS / "example-route.yaml")
    assert wait_settled(c.store, namespace="default", timeout=120) == []
    [(name, pod)] = [(n, p) for n, p in pods(c, "default").items() if n.startswith("routed-app-")]
    assert ip_of(pod) == "172.18.47.51"
    [nic] = c.store.get("SpiderEndpoint", name, "default")["status"]["current"]["ips"]
    assert nic["ipv4"] == "172.18.47.51/24" and nic["ipv4Pool"] == "example-routed-v4"
    assert nic["ipv4Gateway"] == "172.18.47.1" and nic["cleanGateway"] is False
    assert nic["routes"] == [{"dst": "172.18.48.0/24", "gw": "172.18.47.1"}]
    shown = c.cli("exec", name, "--", "ip", "-4", "route", "show").stdout.splitlines()
    assert sorted(line.split(" proto ")[0].strip() for line in shown) == [
        "169.254.1.1 dev eth0 scope link",
        "172.18.48.0/24 via 169.254.1.1 dev eth0",
        "default via 169.254.1.1 dev eth0",
    ]
    assert fetch_pages(c.lab, [ip_of(pod)]) == {ip_of(pod): served_name(f"default/{name}")}
    assert_invariants(c)
    _remove(c, "example-route.yaml")


def test_ippool_affinity_pod_only_matching_pods_take_the_pool(lab_cluster: Cluster) -> None:
    """ippool-affinity-pod: the reserved pool serves pods labelled app: vault only; a pod labelled
    otherwise that names it waits in ContainerCreating with the CNI error, and blocks nobody."""
    c = lab_cluster
    apply_file(c.store, MANIFESTS / "example-ippool-affinity-pod.yaml")
    failing = wait_settled(c.store, namespace="default", timeout=120)
    mine = pods(c, "default")
    [trespasser] = [n for n in mine if n.startswith("trespasser-")]
    assert len(failing) == 1 and failing[0].startswith(f"pod/default/{trespasser} ContainerCreating"), failing
    assert "pool example-vault-only-v4: podAffinity does not match" in failing[0], failing
    # every other pod runs: the vault replicas on the reserved pool, the sharers on the common one
    vault = sorted(ip_of(p) for n, p in mine.items() if n.startswith("vault-"))
    assert vault == ["172.18.49.40", "172.18.49.41"]
    assert sorted(records(c, "example-vault-only-v4")) == vault, "nothing of the reserved pool for others"
    sharers = {n: ip_of(p) for n, p in mine.items() if n.startswith("sharer-")}
    assert sorted(sharers.values()) == ["172.18.50.40", "172.18.50.41"]
    common = records(c, "example-common-v4")
    assert {ip: common.get(ip) for ip in sharers.values()} == {
        ip: f"default/{n}" for n, ip in sharers.items()
    }
    # the user sees why, as kubectl get pod -o yaml shows it
    shown = yaml.safe_load(c.cli("get", "pod", trespasser, "-o", "yaml").stdout)
    assert shown["status"]["phase"] == "Pending" and not shown["status"].get("podIP")
    waiting = shown["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ContainerCreating"
    assert "CNI ADD" in waiting["message"]
    assert "pool example-vault-only-v4: podAffinity does not match" in waiting["message"]
    assert_invariants(c)
    _remove(c, "example-ippool-affinity-pod.yaml")
    assert not [n for n in pods(c, "default") if n.startswith(("vault-", "trespasser-", "sharer-"))]
