"""A Hypothesis state machine over the real IpamService and SqliteStore, checked against a tiny model.

Steps: create a pod, allocate (ADD), repeat an ADD, delete a pod and release (DEL), delete a pod
without DEL (a crashed node: its endpoint goes stale until a pod of that name comes back), reserve an
IP.  After every step: no IP is held twice, every record lies in ``ips - excludeIPs``, the pool's
``allocatedIPCount`` and ``allocatedIPs`` equal the records, and the records are exactly the model's.
An ADD must give the lowest free address of the model, or fail with "exhausted" exactly when the model
has none; a repeated ADD must give the same address and write nothing."""

from __future__ import annotations

import ipaddress
import itertools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ipam.errors import AllocationError
from ipam.report import check
from ipam.service import IpamService, ReleaseRequest
from ipam.store.sqlite import SqliteStore
from tests.service.world import World

POOL = "sm"
FIRST = int(ipaddress.IPv4Address("10.50.0.1"))
LAST = int(ipaddress.IPv4Address("10.50.0.7"))
EXCLUDED = int(ipaddress.IPv4Address("10.50.0.5"))
USABLE = frozenset(range(FIRST, LAST + 1)) - {EXCLUDED}
NAMES = [f"p{i}" for i in range(8)]  # more pods than addresses: exhaustion is reachable


def ip_text(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


@dataclass(frozen=True)
class Held:
    uid: str
    ip: int
    container: str


class ServiceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="sbgp-sm-"))
        self.store = SqliteStore(self.tmp / "state.db")
        self.world = World(self.store)
        self.service = IpamService(self.store, node_name="node1", sleep=lambda _: None)
        self.world.pool(POOL, "10.50.0.0/28", ["10.50.0.1-10.50.0.7"], excludeIPs=["10.50.0.5"])
        self.pods: dict[str, str] = {}  # name -> uid of the pod that exists now
        self.held: dict[str, Held] = {}  # name -> what the store records for that name
        self.reserved: set[int] = set()
        self.containers = itertools.count(1)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- model ------------------------------------------------------------------------------------

    def lowest_free(self) -> int | None:
        free = USABLE - self.reserved - {h.ip for h in self.held.values()}
        return min(free) if free else None

    def stale(self) -> set[str]:
        """Names whose record belongs to a pod that no longer exists (or to an older pod UID)."""
        return {name for name, h in self.held.items() if self.pods.get(name) != h.uid}

    # -- rules ------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.pods) < len(NAMES))
    @rule(data=st.data())
    def create_pod(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([n for n in NAMES if n not in self.pods]))
        obj = self.world.pod(name, annotations={"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})})
        self.pods[name] = obj["metadata"]["uid"]

    @precondition(lambda self: bool(self.pods))
    @rule(data=st.data())
    def allocate(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.pods)))
        uid = self.pods[name]
        mine = self.held.get(name)
        if mine is not None and mine.uid == uid:
            self._repeat(name, mine)
            return
        expected = self.lowest_free()
        container = f"ctr{next(self.containers)}"
        request = self.world.add(name, container=container)
        if expected is None:
            with pytest.raises(AllocationError) as info:
                self.service.allocate(request)
            assert info.value.reason == "exhausted", str(info.value)
            event("ADD: pool exhausted")
            return
        got = self.service.allocate(request)
        assert got.new is True
        assert [(i.pool, i.ip, i.prefix_len) for i in got.ips] == [(POOL, ip_text(expected), 28)]
        if mine is not None:
            event("ADD: stale endpoint of the same name released")
        self.held[name] = Held(uid, expected, container)  # a stale holder of the name is released

    @precondition(lambda self: any(self.held.get(n, Held("", 0, "")).uid == u for n, u in self.pods.items()))
    @rule(data=st.data())
    def repeat_add(self, data: st.DataObject) -> None:
        names = sorted(n for n, u in self.pods.items() if n in self.held and self.held[n].uid == u)
        name = data.draw(st.sampled_from(names))
        self._repeat(name, self.held[name])

    def _repeat(self, name: str, mine: Held) -> None:
        revision = self.store.revision()
        got = self.service.allocate(self.world.add(name, container=mine.container))
        assert got.new is False
        assert [i.ip for i in got.ips] == [ip_text(mine.ip)]
        assert self.store.revision() == revision  # idempotent: nothing written

    @precondition(lambda self: bool(self.pods))
    @rule(data=st.data())
    def delete_pod_and_release(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.pods)))
        uid = self.pods.pop(name)
        self.world.delete_pod(name)
        mine = self.held.get(name)
        container = mine.container if mine is not None else "never-added"
        result = self.service.release(ReleaseRequest(container, "eth0", "default", name, uid))
        if mine is not None and mine.uid == uid:
            assert [r.ip for r in result.records] == [ip_text(mine.ip)]
            del self.held[name]
        else:
            assert result.records == ()

    @precondition(lambda self: bool(self.pods))
    @rule(data=st.data())
    def delete_pod_without_del(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.pods)))
        del self.pods[name]
        self.world.delete_pod(name)

    @rule(value=st.sampled_from(sorted(USABLE)))
    def reserve(self, value: int) -> None:
        self.reserved.add(value)
        self.world.reserve("sm-reserved", [ip_text(v) for v in sorted(self.reserved)])

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def records_match_the_model(self) -> None:
        records = self.store.records(POOL)
        ips = [r.ip for r in records]
        assert len(ips) == len(set(ips)), f"an IP is held twice: {ips}"
        for record in records:
            assert int(ipaddress.IPv4Address(record.ip)) in USABLE, record
        pool = self.store.get("SpiderIPPool", POOL)
        assert pool["status"]["allocatedIPCount"] == len(records)
        text = pool["status"].get("allocatedIPs")
        assert (json.loads(text) if text else {}) == {
            r.ip: {"pod": r.pod, "podUid": r.pod_uid} for r in records
        }
        assert {r.ip: (r.pod, r.pod_uid) for r in records} == {
            ip_text(h.ip): (f"default/{name}", h.uid) for name, h in self.held.items()
        }

    @invariant()
    def only_stale_records_are_reported(self) -> None:
        report, problems = check(self.store)
        assert problems == len(self.stale()), report


ServiceMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestServiceMachine = ServiceMachine.TestCase
