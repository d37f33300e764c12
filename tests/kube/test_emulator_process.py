"""The API emulator served from a process of its own (``python -m tests.kube_emulator serve``), as
``bench.bench_kube`` runs it: it starts and prints where it is, answers the agent's ServiceAccount with
the same authorization as in-process, counts requests and takes latency through its admin endpoint (for
the cluster admin only), and stops with its process gone."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_kube import count_column, kubeconfig
from ipam.errors import StoreError
from ipam.store.kube import KubeStore
from tests.kube.test_kube_manifests import kubectl
from tests.kube_emulator import ADMIN_PATH, EmulatorProcess, http_call

POOL = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderIPPool",
    "metadata": {"name": "p"},
    "spec": {"ipVersion": 4, "subnet": "10.9.0.0/24", "ips": ["10.9.0.10-10.9.0.20"]},
}
SUBNET = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderSubnet",
    "metadata": {"name": "s1"},
    "spec": {"ipVersion": 4, "subnet": "10.8.0.0/24", "ips": ["10.8.0.10-10.8.0.20"]},
}


@pytest.fixture
def served() -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess(history=1000).start()
    try:
        yield proc
    finally:
        proc.stop()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_it_answers_the_agent_service_account_as_rbac_yaml_allows(served: EmulatorProcess) -> None:
    admin = KubeStore.connect(served.configuration(served.admin_token))
    agent = KubeStore.connect(served.configuration(served.agent_token))
    try:
        admin.create(POOL)
        assert agent.get("SpiderIPPool", "p")["spec"]["subnet"] == "10.9.0.0/24"
        admin.create(SUBNET)
        # rbac.yaml lets the agent update SpiderSubnets, not delete them
        with pytest.raises(StoreError, match=r'SpiderSubnet "s1": Forbidden: .* cannot delete resource'):
            agent.delete("SpiderSubnet", "s1")
        assert admin.get("SpiderSubnet", "s1")["metadata"]["name"] == "s1"
        # and admission is the same as in-process: an invalid pool is refused with its field named
        code, body = http_call(
            served.url,
            "POST",
            "/apis/spiderpool.spidernet.io/v2beta1/spiderippools",
            {**POOL, "metadata": {"name": "bad"}, "spec": {"ipVersion": 7, "subnet": "10.9.1.0/24"}},
            token=served.admin_token,
        )
        assert code == 422
        assert "spec.ipVersion" in body["message"]
    finally:
        agent.close()
        admin.close()


def test_requests_are_counted_and_latency_is_set_through_the_admin_endpoint(served: EmulatorProcess) -> None:
    before = served.requests
    for _ in range(3):
        assert http_call(served.url, "GET", "/api/v1/namespaces/default", token=served.admin_token)[0] == 200
    assert served.requests == before + 3  # the admin endpoint's own requests are not counted
    served.set_latency(0.2)
    began = time.monotonic()
    assert http_call(served.url, "GET", "/api/v1/namespaces/default", token=served.admin_token)[0] == 200
    assert time.monotonic() - began >= 0.2
    served.set_latency(0.0)


def test_the_admin_endpoint_is_the_cluster_admins_only(served: EmulatorProcess) -> None:
    code, body = http_call(served.url, "GET", ADMIN_PATH + "stats", token=served.agent_token)
    assert (code, body["reason"]) == (403, "Forbidden")
    code, _ = http_call(served.url, "GET", ADMIN_PATH + "stats")
    assert code == 403  # no token: system:anonymous, not an admin either
    code, body = http_call(
        served.url, "PUT", ADMIN_PATH + "faults", {"latency": -1}, token=served.admin_token
    )
    assert code == 400
    assert "latency -1.0 is negative" in body["message"]


def test_discovery_is_for_authenticated_users(served: EmulatorProcess) -> None:
    code, body = http_call(
        served.url, "GET", "/apis/spiderpool.spidernet.io/v2beta1", token=served.agent_token
    )
    assert code == 200
    pools = next(r for r in body["resources"] if r["name"] == "spiderippools")
    assert (pools["kind"], pools["namespaced"], pools["shortNames"]) == ("SpiderIPPool", False, ["sp"])
    code, body = http_call(served.url, "GET", "/apis")
    assert (code, body["message"]) == (403, 'forbidden: User "system:anonymous" cannot get path "/apis"')


def test_kubectl_get_sp_prints_the_crds_columns_over_tls(tmp_path: Path) -> None:
    with EmulatorProcess(history=1000, tls_dir=str(tmp_path)) as served:
        admin = KubeStore.connect(served.configuration(served.admin_token))
        try:
            admin.create(POOL)
        finally:
            admin.close()
        config = kubeconfig(served.tls_url, served.ca_file, served.admin_token, str(tmp_path))
        out = subprocess.run(
            [kubectl(), "--kubeconfig", config, "get", "sp"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "SUBNET", "ALLOCATED-IP-COUNT", "TOTAL-IP-COUNT", "DEFAULT"]
    assert row.split() == ["p", "4", "10.9.0.0/24", "false"]  # no status written yet: blank counts
    assert count_column(out.stdout, "p") == "(blank)"


def test_stop_ends_its_process() -> None:
    proc = EmulatorProcess(history=1000).start()
    assert proc.proc is not None
    pid = proc.proc.pid
    assert not _gone(pid)
    assert proc.stop() == 0  # it stopped itself when its stdin closed
    assert _gone(pid)
    assert proc.stop() is None
