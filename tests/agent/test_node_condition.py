"""spiderbgp.node_condition: the Node's NetworkUnavailable condition, set without touching the rest."""

from __future__ import annotations

from typing import Any

from spiderbgp.node_condition import with_network_condition


def test_sets_flips_and_keeps_the_other_conditions() -> None:
    node: dict[str, Any] = {
        "kind": "Node",
        "metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready"}]},
    }
    down = with_network_condition(node, unavailable=True, message="peer x down", now="T1")
    assert down is not None
    assert down["status"]["conditions"] == [
        {"type": "Ready"},
        {
            "type": "NetworkUnavailable",
            "status": "True",
            "reason": "SpiderbgpNotReady",
            "message": "peer x down",
            "lastTransitionTime": "T1",
            "lastHeartbeatTime": "T1",
        },
    ]
    assert node["status"]["conditions"] == [{"type": "Ready"}]  # the input is not changed
    assert with_network_condition(down, unavailable=True, message="peer x down", now="T2") is None
    other = with_network_condition(down, unavailable=True, message="peer y down", now="T2")
    assert other is not None and other["status"]["conditions"][1]["lastTransitionTime"] == "T1"
    up = with_network_condition(down, unavailable=False, message="ok", now="T3")
    assert up is not None
    cond = up["status"]["conditions"][1]
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == ("False", "SpiderbgpIsUp", "T3")


def test_a_node_without_status_gets_one() -> None:
    made = with_network_condition({"kind": "Node"}, unavailable=True, message="m", now="T")
    assert made is not None and made["status"]["conditions"][0]["type"] == "NetworkUnavailable"
