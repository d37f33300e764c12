"""The agent's endpoint watch (``Agent._watch_endpoints``, run by the agent in-process) on the Kubernetes
store against the API emulator: through a compaction it re-lists and ends with exactly this node's
addresses; a quiet agent resumes from the BOOKMARK revisions without a re-list; its Pod watch asks only
for this node's pods (``fieldSelector=spec.nodeName=NODE``); and with ``announceWhen: ready`` a Pod
turning NotReady withdraws its address.  The emulator also answers field selectors as the API server
does.

The agent runs with the Kubernetes store over HTTP on 127.0.0.1 and its CNI socket in ``tmp_path``; its
BGP side is ``Recorder``, an implementation of the agent's ``Announcer`` interface that keeps what the
agent told it (the speaker's inputs: this node's addresses and which are Ready), since the test is of
the watch, not of ExaBGP (the lab tests drive the real speaker).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ipam.records import Obj
from ipam.store.kube import KubeStore
from lab.frr import wait_until
from spiderbgp.agent import CACHED_KINDS, Agent
from spiderbgp.config import AgentConfig, IpamConfig, LeaderConfig
from spiderbgp.pod_readiness import pod_is_ready as pod_ready
from spiderbgp.stores import KUBERNETES
from tests.kube_emulator import KubeEmulator

SPIDER = "spiderpool.spidernet.io/v2beta1"
NODE = "node1"


class Recorder:
    """The agent's ``Announcer``: what the agent told the BGP side (called on the agent's loop)."""

    def __init__(self, *, ready_gate: bool) -> None:
        self._gate = ready_gate
        self._lock = threading.Lock()
        self._ips: dict[str, str] = {}
        self._ready: set[str] = set()
        self.full_sets = 0  # set_pod_ips calls: the agent's start, then one per full re-read

    async def start(self) -> None:
        return None

    def set_pod_ips(self, ips: Mapping[str, str]) -> None:
        with self._lock:
            self._ips = dict(ips)
            self.full_sets += 1

    def add_pod_ips(self, ips: Mapping[str, str]) -> None:
        with self._lock:
            self._ips.update(ips)

    def remove_pod_ips(self, ips: Sequence[str]) -> None:
        with self._lock:
            for ip in ips:
                self._ips.pop(ip, None)

    def set_pool_subnets(self, subnets: Sequence[str]) -> None:
        return None

    @property
    def announce_when_ready(self) -> bool:
        return self._gate

    @property
    def writes_node_condition(self) -> bool:
        return False

    @property
    def follows_blocks(self) -> bool:
        return False

    def set_blocks(self, blocks: Collection[str]) -> None:
        return None

    def set_ready_ips(self, ips: Collection[str]) -> None:
        with self._lock:
            self._ready = set(ips)

    def set_pod_ready(self, changes: Mapping[str, bool]) -> None:
        with self._lock:
            for ip, ready in changes.items():
                if ready:
                    self._ready.add(ip)
                else:
                    self._ready.discard(ip)

    def readiness(self) -> str | None:
        return None

    def suppressed(self) -> list[dict[str, Any]]:
        return []

    def status(self) -> list[dict[str, Any]]:
        return []

    def pipename(self) -> str:
        return ""

    async def routes(self) -> list[dict[str, Any]]:
        return []

    async def stop(self, *, withdraw: bool) -> None:
        return None

    def announced(self) -> frozenset[str]:
        """The addresses the speaker would announce: this node's, and (ready gate) only Ready pods'."""
        with self._lock:
            return frozenset(ip for ip in self._ips if not self._gate or ip in self._ready)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_agent(emulator: KubeEmulator, tmp_path: Path, announcer: Recorder) -> Iterator[Agent]:
    """The agent on the emulator as its ServiceAccount, with the store it builds in production (the
    cached kinds), run on an event loop of its own; stopped (and its store closed) at the end."""
    store = KubeStore.connect(emulator.configuration(emulator.agent_token), cached_kinds=CACHED_KINDS)
    config = AgentConfig(
        node_name=NODE,
        store=KUBERNETES,
        socket_path=str(tmp_path / "agent.sock"),
        health_port=_free_port(),
        ipam=IpamConfig(leader=LeaderConfig(enabled=False)),
    )
    agent = Agent(config, store, announcer=announcer)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(agent.run(stop))
        except BaseException as err:  # shown by the test, not lost in the thread
            failed.append(err)

    thread = threading.Thread(target=run, name="agent")
    thread.start()
    try:
        yield agent
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
    assert not failed, failed


def pool(name: str, subnet: str) -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": subnet, "ips": [subnet]},
    }


def endpoint(name: str, cidr: str, node: str = NODE, *, uid: str = "") -> Obj:
    return {
        "apiVersion": SPIDER,
        "kind": "SpiderEndpoint",
        "metadata": {"name": name, "namespace": "default"},
        "status": {
            "current": {
                "uid": uid or f"uid-{name}",
                "node": node,
                "ips": [{"interface": "eth0", "ipv4": cidr, "ipv4Pool": "p"}],
            },
            "ownerControllerType": "Pod",
            "ownerControllerName": name,
        },
    }


def pod(name: str, *, ready: bool, node: str = NODE) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def delete_endpoint(emulator: KubeEmulator, name: str) -> None:
    code, body = emulator.call("DELETE", f"/apis/{SPIDER}/namespaces/default/spiderendpoints/{name}")
    assert code == 200, body


def _endpoint_watches(emulator: KubeEmulator) -> list[int]:
    return [int(w.resource_version or 0) for w in emulator.watches if w.kind == "SpiderEndpoint"]


# -- the emulator's field selectors ------------------------------------------------------------------


def _names(emulator: KubeEmulator, path: str) -> tuple[int, Any]:
    code, body = emulator.call("GET", path)
    if code != 200:
        return code, body["message"]
    return code, [o["metadata"]["name"] for o in body["items"]]


def test_field_selectors_are_those_the_api_server_supports(kube_emulator: KubeEmulator) -> None:
    kube_emulator.put(pod("a", ready=True))
    kube_emulator.put(pod("b", ready=True, node="node2"))
    kube_emulator.put({**pod("c", ready=False), "status": {"phase": "Pending"}})
    pods = "/api/v1/pods?fieldSelector="
    assert _names(kube_emulator, pods + "spec.nodeName=node1") == (200, ["a", "c"])
    assert _names(kube_emulator, pods + "spec.nodeName!=node1") == (200, ["b"])
    assert _names(kube_emulator, pods + "status.phase=Running,spec.nodeName=node1") == (200, ["a"])
    assert _names(kube_emulator, pods + "metadata.name=b") == (200, ["b"])
    assert _names(kube_emulator, pods + "metadata.namespace=kube-system") == (200, [])
    code, message = _names(kube_emulator, pods + "spec.containers=x")
    assert (code, message) == (400, "field label not supported: spec.containers")
    # a custom resource: only metadata.name and metadata.namespace
    kube_emulator.put(pool("p", "10.9.0.0/16"))
    pools = f"/apis/{SPIDER}/spiderippools?fieldSelector="
    assert _names(kube_emulator, pools + "metadata.name=p") == (200, ["p"])
    code, message = _names(kube_emulator, pools + "spec.subnet=10.9.0.0/16")
    only = '"spec.subnet" is not a known field selector: only "metadata.name", "metadata.namespace"'
    assert (code, message) == (400, only)
    code, _ = kube_emulator.call("GET", pools + "spec.subnet=x&watch=1")
    assert code == 400


# -- the agent's endpoint watch ----------------------------------------------------------------------


def test_the_agent_relists_through_a_compaction_and_ends_with_this_nodes_addresses(
    kube_emulator: KubeEmulator, tmp_path: Path
) -> None:
    kube_emulator.bookmark_interval = 3600.0  # no bookmark saves it: the agent is behind the compaction
    kube_emulator.put(pool("p", "10.9.0.0/16"))
    kube_emulator.put(endpoint("e1", "10.9.0.1/16"))
    kube_emulator.put(endpoint("e2", "10.9.0.2/16"))
    kube_emulator.put(endpoint("other", "10.9.0.3/16", node="node2"))
    recorder = Recorder(ready_gate=False)
    with running_agent(kube_emulator, tmp_path, recorder):
        wait_until(lambda: recorder.announced() == {"10.9.0.1", "10.9.0.2"}, timeout=20, interval=0.02)
        kube_emulator.put(endpoint("e3", "10.9.0.4/16"))  # through the watch, no re-list
        wait_until(lambda: "10.9.0.4" in recorder.announced(), timeout=10, interval=0.02)
        assert recorder.full_sets == 1
        # the agent falls behind: its watch cannot be opened again (the quiet watch ends each second)
        before = kube_emulator.faults.errors_injected
        kube_emulator.faults.fail_requests(10**6, 503, frozenset({"GET"}))
        wait_until(lambda: kube_emulator.faults.errors_injected > before, timeout=10, interval=0.02)
        behind = max(_endpoint_watches(kube_emulator))
        delete_endpoint(kube_emulator, "e1")
        kube_emulator.put(endpoint("e4", "10.9.0.5/16"))
        kube_emulator.put(endpoint("moved", "10.9.0.6/16", node="node2"))
        kube_emulator.compact()
        assert kube_emulator.compacted_revision > behind
        kube_emulator.faults.fail_requests(0)
        wait_until(lambda: recorder.full_sets == 2, timeout=20, interval=0.02)  # Gone -> a full re-read
        wait_until(
            lambda: recorder.announced() == {"10.9.0.2", "10.9.0.4", "10.9.0.5"}, timeout=10, interval=0.02
        )
        # and it watches on from the re-list: a change after it arrives as an event
        delete_endpoint(kube_emulator, "e2")
        wait_until(lambda: recorder.announced() == {"10.9.0.4", "10.9.0.5"}, timeout=10, interval=0.02)
        assert recorder.full_sets == 2


def test_a_quiet_agent_resumes_after_a_compaction_without_a_relist(
    kube_emulator: KubeEmulator, tmp_path: Path
) -> None:
    kube_emulator.bookmark_interval = 0.05
    kube_emulator.put(pool("p", "10.9.0.0/16"))
    kube_emulator.put(endpoint("e1", "10.9.0.1/16"))
    recorder = Recorder(ready_gate=False)
    with running_agent(kube_emulator, tmp_path, recorder):
        wait_until(lambda: recorder.announced() == {"10.9.0.1"}, timeout=20, interval=0.02)
        # the cluster moves on (other kinds: nodes, leases, other pods), nothing the agent watches
        for i in range(5):
            kube_emulator.put(pod(f"elsewhere-{i}", ready=True, node="node2"))
        moved_on = kube_emulator.revision
        # the agent's next endpoint watch resumes from a bookmark's revision, past those writes
        wait_until(lambda: max(_endpoint_watches(kube_emulator)) >= moved_on, timeout=10, interval=0.02)
        kube_emulator.compact()
        kube_emulator.put(endpoint("e2", "10.9.0.2/16"))
        wait_until(lambda: recorder.announced() == {"10.9.0.1", "10.9.0.2"}, timeout=10, interval=0.02)
        assert recorder.full_sets == 1  # no re-list


@pytest.mark.parametrize("gate", [True, False], ids=["announceWhen-ready", "announceWhen-allocated"])
def test_readiness_gating_on_the_kubernetes_store(
    kube_emulator: KubeEmulator, tmp_path: Path, gate: bool
) -> None:
    """announceWhen: ready: a Pod turning NotReady withdraws its address, Ready again announces it;
    the agent's Pod watch carries fieldSelector=spec.nodeName=node1 (other nodes' pods never come).
    announceWhen: allocated (the reference): readiness changes nothing."""
    kube_emulator.put(pool("p", "10.9.0.0/16"))
    for name, ip, ready in (("web", "10.9.0.1/16", True), ("late", "10.9.0.2/16", False)):
        uid = kube_emulator.put(pod(name, ready=ready))["metadata"]["uid"]  # the server gives the UID
        kube_emulator.put(endpoint(name, ip, uid=uid))
    recorder = Recorder(ready_gate=gate)
    with running_agent(kube_emulator, tmp_path, recorder):
        first = {"10.9.0.1"} if gate else {"10.9.0.1", "10.9.0.2"}
        wait_until(lambda: recorder.announced() == first, timeout=20, interval=0.02)
        kube_emulator.put(pod("web", ready=False))  # its readiness probe fails
        kube_emulator.put(pod("late", ready=True))
        after = {"10.9.0.2"} if gate else {"10.9.0.1", "10.9.0.2"}
        wait_until(lambda: recorder.announced() == after, timeout=10, interval=0.02)
        kube_emulator.put(pod("web", ready=True))
        wait_until(lambda: recorder.announced() == {"10.9.0.1", "10.9.0.2"}, timeout=10, interval=0.02)
        # deleted with a grace period: terminating, still Ready by its condition, withdrawn at once
        code, body = kube_emulator.call(
            "DELETE", "/api/v1/namespaces/default/pods/web", {"gracePeriodSeconds": 30}
        )
        assert code == 200 and body["metadata"]["deletionTimestamp"], body
        last = {"10.9.0.2"} if gate else {"10.9.0.1", "10.9.0.2"}
        wait_until(lambda: recorder.announced() == last, timeout=10, interval=0.02)
        assert recorder.full_sets == 1
    # the agent's own Pod watch (the store's Pod informer, a cache the CNI path reads, lists them all)
    node_watches = [w.query.get("fieldSelector") for w in kube_emulator.watches if w.kind == "Pod"]
    if gate:
        assert "spec.nodeName=node1" in node_watches
        assert set(node_watches) == {None, "spec.nodeName=node1"}
    else:
        assert set(node_watches) == {None}  # no Pod watch but the informer's without the gate


def test_a_pod_bound_to_the_node_later_arrives_in_the_node_watch_as_added(
    kube_emulator: KubeEmulator, store_factory: Callable[..., KubeStore]
) -> None:
    """As the API server filters a watch: a Pod created unscheduled enters this node's watch (ADDED)
    when the scheduler binds it here; other nodes' pods never come."""
    store = store_factory()
    since = store.revision()
    unbound = pod("later", ready=False)
    del unbound["spec"]["nodeName"]
    kube_emulator.put(unbound)
    kube_emulator.put(pod("elsewhere", ready=False, node="node2"))
    kube_emulator.put(pod("later", ready=False))  # bound to node1
    kube_emulator.put(pod("later", ready=True))
    events = list(store.watch(["Pod"], since, timeout=0.5, pods_on_node=NODE))
    assert [(e.type, e.object["metadata"]["name"], pod_ready(e.object)) for e in events] == [
        ("ADDED", "later", False),
        ("MODIFIED", "later", True),
    ]
