"""The owner-reference GC's pure decision: which pools go with their SpiderSubnet."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ipam.controllers.owner_gc import Collect, collect_reason, dependents_of, owner_refs, owner_states, plan
from ipam.kinds import SPIDER_API
from ipam.records import Obj


def ref(uid: str, kind: str = "SpiderSubnet", name: str = "", api: str = SPIDER_API) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "name": name or f"n-{uid}", "uid": uid, "controller": True}


def pool(name: str, *refs: dict[str, Any], terminating: bool = False, rv: str = "5") -> Obj:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv, "ownerReferences": list(refs)}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": SPIDER_API, "kind": "SpiderIPPool", "metadata": meta, "spec": {}}


def subnet(uid: str, terminating: bool = False) -> Obj:
    meta: dict[str, Any] = {"name": f"n-{uid}", "uid": uid}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": SPIDER_API, "kind": "SpiderSubnet", "metadata": meta, "spec": {}}


def test_pool_of_a_terminating_subnet_is_collected() -> None:
    got = plan([pool("p1", ref("u1"))], [subnet("u1", terminating=True)])
    assert got == [Collect("SpiderIPPool", "p1", "5", "its owner SpiderSubnet n-u1 is being deleted")]


def test_pool_of_a_gone_subnet_is_collected() -> None:
    (item,) = plan([pool("p1", ref("u1"))], [subnet("u2")])
    assert item.reason == "its owner SpiderSubnet n-u1 (uid u1) is gone"


def test_kept() -> None:
    owners = [subnet("live"), subnet("dying", terminating=True)]
    kept = [
        pool("alive", ref("live")),
        pool("one-alive", ref("dying"), ref("live")),  # every owner must be going
        pool("orphan"),  # no owner at all: nothing cascades to it
        pool("already", ref("dying"), terminating=True),  # deleting it again changes nothing
        pool("foreign", ref("dying"), ref("x", kind="Deployment", api="apps/v1")),  # cannot judge it
        pool("other-group", ref("gone", api="example.com/v1")),
    ]
    assert plan(kept, owners) == []


def test_untracked_kinds_are_never_collected() -> None:
    endpoint = pool("e1", ref("u1"))
    endpoint["kind"] = "SpiderEndpoint"
    assert collect_reason(endpoint, owner_states([subnet("u1", terminating=True)])) is None


def test_malformed_references_are_skipped() -> None:
    obj = pool("p1", ref("u1"))
    obj["metadata"]["ownerReferences"] += ["junk", {"kind": "SpiderSubnet"}, {"uid": "x"}]
    assert [r.uid for r in owner_refs(obj)] == ["u1"]
    obj["metadata"]["ownerReferences"] = "junk"
    assert owner_refs(obj) == ()


def test_dependents_of() -> None:
    objs = [pool("b", ref("u1")), pool("a", ref("u1"), ref("u2")), pool("c", ref("u2")), pool("d")]
    assert dependents_of("u1", objs) == ["a", "b"]
    assert dependents_of("u3", objs) == []


_STATE = st.sampled_from(["live", "terminating", "gone"])


@given(st.lists(_STATE, min_size=1, max_size=5))
def test_collected_exactly_when_no_owner_is_live(states: list[str]) -> None:
    owners = [subnet(f"u{i}", terminating=s == "terminating") for i, s in enumerate(states) if s != "gone"]
    dependent = pool("p", *(ref(f"u{i}") for i in range(len(states))))
    reason = collect_reason(dependent, owner_states(owners))
    assert (reason is None) == ("live" in states)
    if reason is not None:
        assert reason.count("its owner") == len(states)
