"""Block pools (issue 15) on every backend of conftest.BACKENDS: SpiderIPBlock claims through the generic
object API, decided by create-if-absent when two nodes race; each node fills its own blocks, claims the
next empty one, borrows when none is left; every record lives in the block holding its address (its
status shows them on both stores), claims in different blocks never conflict, a block holding records
cannot be deleted, and the leader keeps the pool's count for `kubectl get sp`."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from ipam.admin import apply_object
from ipam.block_claims import claim_block, list_blocks
from ipam.blocks import BLOCK_KIND, block_object, block_status
from ipam.controllers.blocks import BlockReturn
from ipam.controllers.gc import GarbageCollector
from ipam.controllers.leader import LeaderControllers
from ipam.errors import Conflict, Invalid
from ipam.gc_policy import GCSettings
from ipam.kinds import resolve_kind
from ipam.model import IPPool, decode_allocated_ips
from ipam.ranges import ip_to_int
from ipam.records import Claim, IPRecord
from ipam.report import release_ip, show_pools
from ipam.service import IpamService, IpamSettings
from ipam.store.protocol import Store
from spiderbgp.printing import render_objects
from tests.service.world import SPIDER_API, World

SETTINGS = IpamSettings(conflict_retries=60, backoff_seconds=0.001)


def block_pool(world: World, name: str, last: str, size: str = "29") -> IPPool:
    _, written = apply_object(
        world.store,
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": name, "annotations": {"spiderbgp.io/block-size": size}},
            "spec": {"subnet": "10.0.0.0/24", "ips": [f"10.0.0.1-{last}"]},
        },
    )
    return IPPool.from_obj(written)


def service(store: Store, node: str) -> IpamService:
    return IpamService(store, node_name=node, settings=SETTINGS, sleep=lambda _: None)


def add(world: World, svc: IpamService, pod: str, pool: str, owner: dict[str, Any] | None = None) -> str:
    world.pod(pod, node=svc.node_name, owner=owner)
    return svc.allocate(world.add(pod, v4=[pool])).ips[0].ip


def pool_count(store: Store, pool: str) -> int:
    """The pool's allocatedIPCount as `kubectl get sp` shows it, after the leader's count pass (a
    block pool's records are in its blocks; SQLite derives the count, Kubernetes has the leader write it)."""
    BlockReturn(store, clock=Clock()).counts()
    return int(store.get("SpiderIPPool", pool)["status"]["allocatedIPCount"])


def blocks_by_cidr(store: Store) -> dict[str, str]:
    return {b.cidr: b.node for b in list_blocks(store)}


def assert_statuses_match_records(store: Store, pool: str) -> None:
    records = store.records(pool)
    for block in list_blocks(store):
        status = store.get(BLOCK_KIND, block.name).get("status") or {}
        expected = block_status(block, records, 4)
        assert status.get("allocatedIPCount", 0) == expected["allocatedIPCount"], block.cidr
        assert decode_allocated_ips(status.get("allocatedIPs")) == decode_allocated_ips(
            expected.get("allocatedIPs")
        ), block.cidr


def test_nodes_fill_own_blocks_then_claim_then_borrow(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.10")  # blocks 10.0.0.0/29 (.1-.7) and 10.0.0.8/29 (.8-.10)
    world.pool("plain", "10.1.0.0/24", ["10.1.0.1-10.1.0.9"])
    n1, n2 = service(store, "node1"), service(store, "node2")
    assert add(world, n1, "a", "bp") == "10.0.0.1"
    assert add(world, n2, "b", "bp") == "10.0.0.8"  # node1's block has room, node2 claims its own
    assert add(world, n1, "c", "bp") == "10.0.0.2"
    assert blocks_by_cidr(store) == {"10.0.0.0/29": "node1", "10.0.0.8/29": "node2"}
    assert [add(world, n2, p, "bp") for p in ("d", "e")] == ["10.0.0.9", "10.0.0.10"]
    # node2's block is full and no block is empty: it borrows node1's lowest free address
    assert add(world, n2, "f", "bp") == "10.0.0.3"
    assert blocks_by_cidr(store) == {"10.0.0.0/29": "node1", "10.0.0.8/29": "node2"}
    assert_statuses_match_records(store, "bp")
    first = store.get(BLOCK_KIND, "bp-10-0-0-0-29")
    assert first["status"]["allocatedIPCount"] == 3  # .1 and .2 of node1, .3 borrowed by node2
    assert first["metadata"]["ownerReferences"][0]["name"] == "bp"
    assert pool_count(store, "bp") == 6
    # a plain pool takes the lowest free address and claims nothing
    assert [add(world, n2, "g", "plain"), add(world, n1, "h", "plain")] == ["10.1.0.1", "10.1.0.2"]
    assert len(list_blocks(store)) == 2


def test_two_nodes_racing_for_one_block_are_decided_by_create(store: Store) -> None:
    world = World(store)
    pool = block_pool(world, "bp", "10.0.0.62")
    start = ip_to_int("10.0.0.16", 4)
    won = claim_block(store, pool, start, 29, "node1")
    with pytest.raises(Conflict, match="claimed by node node1"):
        claim_block(store, pool, start, 29, "node2")
    assert claim_block(store, pool, start, 29, "node1") == won  # its own claim again: kept
    assert blocks_by_cidr(store) == {"10.0.0.16/29": "node1"}


def test_concurrent_nodes_get_disjoint_blocks(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.62")
    services = {node: service(store, node) for node in ("node1", "node2", "node3")}
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def run(node: str) -> None:
        try:
            for i in range(5):
                got[f"{node}-p{i}"] = add(world, services[node], f"{node}-p{i}", "bp")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(node,)) for node in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(got.values())) == 15
    owners = blocks_by_cidr(store)
    assert len(owners) == 3 and sorted(owners.values()) == ["node1", "node2", "node3"]
    for pod, ip in got.items():
        block = f"{ip.rpartition('.')[0]}.{int(ip.rpartition('.')[2]) // 8 * 8}/29"
        assert owners[block] == pod.partition("-")[0], (pod, ip)  # 5 pods fit one block: none borrowed
    assert_statuses_match_records(store, "bp")
    assert pool_count(store, "bp") == 15


def test_release_removes_the_record_from_its_block(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.30")
    n1 = service(store, "node1")
    add(world, n1, "a", "bp")
    world.pod("b", node="node1")
    b_req = world.add("b", v4=["bp"])
    assert n1.allocate(b_req).ips[0].ip == "10.0.0.2"
    world.delete_pod("b")
    assert [r.ip for r in n1.release(world.delete_request(b_req)).records] == ["10.0.0.2"]
    block = store.get(BLOCK_KIND, "bp-10-0-0-0-29")
    assert block["status"]["allocatedIPCount"] == 1
    assert list(decode_allocated_ips(block["status"]["allocatedIPs"])) == ["10.0.0.1"]
    assert_statuses_match_records(store, "bp")
    assert pool_count(store, "bp") == 1


def test_statefulset_pod_moving_node_keeps_its_address_borrowed_there(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.30")
    n1, n2 = service(store, "node1"), service(store, "node2")
    sts = world.statefulset("web", replicas=1)
    assert add(world, n1, "web-0", "bp", owner=sts) == "10.0.0.1"
    old_uid = world.uid("web-0")
    world.delete_pod("web-0")
    assert add(world, n2, "web-0", "bp", owner=sts) == "10.0.0.1"  # the fixed IP, now on node2
    new_uid = world.uid("web-0")
    assert new_uid != old_uid
    block = store.get(BLOCK_KIND, "bp-10-0-0-0-29")
    assert block["spec"]["node"] == "node1"  # the block stays node1's; node2 holds a borrowed address
    assert decode_allocated_ips(block["status"]["allocatedIPs"])["10.0.0.1"].pod_uid == new_uid
    # node2's next pod takes a block of its own, not node1's free addresses
    assert add(world, n2, "x", "bp") == "10.0.0.8"
    assert_statuses_match_records(store, "bp")


def test_get_sib_and_ipam_show_list_blocks_and_borrowed_addresses(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.9")  # blocks 10.0.0.0/29 (.1-.7) and 10.0.0.8/29 (.8-.9)
    n1, n2 = service(store, "node1"), service(store, "node2")
    add(world, n1, "a", "bp")
    add(world, n2, "b", "bp")
    add(world, n2, "c", "bp")
    assert add(world, n2, "d", "bp") == "10.0.0.2"  # borrowed from node1's block
    table = render_objects(store.list(BLOCK_KIND), resolve_kind("sib"), output="")
    assert table.splitlines()[0].split() == ["NAME", "POOL", "CIDR", "NODE", "ALLOCATED-IP-COUNT", "AGE"]
    assert [line.split()[:5] for line in table.splitlines()[1:]] == [
        ["bp-10-0-0-0-29", "bp", "10.0.0.0/29", "node1", "2"],
        ["bp-10-0-0-8-29", "bp", "10.0.0.8/29", "node2", "2"],
    ]
    shown = show_pools(store)
    assert shown.splitlines()[1].split()[:5] == ["bp", "10.0.0.0/24", "9", "0", "4"]
    blocks, _, borrowed = shown.partition("Borrowed:\n")
    assert [line.split() for line in blocks.partition("Blocks:\n")[2].strip().splitlines()] == [
        ["POOL", "BLOCK", "NODE", "IN-USE"],
        ["bp", "10.0.0.0/29", "node1", "2"],
        ["bp", "10.0.0.8/29", "node2", "2"],
    ]
    assert [line.split() for line in borrowed.strip().splitlines()] == [
        ["POOL", "IP", "POD", "NODE", "BLOCK-NODE"],
        ["bp", "10.0.0.2", "default/d", "node2", "node1"],
    ]


def test_ip_gc_and_ipam_release_remove_their_records_from_blocks(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.30")
    n1 = service(store, "node1")
    add(world, n1, "a", "bp")
    add(world, n1, "b", "bp")
    add(world, n1, "c", "bp")
    world.delete_pod("a")  # gone without a CNI DEL: the IP GC takes its record
    gc = GarbageCollector(store, settings=GCSettings(), clock=lambda: 1_900_000_000.0)
    assert [record.ip for record, _ in gc.scan_all()] == ["10.0.0.1"]
    assert release_ip(store, "10.0.0.2", force=True) == "released 10.0.0.2 from pool bp (was default/b)"
    block = store.get(BLOCK_KIND, "bp-10-0-0-0-29")
    assert block["status"]["allocatedIPCount"] == 1
    assert list(decode_allocated_ips(block["status"]["allocatedIPs"])) == ["10.0.0.3"]
    assert_statuses_match_records(store, "bp")


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_leader_returns_a_block_empty_for_its_grace_period(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.30")
    n1, n2 = service(store, "node1"), service(store, "node2")
    world.pod("a", node="node1")
    a = world.add("a", v4=["bp"])
    n1.allocate(a)
    add(world, n1, "b", "bp")
    clock = Clock()
    leader = LeaderControllers(store, gc_settings=GCSettings(), clock=clock, block_grace_seconds=60.0)
    world.delete_pod("a")
    n1.release(world.delete_request(a))
    assert leader.full_pass().blocks.deleted == []  # node1's block still holds b
    world.delete_pod("b")
    assert [r.ip for r, _ in leader.gc.scan_all()] == ["10.0.0.2"]
    assert leader.blocks.collect().deleted == []  # empty now: the grace period starts
    with pytest.raises(Invalid, match="not changeable while 1 SpiderIPBlocks of the pool remain"):
        block_pool(world, "bp", "10.0.0.30", size="28")
    clock.now += 59.0
    assert leader.blocks.collect().deleted == []
    clock.now += 1.0
    assert leader.blocks.collect().deleted == ["SpiderIPBlock bp-10-0-0-0-29"]
    assert list_blocks(store) == []
    assert block_pool(world, "bp", "10.0.0.30", size="28").annotations["spiderbgp.io/block-size"] == "28"
    block_pool(world, "bp", "10.0.0.30")  # back to /29
    # the block is free for any node again
    assert add(world, n2, "c", "bp") == "10.0.0.1"
    assert blocks_by_cidr(store) == {"10.0.0.0/29": "node2"}


def test_block_status_belongs_to_the_store(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.30")
    n1 = service(store, "node1")
    add(world, n1, "a", "bp")
    block = store.get(BLOCK_KIND, "bp-10-0-0-0-29")
    block["status"] = {"allocatedIPCount": 0}  # a stale or careless writer cannot drop the records
    store.update_status(block)
    assert store.get(BLOCK_KIND, "bp-10-0-0-0-29")["status"]["allocatedIPCount"] == 1
    assert [r.ip for r in store.records("bp")] == ["10.0.0.1"]
    assert_statuses_match_records(store, "bp")


def test_a_block_holding_records_is_not_deleted(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.30")
    n1 = service(store, "node1")
    add(world, n1, "a", "bp")
    block = store.get(BLOCK_KIND, "bp-10-0-0-0-29")
    with pytest.raises(Conflict, match=r'SpiderIPBlock "bp-10-0-0-0-29": holds 1 allocation'):
        store.delete(BLOCK_KIND, "bp-10-0-0-0-29", resource_version=block["metadata"]["resourceVersion"])
    with pytest.raises(Conflict, match="holds 1 allocation"):
        store.delete(BLOCK_KIND, "bp-10-0-0-0-29")
    assert [r.ip for r in store.records("bp")] == ["10.0.0.1"]


def test_a_claim_needs_its_block_and_claims_in_other_blocks_do_not_conflict(store: Store) -> None:
    world = World(store)
    pool = block_pool(world, "bp", "10.0.0.30")
    claim_block(store, pool, ip_to_int("10.0.0.0", 4), 29, "node1")
    claim_block(store, pool, ip_to_int("10.0.0.8", 4), 29, "node2")
    version = store.usage("bp").resource_version
    assert version.startswith("g")  # a block pool's claims hang on its generation, not every record
    with pytest.raises(Conflict, match='SpiderIPBlock "bp-10-0-0-16-29": not claimed'):
        store.commit(claims=[Claim("bp", version, "10.0.0.17", "default/x", "ux")])
    # node2 commits in its block; node1's claim read before that still goes in (a plain pool: Conflict)
    store.commit(claims=[Claim("bp", version, "10.0.0.8", "default/b", "ub")])
    store.commit(claims=[Claim("bp", version, "10.0.0.1", "default/a", "ua")])
    with pytest.raises(Conflict, match="already allocated"):
        store.commit(claims=[Claim("bp", version, "10.0.0.1", "default/c", "uc")])
    assert [r.ip for r in store.records("bp")] == ["10.0.0.1", "10.0.0.8"]
    assert list(store.usage("bp").allocated) == [ip_to_int("10.0.0.1", 4), ip_to_int("10.0.0.8", 4)]
    # a spec change moves the generation: a claim read before it is refused
    block_pool(world, "bp", "10.0.0.29")
    with pytest.raises(Conflict):
        store.commit(claims=[Claim("bp", version, "10.0.0.2", "default/d", "ud")])
    assert pool_count(store, "bp") == 2


def test_the_leader_keeps_a_block_pools_count(store: Store) -> None:
    world = World(store)
    block_pool(world, "bp", "10.0.0.30")
    n1, n2 = service(store, "node1"), service(store, "node2")
    add(world, n1, "a", "bp")
    add(world, n2, "b", "bp")
    stored = store.get("SpiderIPPool", "bp", allocated_ips=False)
    assert "allocatedIPs" not in stored.get("status", {})  # records are on the blocks, not the pool
    leader = LeaderControllers(store, gc_settings=GCSettings(), clock=Clock())
    leader.blocks.counts()
    assert store.get("SpiderIPPool", "bp")["status"]["allocatedIPCount"] == 2
    assert leader.blocks.counts().updated == []  # nothing differs now


def _rv(store: Store, kind: str, name: str) -> str:
    return str(store.get(kind, name, allocated_ips=False)["metadata"]["resourceVersion"])


def test_records_move_their_blocks_version_not_the_pools(store: Store) -> None:
    """Rules 1 and 3: a claim and a release move the block's resourceVersion and leave the pool's; a
    release of an address without a record changes nothing."""
    world = World(store)
    pool = block_pool(world, "bp", "10.0.0.30")
    claim_block(store, pool, ip_to_int("10.0.0.0", 4), 29, "node1")
    pool_rv, block_rv = _rv(store, "SpiderIPPool", "bp"), _rv(store, BLOCK_KIND, "bp-10-0-0-0-29")
    version = store.usage("bp").resource_version
    store.commit(claims=[Claim("bp", version, "10.0.0.3", "default/a", "ua")])
    claimed_rv = _rv(store, BLOCK_KIND, "bp-10-0-0-0-29")
    assert claimed_rv != block_rv
    assert _rv(store, "SpiderIPPool", "bp") == pool_rv
    assert store.usage("bp").resource_version == version  # the token is the generation's
    store.commit(releases=[IPRecord("bp", "10.0.0.4", "default/none", "unone")])  # no record: no-op
    assert _rv(store, BLOCK_KIND, "bp-10-0-0-0-29") == claimed_rv
    store.commit(releases=[IPRecord("bp", "10.0.0.3", "default/a", "ua")])
    assert _rv(store, BLOCK_KIND, "bp-10-0-0-0-29") not in (block_rv, claimed_rv)
    assert _rv(store, "SpiderIPPool", "bp") == pool_rv
    assert store.records("bp") == []


def test_a_block_pools_count_is_its_blocks_records_on_read(store: Store) -> None:
    """Rule 6 before any leader pass: get and list count every record of the pool's blocks, and the
    pool object shows no allocatedIPs."""
    world = World(store)
    block_pool(world, "bp", "10.0.0.30")
    apply_object(  # another block pool, empty
        store,
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": "bq", "annotations": {"spiderbgp.io/block-size": "29"}},
            "spec": {"subnet": "10.2.0.0/24", "ips": ["10.2.0.1-10.2.0.30"]},
        },
    )
    n1, n2 = service(store, "node1"), service(store, "node2")
    for i in range(3):
        add(world, n1, f"a{i}", "bp")
    add(world, n2, "b", "bp")
    got = store.get("SpiderIPPool", "bp")
    assert got["status"]["allocatedIPCount"] == 4
    assert "allocatedIPs" not in got["status"]
    listed = {p["metadata"]["name"]: p["status"]["allocatedIPCount"] for p in store.list("SpiderIPPool")}
    assert listed == {"bp": 4, "bq": 0}
    assert len(store.usage("bp").allocated) == 4


def test_a_terminating_block_pool_refuses_claims_and_takes_releases(store: Store) -> None:
    """Rule 4: the start of deletion refuses new claims; releases still go through."""
    world = World(store)
    pool = block_pool(world, "bp", "10.0.0.30")
    claim_block(store, pool, ip_to_int("10.0.0.0", 4), 29, "node1")
    store.commit(claims=[Claim("bp", store.usage("bp").resource_version, "10.0.0.1", "default/a", "ua")])
    obj = store.get("SpiderIPPool", "bp", allocated_ips=False)
    obj["metadata"]["finalizers"] = ["example.io/hold"]
    store.update(obj)
    store.delete("SpiderIPPool", "bp")
    with pytest.raises(Conflict, match="terminating"):
        store.commit(claims=[Claim("bp", store.usage("bp").resource_version, "10.0.0.2", "default/b", "ub")])
    store.commit(releases=[IPRecord("bp", "10.0.0.1", "default/a", "ua")])
    assert store.records("bp") == []


def test_racing_claims_of_one_address_are_decided_by_the_store(store: Store) -> None:
    """Rule 4: writers racing for one address in one block: exactly one record, the others Conflict."""
    world = World(store)
    pool = block_pool(world, "bp", "10.0.0.30")
    claim_block(store, pool, ip_to_int("10.0.0.0", 4), 29, "node1")
    version = store.usage("bp").resource_version
    won: list[str] = []
    lost: list[str] = []
    start = threading.Barrier(4)

    def claim(i: int) -> None:
        start.wait()
        try:
            store.commit(claims=[Claim("bp", version, "10.0.0.5", f"default/p{i}", f"u{i}")])
            won.append(f"default/p{i}")
        except Conflict:
            lost.append(f"default/p{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 3
    assert [(r.ip, r.pod) for r in store.records("bp")] == [("10.0.0.5", won[0])]


def test_records_of_a_pod_include_block_records(store: Store) -> None:
    """Rule 8: records_of_pod sees a pod's address in a block pool beside one in a plain pool."""
    world = World(store)
    block_pool(world, "bp", "10.0.0.30")
    apply_object(
        store,
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": "plain"},
            "spec": {"subnet": "10.1.0.0/24", "ips": ["10.1.0.1-10.1.0.9"]},
        },
    )
    world.pod("a", node="node1")
    svc = service(store, "node1")
    ips = svc.allocate(world.add("a", v4=["bp"])).ips
    store.commit(claims=[Claim("plain", store.usage("plain").resource_version, "10.1.0.1", "default/a", "x")])
    got = sorted((r.pool, r.ip) for r in store.records_of_pod("default", "a"))
    assert got == [("bp", ips[0].ip), ("plain", "10.1.0.1")]


class AllocatesBeforeDelete:
    """A store through which the block's node allocates in it just before the leader's delete reaches
    the store (the race rule 5 decides)."""

    def __init__(self, store: Store, claim: Claim) -> None:
        self._store = store
        self._claim = claim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def delete(self, kind: str, name: str, namespace: str = "", **kw: Any) -> None:
        if kind == BLOCK_KIND:
            self._store.commit(claims=[self._claim])
        self._store.delete(kind, name, namespace, **kw)


def test_a_block_allocated_in_while_being_returned_stays_without_an_error(store: Store) -> None:
    """Rule 5 decides the leader's return against a node's allocation: the delete is refused, the
    pass reports neither a deletion nor an error, and the record stays in its block."""
    world = World(store)
    pool = block_pool(world, "bp", "10.0.0.30")
    claim_block(store, pool, ip_to_int("10.0.0.0", 4), 29, "node1")
    claim = Claim("bp", store.usage("bp").resource_version, "10.0.0.1", "default/a", "ua")
    clock = Clock()
    leader = BlockReturn(cast(Store, AllocatesBeforeDelete(store, claim)), clock=clock, grace_seconds=60.0)
    assert leader.collect().deleted == []  # empty: the grace period starts
    clock.now += 60.0
    report = leader.collect()
    assert (report.deleted, report.errors) == ([], [])
    assert blocks_by_cidr(store) == {"10.0.0.0/29": "node1"}
    assert [(r.ip, r.pod) for r in store.records("bp")] == [("10.0.0.1", "default/a")]


class ClaimsFirst:
    """A store through which another node claims each SpiderIPBlock a moment before this node's create
    reaches the store (the race of nodes starting together), once per block."""

    def __init__(self, store: Store, pool: IPPool, other: str) -> None:
        self._store = store
        self._pool = pool
        self._other = other
        self.taken: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj.get("kind") == BLOCK_KIND and len(self.taken) < 2:
            block = claim_block(
                self._store, self._pool, ip_to_int(obj["spec"]["cidr"].split("/")[0], 4), 29, self._other
            )
            self.taken.append(block.cidr)
        return self._store.create(obj)


def test_a_block_claim_lost_to_another_node_is_picked_again_inside_the_allocation(store: Store) -> None:
    """Two lost block claims: the node lists the blocks again and claims the next empty one within the
    same allocation (no retry of the whole allocation, no conflict reported)."""
    world = World(store)
    pool = block_pool(world, "bp", "10.0.0.62")
    racing = ClaimsFirst(store, pool, "node2")
    conflicts: list[int] = []
    n1 = IpamService(
        cast(Store, racing),
        node_name="node1",
        settings=SETTINGS,
        sleep=lambda _: None,
        on_conflict=lambda: conflicts.append(1),
    )
    assert add(world, n1, "a", "bp") == "10.0.0.16"
    assert racing.taken == ["10.0.0.0/29", "10.0.0.8/29"]
    assert conflicts == []
    assert blocks_by_cidr(store) == {"10.0.0.0/29": "node2", "10.0.0.8/29": "node2", "10.0.0.16/29": "node1"}


def test_a_block_created_with_records_in_its_status_holds_none(store: Store) -> None:
    """Rule 2: the records and their count belong to the store, at create as at update."""
    world = World(store)
    pool = block_pool(world, "bp", "10.0.0.30")
    obj = block_object(pool, ip_to_int("10.0.0.0", 4), 29, "node1")
    obj["status"] = {"allocatedIPCount": 1, "allocatedIPs": '{"10.0.0.1":{"pod":"default/x","podUid":"ux"}}'}
    store.create(obj)
    status = store.get(BLOCK_KIND, "bp-10-0-0-0-29").get("status") or {}
    assert (status.get("allocatedIPCount", 0), status.get("allocatedIPs")) == (0, None)
    assert store.records("bp") == []


def test_list_blocks_parses_only_blocks_that_changed(store: Store) -> None:
    world = World(store)
    pool = block_pool(world, "bp", "10.0.0.30")
    claim_block(store, pool, ip_to_int("10.0.0.0", 4), 29, "node1")
    claim_block(store, pool, ip_to_int("10.0.0.8", 4), 29, "node2")
    cache: dict[str, Any] = {}
    first = list_blocks(store, cache)
    assert [b.cidr for b in first] == ["10.0.0.0/29", "10.0.0.8/29"]
    version = store.usage("bp").resource_version
    store.commit(claims=[Claim("bp", version, "10.0.0.9", "default/b", "ub")])  # moves node2's block
    second = list_blocks(store, cache)
    assert second[0] is first[0]  # unchanged: the parse is reused
    assert second[1] is not first[1] and second[1].resource_version != first[1].resource_version
    store.delete(BLOCK_KIND, first[0].name)
    assert [b.cidr for b in list_blocks(store, cache)] == ["10.0.0.8/29"]
    assert set(cache) == {second[1].name}  # a deleted block leaves the cache
