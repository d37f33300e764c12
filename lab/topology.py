"""The lab topology, read from a containerlab file (``lab/seed.clab.yml``) into frozen values.

Pure functions only: parsing, ``${VAR}`` / ``${VAR:=default}`` expansion (containerlab expands the
environment in topology files the same way), the checks of containerlab's schema rules that matter
here, and the translation of container paths into the host paths that stand in for a node's binds
when the lab runs as namespaces + host processes instead of containers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "FRR_IMAGE_PREFIXES",
    "KNOWN_KINDS",
    "Bind",
    "Endpoint",
    "Link",
    "Node",
    "Topology",
    "TopologyError",
    "expand_env",
    "load_topology",
    "parse_topology",
    "topology_problems",
    "translate_paths",
]

# The containerlab kinds a plain-Linux lab may use (containerlab has many more, for vendor NOSes).
KNOWN_KINDS = frozenset({"linux", "bridge", "ovs-bridge", "host"})
# Images whose entry point is FRR (the namespace builder starts FRR for them instead of a container).
FRR_IMAGE_PREFIXES = ("quay.io/frrouting/frr", "frrouting/frr", "docker.io/frrouting/frr")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # Linux IFNAMSIZ: at most 15 characters
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::=([^}]*))?\}")


class TopologyError(ValueError):
    """One line: ``<file>: <field>: <reason>``."""


@dataclass(frozen=True)
class Bind:
    host: str  # absolute, resolved against the topology file's directory
    container: str
    read_only: bool = False


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    image: str
    binds: tuple[Bind, ...] = ()
    exec: tuple[str, ...] = ()
    cmd: str = ""
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def is_frr(self) -> bool:
        return self.image.startswith(FRR_IMAGE_PREFIXES)

    def bind_for(self, container_path: str) -> Bind | None:
        for bind in self.binds:
            if bind.container == container_path:
                return bind
        return None

    def label(self, key: str, default: str = "") -> str:
        return dict(self.labels).get(key, default)


@dataclass(frozen=True)
class Endpoint:
    node: str
    iface: str

    def __str__(self) -> str:
        return f"{self.node}:{self.iface}"


@dataclass(frozen=True)
class Link:
    a: Endpoint
    b: Endpoint


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    source: str = ""

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"{self.source}: no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def links_of(self, node: str) -> list[tuple[Endpoint, Endpoint]]:
        """(local endpoint, remote endpoint) for every link touching ``node``."""
        out: list[tuple[Endpoint, Endpoint]] = []
        for link in self.links:
            if link.a.node == node:
                out.append((link.a, link.b))
            if link.b.node == node:
                out.append((link.b, link.a))
        return out


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:=default}`` like containerlab does; unknown without default -> ''."""

    def sub(m: re.Match[str]) -> str:
        value = env.get(m.group(1))
        if value:
            return value
        return m.group(2) or ""

    return _ENV.sub(sub, text)


def _str_list(raw: Any, where: str, source: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise TopologyError(f"{source}: {where}: must be a list of strings")
    return tuple(raw)


def _str_map(raw: Any, where: str, source: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise TopologyError(f"{source}: {where}: must be a mapping")
    return tuple((str(k), str(v)) for k, v in raw.items())


def _parse_bind(text: str, base: Path, where: str, source: str) -> Bind:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise TopologyError(
            f"{source}: {where}: {text!r} is not HOST:CONTAINER[:ro|rw] with an absolute container path"
        )
    host = Path(parts[0])
    if not host.is_absolute():
        host = base / host
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise TopologyError(f"{source}: {where}: mode {mode!r} must be ro or rw")
    return Bind(
        host=str(Path(_normalize(str(host)))), container=parts[1].rstrip("/") or "/", read_only=mode == "ro"
    )


def _normalize(path: str) -> str:
    parts: list[str] = []
    for piece in path.split("/"):
        if piece in ("", "."):
            continue
        if piece == "..":
            if parts:
                parts.pop()
            continue
        parts.append(piece)
    return "/" + "/".join(parts)


def _parse_endpoint(text: Any, where: str, source: str) -> Endpoint:
    if not isinstance(text, str) or text.count(":") != 1:
        raise TopologyError(f'{source}: {where}: {text!r} must be "node:interface"')
    node, iface = text.split(":")
    return Endpoint(node, iface)


def parse_topology(raw: Any, *, source: str, base: Path) -> Topology:
    """Turn the parsed YAML of a .clab.yml file into a Topology (structure only; see
    ``topology_problems`` for the cross-checks)."""
    if not isinstance(raw, dict):
        raise TopologyError(f"{source}: must be a mapping with name and topology")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise TopologyError(f"{source}: name: is required")
    topo = raw.get("topology")
    if not isinstance(topo, dict):
        raise TopologyError(f"{source}: topology: is required and must be a mapping")
    defaults = topo.get("defaults") or {}
    kinds = topo.get("kinds") or {}
    raw_nodes = topo.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        raise TopologyError(f"{source}: topology.nodes: must be a non-empty mapping")
    nodes: list[Node] = []
    for node_name, spec in raw_nodes.items():
        where = f"topology.nodes.{node_name}"
        spec = spec or {}
        if not isinstance(spec, dict):
            raise TopologyError(f"{source}: {where}: must be a mapping")
        kind = spec.get("kind") or defaults.get("kind")
        if not isinstance(kind, str):
            raise TopologyError(f"{source}: {where}.kind: is required (here or in topology.defaults)")
        inherited = {**defaults, **(kinds.get(kind) or {})}
        merged = {**inherited, **spec}
        image = merged.get("image", "")
        cmd = merged.get("cmd", "")
        if not isinstance(image, str) or not isinstance(cmd, str):
            raise TopologyError(f"{source}: {where}: image and cmd must be strings")
        binds = tuple(
            _parse_bind(b, base, f"{where}.binds[{i}]", source)
            for i, b in enumerate(_str_list(merged.get("binds"), f"{where}.binds", source))
        )
        nodes.append(
            Node(
                name=str(node_name),
                kind=kind,
                image=image,
                binds=binds,
                exec=_str_list(merged.get("exec"), f"{where}.exec", source),
                cmd=cmd,
                env=_str_map(merged.get("env"), f"{where}.env", source),
                labels=_str_map(merged.get("labels"), f"{where}.labels", source),
            )
        )
    raw_links = topo.get("links") or []
    if not isinstance(raw_links, list):
        raise TopologyError(f"{source}: topology.links: must be a list")
    links: list[Link] = []
    for i, item in enumerate(raw_links):
        where = f"topology.links[{i}].endpoints"
        eps = item.get("endpoints") if isinstance(item, dict) else None
        if not isinstance(eps, list) or len(eps) != 2:
            raise TopologyError(f'{source}: {where}: must be a list of two "node:interface" strings')
        links.append(Link(_parse_endpoint(eps[0], where, source), _parse_endpoint(eps[1], where, source)))
    return Topology(name=name, nodes=tuple(nodes), links=tuple(links), source=source)


def topology_problems(topo: Topology) -> list[str]:
    """containerlab's rules that matter here: valid names and kinds, an image for container kinds,
    endpoints that name existing nodes and valid interface names, each interface used once, no
    link from a node to itself.  Returns one line per problem (empty when the file is fine)."""
    problems: list[str] = []
    names = {n.name for n in topo.nodes}
    if not _NAME.match(topo.name):
        problems.append(f"name: {topo.name!r} is not a valid lab name")
    for node in topo.nodes:
        where = f"topology.nodes.{node.name}"
        if not _NAME.match(node.name):
            problems.append(f"{where}: {node.name!r} is not a valid node name")
        if node.kind not in KNOWN_KINDS:
            problems.append(f"{where}.kind: {node.kind!r} is not one of {sorted(KNOWN_KINDS)}")
        if node.kind == "linux" and not node.image:
            problems.append(f"{where}.image: a linux node needs an image")
        seen: set[str] = set()
        for bind in node.binds:
            if bind.container in seen:
                problems.append(f"{where}.binds: {bind.container} is bound twice")
            seen.add(bind.container)
    used: set[tuple[str, str]] = set()
    for i, link in enumerate(topo.links):
        where = f"topology.links[{i}]"
        if link.a.node == link.b.node and link.a.iface == link.b.iface:
            problems.append(f"{where}: connects {link.a} to itself")
        for ep in (link.a, link.b):
            if ep.node not in names:
                problems.append(f"{where}: endpoint {ep} names no node of topology.nodes")
            if not _IFACE.match(ep.iface):
                problems.append(f"{where}: endpoint {ep}: {ep.iface!r} is not a valid interface name")
            if (ep.node, ep.iface) in used:
                problems.append(f"{where}: endpoint {ep} is already used by another link")
            used.add((ep.node, ep.iface))
    return problems


def load_topology(path: Path, env: Mapping[str, str]) -> Topology:
    """Read, expand ``${VAR:=default}`` with ``env``, parse and check a .clab.yml file."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(expand_env(text, env))
    except yaml.YAMLError as exc:
        raise TopologyError(f"{source}: invalid YAML: {exc}") from None
    topo = parse_topology(raw, source=source, base=path.resolve().parent)
    problems = topology_problems(topo)
    if problems:
        raise TopologyError(f"{source}: {problems[0]}")
    return topo


def translate_paths(text: str, mounts: Sequence[tuple[str, str]]) -> str:
    """Rewrite container paths in ``text`` into host paths, given (container, host) mount pairs.

    A path is rewritten when it starts at a path boundary (start of text, whitespace, a quote, ``=``,
    ``:``, ``,``, ``[`` or ``(``) with a mounted container path followed by ``/`` or a non-path
    character; the longest mount wins.  ``/run/spiderbgp/agent.sock`` with ``/run/spiderbgp ->
    /tmp/x/node1`` becomes ``/tmp/x/node1/agent.sock``; ``/run/spiderbgpx`` is left alone."""
    ordered = sorted(mounts, key=lambda m: len(m[0]), reverse=True)
    if not ordered:
        return text
    alternatives = "|".join(re.escape(c) for c, _ in ordered)
    pattern = re.compile(r"(?<![A-Za-z0-9_.\-/~])(" + alternatives + r")(?=/|[^A-Za-z0-9_.\-]|$)")
    table = dict(ordered)
    return pattern.sub(lambda m: table[m.group(1)], text)
