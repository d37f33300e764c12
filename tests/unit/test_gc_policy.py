"""The GC decision table (reference §5 scan-all) and the pod-lifecycle helpers it rests on."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ipam.errors import Invalid
from ipam.gc_policy import Decision, EndpointInfo, GCSettings, StatefulSetState, decide
from ipam.records import IPRecord
from ipam.workload import (
    OwnerRef,
    PodInfo,
    is_pod_alive,
    is_valid_statefulset_pod,
    ordinal_in_range,
    parse_timestamp,
    statefulset_ordinal,
)

NOW = 1_700_000_000.0
DEFAULTS = GCSettings()

RS_OWNER = OwnerRef("apps/v1", "ReplicaSet", "web-5d8f", "rs-uid", True)
STS_OWNER = OwnerRef("apps/v1", "StatefulSet", "db", "sts-uid", True)

STATELESS_REC = IPRecord(pool="p", ip="10.0.0.5", pod="default/web-5d8f-abcde", pod_uid="u1")
STATIC_REC = IPRecord(pool="p", ip="10.0.0.7", pod="default/db-1", pod_uid="u1")


def pod(record: IPRecord, **kw: Any) -> PodInfo:
    ns, name = record.pod.split("/")
    base: dict[str, Any] = {
        "namespace": ns,
        "name": name,
        "uid": "u1",
        "phase": "Running",
        "pod_ips": ("10.0.0.5",),
        "owners": (STS_OWNER,) if name.startswith("db-") else (RS_OWNER,),
        "node_name": "worker1",
    }
    base.update(kw)
    return PodInfo(**base)


def ep(uid: str = "u1", kind: str = "Deployment", ips: frozenset[str] = frozenset()) -> EndpointInfo:
    return EndpointInfo(uid=uid, node="worker1", owner_kind=kind, ips=ips)


STS_WANTS = StatefulSetState("db", exists=True, replicas=3)
STS_SCALED_DOWN = StatefulSetState("db", exists=True, replicas=1)
STS_GONE = StatefulSetState("db", exists=False)

ROWS: list[tuple[str, dict[str, Any], str, bool]] = [
    # (case id, decide() kwargs, action, release_endpoint)
    ("gone-no-endpoint", {"record": STATELESS_REC, "pod": None, "endpoint": None}, "release", False),
    ("gone-stateless-endpoint", {"record": STATELESS_REC, "pod": None, "endpoint": ep()}, "release", True),
    (
        "gone-sts-valid",
        {"record": STATIC_REC, "pod": None, "endpoint": ep(kind="StatefulSet"), "statefulset": STS_WANTS},
        "keep",
        False,
    ),
    (
        "gone-sts-scaled-down",
        {
            "record": STATIC_REC,
            "pod": None,
            "endpoint": ep(kind="StatefulSet"),
            "statefulset": STS_SCALED_DOWN,
        },
        "release",
        True,
    ),
    (
        "gone-sts-deleted",
        {"record": STATIC_REC, "pod": None, "endpoint": ep(kind="StatefulSet"), "statefulset": STS_GONE},
        "release",
        True,
    ),
    (
        "gone-sts-not-looked-up",
        {"record": STATIC_REC, "pod": None, "endpoint": ep(kind="StatefulSet"), "statefulset": None},
        "release",
        True,
    ),
    (
        "gone-sts-feature-off",
        {
            "record": STATIC_REC,
            "pod": None,
            "endpoint": ep(kind="StatefulSet"),
            "statefulset": STS_WANTS,
            "settings": GCSettings(enable_statefulset=False),
        },
        "release",
        True,
    ),
    (
        "pending",
        {"record": STATELESS_REC, "pod": pod(STATELESS_REC, phase="Pending", pod_ips=())},
        "keep",
        False,
    ),
    ("running-with-ips", {"record": STATELESS_REC, "pod": pod(STATELESS_REC)}, "keep", False),
    (
        "running-ip-not-in-endpoint",
        {"record": STATELESS_REC, "pod": pod(STATELESS_REC), "endpoint": ep(ips=frozenset({"10.0.0.9"}))},
        "release",
        False,
    ),
    (
        "running-ip-in-endpoint",
        {"record": STATELESS_REC, "pod": pod(STATELESS_REC), "endpoint": ep(ips=frozenset({"10.0.0.5"}))},
        "keep",
        False,
    ),
    (
        "running-no-ips-stateless-default",
        {"record": STATELESS_REC, "pod": pod(STATELESS_REC, pod_ips=())},
        "keep",
        False,
    ),
    (
        "running-no-ips-stateless-flag-on",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, pod_ips=()),
            "endpoint": ep(),
            "settings": GCSettings(running_on_empty_pod_ips=True),
        },
        "release",
        True,
    ),
    (
        "unknown-no-ips",
        {"record": STATELESS_REC, "pod": pod(STATELESS_REC, phase="Unknown", pod_ips=())},
        "release",
        False,
    ),
    (
        "unknown-with-ips",
        {"record": STATELESS_REC, "pod": pod(STATELESS_REC, phase="Unknown")},
        "keep",
        False,
    ),
    (
        "running-no-ips-sts-valid",
        {"record": STATIC_REC, "pod": pod(STATIC_REC, pod_ips=()), "statefulset": STS_WANTS},
        "keep",
        False,
    ),
    (
        "running-no-ips-sts-invalid",
        {"record": STATIC_REC, "pod": pod(STATIC_REC, pod_ips=()), "statefulset": STS_SCALED_DOWN},
        "release",
        False,
    ),
    (
        "succeeded-stateless-no-finish-time",
        {"record": STATELESS_REC, "pod": pod(STATELESS_REC, phase="Succeeded"), "endpoint": ep()},
        "release",
        True,
    ),
    (
        "failed-stateless-past-grace",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, phase="Failed", finished_at=NOW - 60, termination_grace_seconds=30),
        },
        "release",
        False,
    ),
    (
        "failed-stateless-within-grace",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, phase="Failed", finished_at=NOW - 10, termination_grace_seconds=30),
        },
        "keep",
        False,
    ),
    (
        "succeeded-sts-valid",
        {"record": STATIC_REC, "pod": pod(STATIC_REC, phase="Succeeded"), "statefulset": STS_WANTS},
        "keep",
        False,
    ),
    (
        "failed-sts-invalid",
        {"record": STATIC_REC, "pod": pod(STATIC_REC, phase="Failed"), "endpoint": ep(kind="StatefulSet")},
        "release",
        True,
    ),
    (
        "terminating-past-grace",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, deletion_timestamp=NOW - 31, deletion_grace_seconds=30),
            "endpoint": ep(),
            "node_ready": True,
        },
        "release",
        True,
    ),
    (
        "terminating-within-grace-with-ips",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, deletion_timestamp=NOW - 10, deletion_grace_seconds=30),
            "node_ready": True,
        },
        "keep",
        False,
    ),
    (
        "terminating-within-grace-no-ips",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, deletion_timestamp=NOW - 10, deletion_grace_seconds=30, pod_ips=()),
            "node_ready": False,
        },
        "release",
        False,
    ),
    (
        "terminating-additional-delay-holds",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, deletion_timestamp=NOW - 31, deletion_grace_seconds=30),
            "node_ready": True,
            "settings": GCSettings(additional_grace_delay=60),
        },
        "keep",
        False,
    ),
    (
        "terminating-ready-node-flag-off",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, deletion_timestamp=NOW - 999, deletion_grace_seconds=30),
            "node_ready": True,
            "settings": GCSettings(terminating_on_ready_node=False),
        },
        "keep",
        False,
    ),
    (
        "terminating-not-ready-node-flag-off",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, deletion_timestamp=NOW - 999, deletion_grace_seconds=30),
            "node_ready": False,
            "settings": GCSettings(terminating_on_not_ready_node=False),
        },
        "keep",
        False,
    ),
    (
        "terminating-not-ready-node-other-flag-off",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, deletion_timestamp=NOW - 999, deletion_grace_seconds=30),
            "node_ready": False,
            "settings": GCSettings(terminating_on_ready_node=False),
        },
        "release",
        False,
    ),
    (
        "terminating-node-unknown",
        {
            "record": STATELESS_REC,
            "pod": pod(STATELESS_REC, deletion_timestamp=NOW - 999, deletion_grace_seconds=30),
            "node_ready": None,
        },
        "keep",
        False,
    ),
    (
        "terminating-sts-valid",
        {
            "record": STATIC_REC,
            "pod": pod(STATIC_REC, deletion_timestamp=NOW - 999),
            "statefulset": STS_WANTS,
            "node_ready": True,
        },
        "keep",
        False,
    ),
    (
        "terminating-sts-scaled-down",
        {
            "record": STATIC_REC,
            "pod": pod(STATIC_REC, deletion_timestamp=NOW - 999),
            "statefulset": STS_SCALED_DOWN,
            "endpoint": ep(kind="StatefulSet"),
            "node_ready": True,
        },
        "release",
        True,
    ),
    (
        "uid-differs-stateless",
        {"record": STATELESS_REC, "pod": pod(STATELESS_REC, uid="u2"), "endpoint": ep(uid="u1")},
        "release",
        True,
    ),
    (
        "uid-differs-stateless-endpoint-is-new-pods",
        {"record": STATELESS_REC, "pod": pod(STATELESS_REC, uid="u2"), "endpoint": ep(uid="u2")},
        "release",
        False,
    ),
    (
        "uid-differs-sts-restarting",
        {"record": STATIC_REC, "pod": pod(STATIC_REC, uid="u2", pod_ips=()), "statefulset": STS_WANTS},
        "keep",
        False,
    ),
    (
        "uid-differs-sts-has-other-ip",
        {
            "record": STATIC_REC,
            "pod": pod(STATIC_REC, uid="u2", pod_ips=("10.0.0.8",)),
            "statefulset": STS_WANTS,
            "endpoint": ep(uid="u2", kind="StatefulSet"),
        },
        "release",
        False,
    ),
    (
        "uid-differs-sts-invalid",
        {
            "record": STATIC_REC,
            "pod": pod(STATIC_REC, uid="u2", pod_ips=()),
            "statefulset": STS_GONE,
            "endpoint": ep(uid="u1", kind="StatefulSet"),
        },
        "release",
        True,
    ),
    (
        "uid-differs-sts-feature-off-is-stateless",
        {
            "record": STATIC_REC,
            "pod": pod(STATIC_REC, uid="u2", pod_ips=()),
            "statefulset": STS_WANTS,
            "settings": GCSettings(enable_statefulset=False),
        },
        "release",
        False,
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "action", "release_endpoint"), ROWS, ids=[r[0] for r in ROWS])
def test_decision_table(case: str, kwargs: dict[str, Any], action: str, release_endpoint: bool) -> None:
    args: dict[str, Any] = {
        "endpoint": None,
        "statefulset": None,
        "node_ready": True,
        "now": NOW,
        "settings": DEFAULTS,
    }
    args.update(kwargs)
    got = decide(**args)
    assert (got.action, got.release_endpoint) == (action, release_endpoint), got.reason
    assert got.reason and "\n" not in got.reason
    assert got.release is (action == "release")


def test_terminating_within_grace_is_traced_until_the_stop_time() -> None:
    got = decide(
        STATELESS_REC,
        pod(STATELESS_REC, deletion_timestamp=NOW - 10, deletion_grace_seconds=30),
        None,
        None,
        True,
        NOW,
        GCSettings(additional_grace_delay=5),
    )
    # Spiderpool's stop time: deletionTimestamp + grace + delay.
    assert got == Decision("keep", False, got.reason, recheck_at=NOW - 10 + 30 + 5)


def test_finished_pod_traced_until_finish_plus_grace() -> None:
    got = decide(
        STATELESS_REC,
        pod(STATELESS_REC, phase="Succeeded", finished_at=NOW - 1, termination_grace_seconds=30),
        None,
        None,
        True,
        NOW,
        DEFAULTS,
    )
    assert got.action == "keep" and got.recheck_at == NOW + 29


def test_reasons_name_the_pod() -> None:
    got = decide(STATELESS_REC, None, None, None, None, NOW, DEFAULTS)
    assert "default/web-5d8f-abcde" in got.reason


def test_every_row_is_distinct_input() -> None:
    assert len({r[0] for r in ROWS}) == len(ROWS)


# ---- EndpointInfo / StatefulSetState parsing


def test_endpoint_info_from_obj() -> None:
    obj = {
        "status": {
            "current": {
                "uid": "u9",
                "node": "n1",
                "ips": [
                    {"interface": "eth0", "ipv4": "10.0.0.5/24", "ipv6": "fd00::5/64"},
                    {"interface": "net1", "ipv4": "10.1.0.5/24"},
                ],
            },
            "ownerControllerType": "StatefulSet",
        }
    }
    got = EndpointInfo.from_obj(obj)
    assert got == EndpointInfo("u9", "n1", "StatefulSet", frozenset({"10.0.0.5", "fd00::5", "10.1.0.5"}))
    assert EndpointInfo.from_obj({}) == EndpointInfo("", "", "")


def test_statefulset_state() -> None:
    sts = {"metadata": {"name": "db"}, "spec": {"replicas": 2, "ordinals": {"start": 5}}}
    state = StatefulSetState.from_obj("db", sts)
    assert state == StatefulSetState("db", True, 2, 5)
    assert state.wants("db-5") and state.wants("db-6")
    assert not state.wants("db-4") and not state.wants("db-7") and not state.wants("dbx-5")
    assert not StatefulSetState.from_obj("db", None).wants("db-0")


# ---- workload helpers the table relies on


@pytest.mark.parametrize(
    ("phase", "policy", "reason", "deleting", "alive"),
    [
        ("Running", "Always", "", False, True),
        ("Pending", "Always", "", False, True),
        ("Running", "Always", "", True, False),
        ("Succeeded", "Never", "", False, False),
        ("Succeeded", "OnFailure", "", False, False),
        ("Succeeded", "Always", "", False, True),
        ("Failed", "Never", "", False, False),
        ("Failed", "OnFailure", "", False, True),
        ("Failed", "Always", "Evicted", False, False),
    ],
)
def test_is_pod_alive(phase: str, policy: str, reason: str, deleting: bool, alive: bool) -> None:
    info = PodInfo(
        "ns",
        "p",
        "u",
        phase=phase,
        restart_policy=policy,
        status_reason=reason,
        deletion_timestamp=NOW if deleting else None,
    )
    assert is_pod_alive(info) is alive


def test_is_pod_alive_none() -> None:
    assert is_pod_alive(None) is False


@pytest.mark.parametrize(
    ("name", "expected"),
    [("web-3", ("web", 3)), ("my-app-12", ("my-app", 12)), ("web", None), ("web-", None), ("web-3a", None)],
)
def test_statefulset_ordinal(name: str, expected: tuple[str, int] | None) -> None:
    assert statefulset_ordinal(name) == expected


def test_is_valid_statefulset_pod() -> None:
    sts = {"metadata": {"name": "web"}, "spec": {"replicas": 3}}
    assert is_valid_statefulset_pod("web-0", sts)
    assert is_valid_statefulset_pod("web-2", sts)
    assert not is_valid_statefulset_pod("web-3", sts)
    assert not is_valid_statefulset_pod("other-0", sts)
    assert not is_valid_statefulset_pod("web-0", None)
    assert is_valid_statefulset_pod("web-0", {"metadata": {"name": "web"}, "spec": {}})  # replicas default 1
    assert not is_valid_statefulset_pod("web-1", {"metadata": {"name": "web"}, "spec": {}})
    assert not is_valid_statefulset_pod("web-0", {"metadata": {"name": "web"}, "spec": {"replicas": 0}})
    assert ordinal_in_range("web-4", "web", 2, 3)
    assert not ordinal_in_range("web-2", "web", 2, 3)


def test_pod_info_from_obj() -> None:
    obj = {
        "metadata": {
            "namespace": "default",
            "name": "db-0",
            "uid": "u7",
            "labels": {"app": "db"},
            "annotations": {"k": "v"},
            "deletionTimestamp": "2024-05-01T10:00:00Z",
            "deletionGracePeriodSeconds": 30,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "x1"},
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "db",
                    "uid": "s1",
                    "controller": True,
                },
            ],
        },
        "spec": {
            "nodeName": "w1",
            "restartPolicy": "Always",
            "hostNetwork": False,
            "terminationGracePeriodSeconds": 10,
        },
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
            "containerStatuses": [
                {"state": {"terminated": {"finishedAt": "2024-05-01T09:00:00Z"}}},
                {"state": {"terminated": {"finishedAt": "2024-05-01T09:30:00Z"}}},
                {"state": {"running": {}}},
            ],
        },
    }
    info = PodInfo.from_obj(obj)
    assert info.key == "default/db-0"
    assert info.labels == {"app": "db"}
    assert info.deletion_timestamp == parse_timestamp("2024-05-01T10:00:00Z")
    assert info.deletion_grace_seconds == 30
    assert info.termination_grace_seconds == 10
    assert info.pod_ips == ("10.0.0.1", "fd00::1")
    assert info.statefulset_name == "db"
    assert info.controller == OwnerRef("apps/v1", "StatefulSet", "db", "s1", True)
    assert info.finished_at == parse_timestamp("2024-05-01T09:30:00Z")
    assert info.terminating


def test_pod_info_defaults_and_bad_timestamp() -> None:
    info = PodInfo.from_obj({"metadata": {"namespace": "a", "name": "b"}})
    assert (info.phase, info.restart_policy, info.pod_ips, info.controller) == ("Pending", "Always", (), None)
    assert info.statefulset_name is None
    bad = {"metadata": {"namespace": "a", "name": "b", "deletionTimestamp": "yesterday"}}
    with pytest.raises(Invalid, match=r'^Pod "a/b": metadata.deletionTimestamp: '):
        PodInfo.from_obj(bad)


def test_pod_info_legacy_pod_ip() -> None:
    info = PodInfo.from_obj({"metadata": {"name": "b"}, "status": {"podIP": "10.0.0.3"}})
    assert info.pod_ips == ("10.0.0.3",)
    assert replace(info, pod_ips=()).pod_ips == ()
