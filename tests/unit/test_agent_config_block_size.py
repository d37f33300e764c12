"""The agent config's ``ipam.blockSize`` (issue 15): per family, optional, bounded as the annotation
(Calico's /20../32 and /116../128); absent means no default (pools stay plain); each bad value is one
line naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam import safe_yaml
from ipam.block_default import BlockSizeDefaults
from ipam.blocks import block_size_problem
from spiderbgp.config import parse_agent_config
from spiderbgp.fields import ConfigError


def _parse(ipam: object) -> BlockSizeDefaults:
    raw: dict[str, Any] = {"nodeName": "node1", "ipam": ipam}
    return parse_agent_config(raw, source="a.yaml").ipam.block_size


def test_no_block_size_is_the_default() -> None:
    assert _parse(None) == BlockSizeDefaults(ipv4=None, ipv6=None)
    assert _parse({"blockSize": None}) == BlockSizeDefaults()
    assert _parse({"blockSize": {}}) == BlockSizeDefaults()


def test_each_family_is_optional() -> None:
    assert _parse({"blockSize": {"ipv4": 26, "ipv6": 122}}) == BlockSizeDefaults(ipv4=26, ipv6=122)
    assert _parse({"blockSize": {"ipv6": 116}}) == BlockSizeDefaults(ipv6=116)
    assert _parse({"blockSize": {"ipv4": 32}}) == BlockSizeDefaults(ipv4=32)


@given(family=st.sampled_from((4, 6)), size=st.integers(-5, 140))
def test_a_size_is_taken_exactly_within_the_annotations_bounds(family: int, size: int) -> None:
    key = f"ipv{family}"
    if block_size_problem(family, size) is None:
        assert _parse({"blockSize": {key: size}}).of(family) == size
    else:
        with pytest.raises(ConfigError) as info:
            _parse({"blockSize": {key: size}})
        assert str(info.value).startswith(f"a.yaml: ipam.blockSize.{key}: /{size} must be between /")
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("ipam", "message"),
    [
        (
            {"blockSize": {"ipv4": 16}},
            "a.yaml: ipam.blockSize.ipv4: /16 must be between /20 and /32 for IPv4 (a block is one object "
            "holding its records: at most 4,096 addresses)",
        ),
        (
            {"blockSize": {"ipv6": 64}},
            "a.yaml: ipam.blockSize.ipv6: /64 must be between /116 and /128 for IPv6 (a block is one object "
            "holding its records: at most 4,096 addresses)",
        ),
        (
            {"blockSize": {"ipv4": "26"}},
            "a.yaml: ipam.blockSize.ipv4: must be a prefix length (an integer, e.g. 26), not '26'",
        ),
        (
            {"blockSize": {"ipv6": True}},
            "a.yaml: ipam.blockSize.ipv6: must be a prefix length (an integer, e.g. 122), not True",
        ),
        ({"blockSize": {"ipv4": 26.0}}, "a.yaml: ipam.blockSize.ipv4: must be a prefix length"),
        ({"blockSize": {"v4": 26}}, "a.yaml: ipam.blockSize.v4: unknown field"),
        ({"blockSize": 26}, "a.yaml: ipam.blockSize: must be a mapping, not int"),
    ],
)
def test_a_bad_block_size_is_one_line_naming_the_field(ipam: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(ipam)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_the_configmaps_commented_example_is_a_valid_setting() -> None:
    """configs/kubernetes/configmap.yaml documents the key as a commented line; uncommented, it parses."""
    text = (Path(__file__).parents[2] / "configs/kubernetes/configmap.yaml").read_text(encoding="utf-8")
    (line,) = [x for x in text.splitlines() if x.strip().startswith("# blockSize:")]
    example = safe_yaml.load(line.strip().removeprefix("# ").split(" #")[0])
    assert _parse(example) == BlockSizeDefaults(ipv4=26, ipv6=122)
