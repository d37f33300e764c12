"""lab/seed.clab.yml against containerlab's schema rules that matter, and the pure helpers of
lab.topology (env expansion, path translation) -- no root needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lab.build import ROLE_LABEL, SEED_TOPOLOGY
from lab.topology import (
    KNOWN_KINDS,
    TopologyError,
    expand_env,
    load_topology,
    parse_topology,
    topology_problems,
    translate_paths,
)

ENV = {"SBGP_RUN": "/tmp/sbgp-test-run"}


def test_seed_topology_follows_containerlab_rules() -> None:
    topo = load_topology(SEED_TOPOLOGY, ENV)
    assert topology_problems(topo) == []
    assert topo.name == "sbgp-seed"
    assert {n.name for n in topo.nodes} == {"router", "node1", "node2", "client"}
    assert all(n.kind in KNOWN_KINDS and n.image for n in topo.nodes)
    endpoints = [str(ep) for link in topo.links for ep in (link.a, link.b)]
    assert len(endpoints) == len(set(endpoints)), "each interface is used once"
    assert all(ep.split(":")[0] in {n.name for n in topo.nodes} for ep in endpoints)


def test_seed_topology_has_the_seeds_addresses_and_files() -> None:
    topo = load_topology(SEED_TOPOLOGY, ENV)
    router = topo.node("router")
    assert router.is_frr
    assert "ip addr add 172.16.13.1/24 dev br0" in router.exec
    assert "ip addr add 172.16.13.11/24 dev eth1" in topo.node("node1").exec
    assert "ip addr add 172.16.13.21/24 dev eth1" in topo.node("node2").exec
    assert topo.node("client").label(ROLE_LABEL) == "client"
    for node in topo.nodes:
        for bind in node.binds:
            if not bind.host.startswith(ENV["SBGP_RUN"]):
                assert Path(bind.host).is_file(), f"{node.name}: bind source {bind.host} is missing"
    frr_conf = Path(router.bind_for("/etc/frr/frr.conf").host).read_text()  # type: ignore[union-attr]
    for line in (
        "router bgp 23000",
        "bgp router-id 172.16.13.1",
        "neighbor 172.16.13.11 remote-as 64512",
        "neighbor 172.16.13.21 remote-as 64512",
        "no bgp ebgp-requires-policy",
        "bgp log-neighbor-changes",
    ):
        assert line in frr_conf


def test_seed_topology_shares_one_store_and_separates_sockets() -> None:
    topo = load_topology(SEED_TOPOLOGY, ENV)
    n1, n2 = topo.node("node1"), topo.node("node2")
    assert n1.bind_for("/var/lib/spiderbgp").host == n2.bind_for("/var/lib/spiderbgp").host  # type: ignore[union-attr]
    assert n1.bind_for("/run/spiderbgp").host != n2.bind_for("/run/spiderbgp").host  # type: ignore[union-attr]


def _raw(**override: object) -> dict[str, object]:
    raw = yaml.safe_load(expand_env(SEED_TOPOLOGY.read_text(), ENV))
    raw["topology"].update(override)
    return raw  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("links", "needle"),
    [
        ([{"endpoints": ["router:eth1", "nowhere:eth1"]}], "names no node"),
        (
            [{"endpoints": ["router:eth1", "node1:eth1"]}, {"endpoints": ["router:eth1", "node2:eth1"]}],
            "already used",
        ),
        ([{"endpoints": ["router:eth1", "node1:this-name-is-too-long0"]}], "not a valid interface name"),
        ([{"endpoints": ["router:eth1", "router:eth1"]}], "to itself"),
    ],
)
def test_broken_links_are_reported(links: list[object], needle: str) -> None:
    topo = parse_topology(_raw(links=links), source="t.clab.yml", base=SEED_TOPOLOGY.parent)
    assert any(needle in p for p in topology_problems(topo))


def test_unknown_kind_and_bad_endpoint_syntax() -> None:
    raw = _raw()
    raw["topology"]["nodes"]["client"]["kind"] = "docker"  # type: ignore[index]
    topo = parse_topology(raw, source="t.clab.yml", base=SEED_TOPOLOGY.parent)
    assert any("client.kind" in p for p in topology_problems(topo))
    with pytest.raises(TopologyError, match=r"links\[0\]"):
        parse_topology(_raw(links=[{"endpoints": ["router-eth1", "node1:eth1"]}]), source="t", base=Path("/"))


def test_expand_env_uses_value_then_default() -> None:
    assert expand_env("${A:=x}/${B:=y}/${C}", {"A": "1"}) == "1/y/"


def test_translate_paths_respects_boundaries() -> None:
    mounts = [("/run/spiderbgp", "/h/run"), ("/run/spiderbgp/bgp", "/h/bgp"), ("/var/lib/spiderbgp", "/h/db")]
    text = (
        'socketPath: /run/spiderbgp/agent.sock\nx: "/run/spiderbgpx" /run/spiderbgp/bgp/a /var/lib/spiderbgp'
    )
    assert translate_paths(text, mounts) == (
        'socketPath: /h/run/agent.sock\nx: "/run/spiderbgpx" /h/bgp/a /h/db'
    )


_segment = st.text(alphabet="abcdefghij", min_size=1, max_size=5)


@given(
    st.lists(_segment, min_size=1, max_size=3),
    st.lists(_segment, max_size=3),
    st.sampled_from([" ", "\n", '"', "="]),
)
def test_translate_maps_every_path_under_a_mount(mount: list[str], rest: list[str], sep: str) -> None:
    container = "/" + "/".join(mount)
    path = "/".join([container, *rest])
    out = translate_paths(f"a{sep}{path}{sep}b", [(container, "/host")])
    assert out == f"a{sep}" + "/".join(["/host", *rest]) + f"{sep}b"
