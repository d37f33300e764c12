"""The agent's configuration file (YAML), parsed once into frozen values.

```yaml
nodeName: node1                       # required: the Kubernetes node this agent serves (else
                                      #   $SPIDERBGP_NODE_NAME, or nodeNameFromHostname: true)
store: /var/lib/spiderbgp/state.db    # absolute SQLite path, or "kubernetes"
kubeconfig: ~/.kube/config            # with store: kubernetes, outside a cluster
socketPath: /run/spiderbgp/agent.sock # the CNI plugin's socket (absolute, at most 107 bytes)
healthAddress: 127.0.0.1:9710         # /healthz, /readyz, /metrics
log: {level: info, format: text}      # level debug|info|warning|error, format text|json
ipam: {...}                           # see IpamConfig; blockSize: {ipv4: 26, ipv6: 122} is the
                                      #   block size of pools without spiderbgp.io/block-size
bgp: {...}                            # parsed by bgp_speaker.config; absent = IPAM only
```
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ipam import safe_yaml
from ipam.admission import validate_metadata
from ipam.block_default import BlockSizeDefaults
from ipam.blocks import block_size_problem
from ipam.errors import Invalid
from spiderbgp.fields import ConfigError, Fields

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_STORE",
    "AgentConfig",
    "ConfigError",
    "GcConfig",
    "IpamConfig",
    "LeaderConfig",
    "load_agent_config",
    "parse_agent_config",
]

DEFAULT_STORE = "/var/lib/spiderbgp/state.db"
DEFAULT_SOCKET = "/run/spiderbgp/agent.sock"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


@dataclass(frozen=True)
class GcConfig:
    enabled: bool = True
    interval_seconds: float = 600.0  # full scan of every record (Spiderpool's scan-all)
    trace_interval_seconds: float = 5.0  # how often terminating/deleted pods are looked at
    additional_grace_delay_seconds: float = 0.0
    terminating_on_ready_node: bool = True
    terminating_on_not_ready_node: bool = True


@dataclass(frozen=True)
class LeaderConfig:
    enabled: bool = True
    lease_name: str = "spiderbgp-controller"
    lease_namespace: str = "kube-system"
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0


@dataclass(frozen=True)
class IpamConfig:
    enable_ipv4: bool = True
    enable_ipv6: bool = True
    enable_statefulset: bool = True
    enable_spider_subnet: bool = True
    auto_pool_default_flexible_ip_number: int = 1
    conflict_retries: int = 5
    max_allocated_ips_per_pool: int = 5000  # only enforced by the Kubernetes store (one CR string)
    # ipam.blockSize: the block size written onto a pool without spiderbgp.io/block-size at its first
    # allocation (ipam.block_default); none by default: pools stay plain, as in Spiderpool
    block_size: BlockSizeDefaults = field(default_factory=BlockSizeDefaults)
    gc: GcConfig = field(default_factory=GcConfig)
    leader: LeaderConfig = field(default_factory=LeaderConfig)


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    store: str = DEFAULT_STORE
    kubeconfig: str | None = None
    socket_path: str = DEFAULT_SOCKET
    health_host: str = "127.0.0.1"
    health_port: int = 9710
    log_level: str = "info"
    log_format: str = "text"
    ipam: IpamConfig = field(default_factory=IpamConfig)
    bgp: Mapping[str, Any] | None = None  # raw section, parsed by bgp_speaker.config
    source: str = ""


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _valid_host(host: str) -> bool:
    """An IP address, or a DNS host name whose last label is not all digits (so ``256.1.1.1`` and
    ``10.0.0`` are refused here rather than looked up by name when the agent binds)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        return (
            len(host) <= 253
            and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit()
        )
    return True


def _parse_address(f: Fields, key: str, default: str) -> tuple[str, int]:
    text = f.string(key, default)
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise f.error(key, f"must be HOST:PORT (for example 127.0.0.1:9710), not {text!r}")
    if not _valid_host(host):
        raise f.error(key, f"{host!r} is neither an IP address nor a host name")
    return host, int(port_text)


def _object_name(f: Fields, key: str, default: str, kind: str) -> str:
    """The name of an object the agent writes, as Kubernetes validates names of ``kind``."""
    name = f.string(key, default)
    try:
        validate_metadata(kind, False, {"metadata": {"name": name}})
    except Invalid as exc:
        raise f.error(key, exc.reason) from None
    return name


def _block_size(f: Fields, key: str, family: int) -> int | None:
    """``ipam.blockSize.ipv4``/``ipv6``: a prefix length within the annotation's bounds, or absent."""
    value = f.raw(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise f.error(
            key, f"must be a prefix length (an integer, e.g. {26 if family == 4 else 122}), not {value!r}"
        )
    problem = block_size_problem(family, value)
    if problem is not None:
        raise f.error(key, problem)
    return value


def _parse_ipam(f: Fields, source: str) -> IpamConfig:
    gc = f.section("gc")
    gc_config = GcConfig(
        enabled=gc.boolean("enabled", True),
        interval_seconds=gc.number("intervalSeconds", 600.0, minimum=1.0),
        trace_interval_seconds=gc.number("traceIntervalSeconds", 5.0, minimum=0.1, maximum=3600.0),
        additional_grace_delay_seconds=gc.number("additionalGraceDelaySeconds", 0.0),
        terminating_on_ready_node=gc.boolean("terminatingPodOnReadyNode", True),
        terminating_on_not_ready_node=gc.boolean("terminatingPodOnNotReadyNode", True),
    )
    gc.done()
    le = f.section("leaderElection")
    duration = le.number("leaseDurationSeconds", 15.0, minimum=1.0, maximum=3600.0)
    renew = le.number("renewDeadlineSeconds", 10.0, minimum=0.5, maximum=3600.0)
    retry = le.number("retryPeriodSeconds", 2.0, minimum=0.1, maximum=3600.0)
    if not retry < renew < duration:
        raise le.error("renewDeadlineSeconds", "must lie between retryPeriodSeconds and leaseDurationSeconds")
    leader = LeaderConfig(
        enabled=le.boolean("enabled", True),
        lease_name=_object_name(le, "leaseName", "spiderbgp-controller", "Lease"),
        lease_namespace=_object_name(le, "leaseNamespace", "kube-system", "Namespace"),
        lease_duration_seconds=duration,
        renew_deadline_seconds=renew,
        retry_period_seconds=retry,
    )
    le.done()
    bs = f.section("blockSize")
    block_size = BlockSizeDefaults(ipv4=_block_size(bs, "ipv4", 4), ipv6=_block_size(bs, "ipv6", 6))
    bs.done()
    config = IpamConfig(
        enable_ipv4=f.boolean("enableIPv4", True),
        enable_ipv6=f.boolean("enableIPv6", True),
        enable_statefulset=f.boolean("enableStatefulSet", True),
        enable_spider_subnet=f.boolean("enableSpiderSubnet", True),
        auto_pool_default_flexible_ip_number=f.integer(
            "clusterSubnetDefaultFlexibleIPNumber", 1, minimum=0, maximum=65536
        ),
        conflict_retries=f.integer("conflictRetries", 5, minimum=1, maximum=100),
        max_allocated_ips_per_pool=f.integer("maxAllocatedIPsPerPool", 5000, minimum=1, maximum=1_000_000),
        gc=gc_config,
        leader=leader,
        block_size=block_size,
    )
    f.done()
    if not (config.enable_ipv4 or config.enable_ipv6):
        raise ConfigError(source, "ipam.enableIPv4", "at least one of enableIPv4 and enableIPv6 must be true")
    return config


def _node_name(f: Fields, default_node_name: str | None, hostname: Callable[[], str]) -> str:
    """``nodeName``, else $SPIDERBGP_NODE_NAME (``default_node_name``), else this host's name when the
    config opts in with ``nodeNameFromHostname: true``; a DNS-1123 subdomain as Kubernetes names nodes."""
    from_hostname = f.boolean("nodeNameFromHostname", False)
    name = f.optional_string("nodeName")
    key = "nodeName"
    if name is None:
        name = default_node_name or (hostname() if from_hostname else None)
        if from_hostname and not default_node_name:
            key = "nodeNameFromHostname"
    if not name:
        raise f.error(
            "nodeName",
            "is required: the Kubernetes node this agent serves (or set $SPIDERBGP_NODE_NAME, or "
            "nodeNameFromHostname: true to take this host's name)",
        )
    try:
        validate_metadata("Node", False, {"metadata": {"name": name}})
    except Invalid as exc:
        raise f.error(key, exc.reason) from None
    return name


def _socket_path(f: Fields) -> str:
    path = f.path("socketPath", DEFAULT_SOCKET)
    assert path is not None  # it has a default
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise f.error("socketPath", f"must be at most {MAX_SOCKET_PATH} bytes (a unix socket path)")
    return path


def _store(f: Fields) -> str:
    store = f.string("store", DEFAULT_STORE)
    return store if store == "kubernetes" else str(f.path("store", DEFAULT_STORE))


def parse_agent_config(
    raw: object,
    *,
    source: str,
    default_node_name: str | None = None,
    hostname: Callable[[], str] = socket.gethostname,
) -> AgentConfig:
    """Validate a parsed YAML document; raises ConfigError naming the field.  ``default_node_name``:
    $SPIDERBGP_NODE_NAME, used when the file has no ``nodeName``; ``hostname`` is asked only when the
    file says ``nodeNameFromHostname: true``."""
    f = Fields(raw, source=source)
    node_name = _node_name(f, default_node_name, hostname)
    health_host, health_port = _parse_address(f, "healthAddress", "127.0.0.1:9710")
    log = f.section("log")
    log_level = log.choice("level", "info", ("debug", "info", "warning", "error"))
    log_format = log.choice("format", "text", ("text", "json"))
    log.done()
    ipam = _parse_ipam(f.section("ipam"), source)
    bgp = f.raw("bgp")
    if bgp is not None and not isinstance(bgp, Mapping):
        raise f.error("bgp", "must be a mapping")
    config = AgentConfig(
        node_name=node_name,
        store=_store(f),
        kubeconfig=f.path("kubeconfig"),
        socket_path=_socket_path(f),
        health_host=health_host,
        health_port=health_port,
        log_level=log_level,
        log_format=log_format,
        ipam=ipam,
        bgp=bgp,
        source=source,
    )
    f.done()
    return config


def load_agent_config(path: str | Path, *, default_node_name: str | None = None) -> AgentConfig:
    """Read and validate a config file; every failure is a ConfigError with one line.  Without
    ``nodeName`` in the file the node is ``default_node_name`` (the agent passes $SPIDERBGP_NODE_NAME,
    e.g. from the downward API's spec.nodeName), else the hostname if the file opts in with
    ``nodeNameFromHostname: true``; an empty file is refused (it names no node)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", "is not UTF-8 text") from None
    try:
        raw = safe_yaml.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(source, "", f"{where}{problem}") from None
    return parse_agent_config(raw, source=source, default_node_name=default_node_name)
