"""``advertise: block`` end to end: the real agent (``spiderbgp agent``) with the real block allocator,
ExaBGP and FRR, in namespaces.  The pool has ``spiderbgp.io/block-size: "30"``; every block but one is
already claimed by node2 (SpiderIPBlock objects written into the SQLite store, as node2's agent would),
so node1 claims the one left for its first pods, then borrows.  The router's table shows node1's block
as one prefix and the borrowed address as a /32; node1's kernel blackholes its block (and only its
own); deleting the block object withdraws it, removes the blackhole, and its pods' addresses become
borrowed /32s.  ``spiderbgp bgp routes`` says which prefix is a block and which is borrowed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipam.blocks import BLOCK_SIZE_ANNOTATION, block_object
from ipam.errors import Conflict
from ipam.model import IPPool
from ipam.ranges import ip_to_int
from ipam.store.sqlite import SqliteStore
from lab.frr import wait_until
from lab.netns import run
from tests.agent.conftest import SPIDERBGP, Plugin, added_ip, namespace_doc, pod_doc, pool_doc
from tests.agent.test_bgp_gates import Agent, Env, start_agent
from tests.bgp.labkit import NODE_V4, bgp_lab, frr_config

pytestmark = pytest.mark.netns

POOL = "block-pool"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with bgp_lab() as lab:
        lab.start_frr(frr_config())
        db = lab.work / "state.db"
        store = SqliteStore(db)
        try:
            store.create(namespace_doc())
            pool = pool_doc(POOL, ips="10.244.100.10-10.244.100.40")
            pool["metadata"]["annotations"] = {BLOCK_SIZE_ANNOTATION: "30"}
            model = IPPool.from_obj(store.create(pool))
            store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}})
            for last in (8, 16, 20, 24, 28, 32, 36, 40):  # every /30 of .8-.40 but .12/30: node2's
                store.create(block_object(model, ip_to_int(f"10.244.100.{last}", 4), 30, "node2"))
            yield Env(lab, db, store)
        finally:
            store.close()


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    target = tmp_path / "cni-bin"
    res = subprocess.run([SPIDERBGP, "install-cni", "--dir", str(target)], capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return Plugin(target / "spiderpool")


def blackholes(env: Env) -> list[str]:
    res = run(env.lab.node_ns, ["ip", "-j", "route", "show", "type", "blackhole", "proto", "201"])
    return sorted(str(r["dst"]) for r in json.loads(res.stdout or "[]"))


def wait_router(env: Env, want: dict[str, str]) -> None:
    try:
        wait_until(lambda: env.lab.router_routes() == want, timeout=20, interval=0.05, what="router routes")
    except TimeoutError:
        raise AssertionError(f"router routes: want {want}, have {env.lab.router_routes()}") from None


def kinds(agent: Agent) -> dict[str, str]:
    return {r["prefix"]: r["kind"] for r in agent.bgp_routes()["routes"]}


def test_blocks_and_borrowed_addresses_reach_the_router(env: Env, plugin: Plugin) -> None:
    agent = start_agent(env, "blocks", advertise="block", announceWhen="allocated")
    try:
        ips, uids = [], []
        for i in range(5):
            uids.append(str(env.store.create(pod_doc(f"b{i}"))["metadata"]["uid"]))
            ips.append(added_ip(plugin.add(agent.socket, f"b{i}", uids[i])))
            env.lab.add_host_route(ips[i])
        # .12/30 claimed by node1 (its four addresses), then .10 borrowed from node2's .8/30
        assert ips == ["10.244.100.12", "10.244.100.13", "10.244.100.14", "10.244.100.15", "10.244.100.10"]
        wait_router(env, {"10.244.100.12/30": NODE_V4, "10.244.100.10/32": NODE_V4})
        assert blackholes(env) == ["10.244.100.12/30"]  # node2's blocks are not node1's to blackhole
        wait_until(lambda: len(kinds(agent)) == 2, timeout=10, interval=0.05, what="adj-rib-out")
        assert kinds(agent) == {"10.244.100.12/30": "block", "10.244.100.10/32": "borrowed"}
        table = agent.bgp_routes_text()
        assert "KIND" in table and "block" in table and "borrowed" in table

        env.store.delete("Pod", "b4", "default", grace_period_seconds=0)  # the borrowed one's pod goes
        assert plugin.delete(agent.socket, "b4", uids[4]).rc == 0
        assert "10.244.100.10" not in {r.ip for r in env.store.records(POOL)}
        wait_router(env, {"10.244.100.12/30": NODE_V4})

        # a block holding allocations is never returned (the store refuses: its records live in it)
        with pytest.raises(Conflict, match="holds 4 allocation"):
            env.store.delete("SpiderIPBlock", f"{POOL}-10-244-100-12-30")
        for i in range(4):
            env.store.delete("Pod", f"b{i}", "default", grace_period_seconds=0)
            assert plugin.delete(agent.socket, f"b{i}", uids[i]).rc == 0
        # empty, the block stays the node's (announced, blackholed) until it is returned
        wait_router(env, {"10.244.100.12/30": NODE_V4})
        env.store.delete("SpiderIPBlock", f"{POOL}-10-244-100-12-30")
        wait_router(env, {})
        wait_until(lambda: blackholes(env) == [], timeout=10, interval=0.05, what="blackhole removed")
    finally:
        agent.stop()


def test_host_mode_clears_the_blackholes_a_block_run_left(env: Env) -> None:
    """An agent stopped in block mode keeps its blocks' blackholes (the blocks are still its node's);
    restarted with advertise: host it removes them, or they would swallow traffic to former block
    addresses now announced as /32s by other nodes."""
    claim = block_object(
        IPPool.from_obj(env.store.get("SpiderIPPool", POOL)), ip_to_int("10.244.100.44", 4), 30, "node1"
    )
    env.store.create(claim)
    try:
        agent = start_agent(env, "block-then-host", advertise="block", announceWhen="allocated")
        try:
            wait_until(
                lambda: blackholes(env) == ["10.244.100.44/30"], timeout=10, interval=0.05, what="blackhole"
            )
        finally:
            agent.stop()
        assert blackholes(env) == ["10.244.100.44/30"]
        agent = start_agent(env, "host-after-block", announceWhen="allocated")
        try:
            wait_until(lambda: blackholes(env) == [], timeout=10, interval=0.05, what="leftover removed")
        finally:
            agent.stop()
    finally:
        env.store.delete("SpiderIPBlock", claim["metadata"]["name"])
