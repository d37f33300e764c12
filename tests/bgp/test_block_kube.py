"""``advertise: block`` on the Kubernetes store: the agent (in-process, as its ServiceAccount, against the
API emulator with the deployment's RBAC) lists and watches SpiderIPBlocks and hands the announcer exactly
its node's blocks, from the first list and then from watch events.  The BGP side is the recorder of
tests/kube/test_kube_agent_watch.py told to follow blocks (the lab test drives the real speaker)."""

from __future__ import annotations

import threading
from collections.abc import Collection
from pathlib import Path

from ipam.records import Obj
from lab.frr import wait_until
from tests.kube.test_kube_agent_watch import Recorder, pool, running_agent
from tests.kube_emulator import KubeEmulator, kube_emulator

__all__ = ["kube_emulator"]

API = "spiderbgp.io/v1alpha1"


class BlockRecorder(Recorder):
    """The recorder, following blocks (``bgp.advertise: block``)."""

    def __init__(self) -> None:
        super().__init__(ready_gate=False)
        self._block_lock = threading.Lock()
        self._blocks: frozenset[str] = frozenset()

    @property
    def follows_blocks(self) -> bool:
        return True

    def set_blocks(self, blocks: Collection[str]) -> None:
        with self._block_lock:
            self._blocks = frozenset(blocks)

    def blocks(self) -> frozenset[str]:
        with self._block_lock:
            return self._blocks


def block(name: str, cidr: str, node: str) -> Obj:
    return {
        "apiVersion": API,
        "kind": "SpiderIPBlock",
        "metadata": {"name": name},
        "spec": {"pool": "p", "cidr": cidr, "node": node},
    }


def test_the_agent_follows_its_nodes_blocks_on_kubernetes(
    kube_emulator: KubeEmulator, tmp_path: Path
) -> None:
    kube_emulator.put(pool("p", "10.9.0.0/16"))
    kube_emulator.put(block("p-10-9-0-0-26", "10.9.0.0/26", "node1"))
    kube_emulator.put(block("p-10-9-0-64-26", "10.9.0.64/26", "node2"))
    recorder = BlockRecorder()
    with running_agent(kube_emulator, tmp_path, recorder):
        wait_until(lambda: recorder.blocks() == {"10.9.0.0/26"}, timeout=20, interval=0.02, what="first list")
        kube_emulator.put(block("p-10-9-0-128-26", "10.9.0.128/26", "node1"))  # claimed: through the watch
        wait_until(
            lambda: recorder.blocks() == {"10.9.0.0/26", "10.9.0.128/26"},
            timeout=10,
            interval=0.02,
            what="claim",
        )
        code, body = kube_emulator.call("DELETE", f"/apis/{API}/spideripblocks/p-10-9-0-0-26")
        assert code == 200, body
        wait_until(lambda: recorder.blocks() == {"10.9.0.128/26"}, timeout=10, interval=0.02, what="return")
        assert recorder.full_sets == 1  # all of it through the watch, no re-list
