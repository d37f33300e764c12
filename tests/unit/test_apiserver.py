"""The API server's rules as pure functions (ipam.apiserver): what both stores obey, checked on values."""

from __future__ import annotations

from typing import Any

import pytest

from ipam.apiserver import (
    check_version,
    created,
    deleted,
    ends,
    finalizer_released,
    format_timestamp,
    grace_period,
    identify,
    replaced,
)
from ipam.errors import Conflict, Invalid
from ipam.kinds import kind_info

POD = kind_info("Pod")
POOL = kind_info("SpiderIPPool")
NOW = 1_800_000_000.0


def pod(**meta: object) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a", "namespace": "default", "resourceVersion": "7", "generation": 1, **meta},
        "spec": {"nodeName": "n1"},
    }


def test_identify_names_the_field() -> None:
    assert identify(pod()) == (POD, "default", "a")
    with pytest.raises(Invalid, match=r"metadata\.namespace"):
        identify({"kind": "Pod", "metadata": {"name": "a"}})
    with pytest.raises(Invalid, match=r"metadata\.finalizers"):
        identify({"kind": "Pod", "metadata": {"name": "a", "namespace": "d", "finalizers": [""]}})


def test_created_owns_identity_and_drops_deletion_fields() -> None:
    given = pod(deletionTimestamp="x", uid="mine")
    new = created(POD, "default", "a", given, uid="u1", resource_version="9", now=NOW)
    assert new["metadata"] == {
        "name": "a",
        "namespace": "default",
        "resourceVersion": "9",
        "generation": 1,
        "uid": "u1",
        "creationTimestamp": format_timestamp(NOW),
    }
    assert given["metadata"]["deletionTimestamp"] == "x"  # the caller's object is not changed


def test_replaced_keeps_system_metadata_and_bumps_generation_on_spec_changes() -> None:
    stored = pod(uid="u1")
    incoming = pod(uid="other", labels={"k": "v"})
    same_spec = replaced(POD, "default", "a", stored, incoming, status_only=False)
    assert same_spec["metadata"]["uid"] == "u1" and same_spec["metadata"]["generation"] == 1
    incoming["spec"] = {"nodeName": "n2"}
    assert replaced(POD, "default", "a", stored, incoming, status_only=False)["metadata"]["generation"] == 2


def test_no_new_finalizer_on_a_terminating_object() -> None:
    stored = pod(deletionTimestamp=format_timestamp(NOW), finalizers=["f1"])
    with pytest.raises(Invalid, match=r"metadata\.finalizers"):
        replaced(POD, "default", "a", stored, pod(finalizers=["f1", "f2"]), status_only=False)
    gone = replaced(POD, "default", "a", stored, pod(finalizers=[]), status_only=False)
    assert ends(gone)


def test_deletion_rules() -> None:
    assert deleted(pod(), None, now=NOW).action == "remove"
    held = deleted(pod(finalizers=["f"]), None, now=NOW)
    assert held.action == "write" and held.obj["metadata"]["deletionGracePeriodSeconds"] == 0
    graceful = deleted(pod(), 30, now=NOW)
    assert graceful.obj["metadata"]["deletionTimestamp"] == format_timestamp(NOW + 30)
    assert deleted(graceful.obj, 60, now=NOW).action == "keep"  # a delete may only shorten it
    shorter = deleted(graceful.obj, 10, now=NOW + 5)
    assert shorter.action == "write" and shorter.obj["metadata"]["deletionTimestamp"] == format_timestamp(
        NOW + 10
    )
    assert deleted(graceful.obj, 0, now=NOW + 5).action == "remove"


def test_grace_period_is_for_pods_only_and_checked() -> None:
    assert grace_period(POD, "d", "a", 5) == 5
    assert grace_period(POOL, "", "p", 5) is None
    with pytest.raises(Invalid, match="gracePeriodSeconds"):
        grace_period(POD, "d", "a", -1)


def test_releasing_the_last_finalizer_removes_and_others_keep_it_terminating() -> None:
    assert finalizer_released(pod(finalizers=["spiderpool"]), "spiderpool", now=NOW).action == "remove"
    kept = finalizer_released(pod(finalizers=["spiderpool", "other"]), "spiderpool", now=NOW)
    assert kept.action == "write" and kept.obj["metadata"]["finalizers"] == ["other"]
    assert kept.obj["metadata"]["deletionTimestamp"] == format_timestamp(NOW)


def test_a_stale_resource_version_is_a_conflict() -> None:
    check_version(POD, "d", "a", "", 7)
    with pytest.raises(Conflict, match="resourceVersion 6 is stale"):
        check_version(POD, "d", "a", "6", 7)
