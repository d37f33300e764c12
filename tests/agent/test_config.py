"""``spiderbgp agent --config F`` with a bad config, or a config it cannot serve with: exit 1, one line on
stderr naming the file (or path) and the field, no traceback, no socket file or database left behind."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from bgp_speaker.config import BgpConfigError, parse_bgp_config
from ipam import safe_yaml
from spiderbgp.config import load_agent_config, parse_agent_config
from spiderbgp.fields import ConfigError
from tests.agent.conftest import SPIDERBGP, AgentFactory, free_port

# run_agent(isolated=True) puts the agent in a network namespace of its own (unshare --net): root only,
# so those tests carry the netns marker (``make unit`` deselects them) and skip without root
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare --net")


def run_agent(
    config: Path, timeout: float = 20.0, *, isolated: bool = False
) -> subprocess.CompletedProcess[str]:
    """``isolated``: in a network namespace of its own with no interface up (``unshare --net``): a
    config with a bgp section, even if wrongly accepted, cannot reach a peer, and a host name in
    healthAddress is never sent to the machine's resolver."""
    prefix = ["unshare", "--net"] if isolated else []
    return subprocess.run(
        [*prefix, SPIDERBGP, "agent", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin"},
    )


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in proc.stderr and "internal error" not in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


BAD_CONFIGS = [
    # (id, YAML body after the common head, the field the line must name)
    ("yaml-syntax", "ipam: {gc: [\n", "line "),
    ("yaml-tab", "ipam:\n\tgc: {}\n", "line "),
    ("top-level-list", None, "(top level)"),
    ("unknown-key", "bogus: 1\n", "bogus: unknown field"),
    ("unknown-nested-key", "ipam: {gc: {intervall: 5}}\n", "ipam.gc.intervall: unknown field"),
    ("wrong-type-int", "ipam: {conflictRetries: many}\n", "ipam.conflictRetries"),
    ("wrong-type-bool", "ipam: {enableIPv4: 'yes'}\n", "ipam.enableIPv4"),
    ("wrong-type-number", "ipam: {gc: {traceIntervalSeconds: soon}}\n", "ipam.gc.traceIntervalSeconds"),
    ("wrong-type-section", "log: verbose\n", "log"),
    ("bad-log-level", "log: {level: loud}\n", "log.level"),
    ("no-family", "ipam: {enableIPv4: false, enableIPv6: false}\n", "ipam.enableIPv4"),
    (
        "lease-timings",
        "ipam: {leaderElection: {leaseDurationSeconds: 2, renewDeadlineSeconds: 3}}\n",
        "ipam.leaderElection.renewDeadlineSeconds",
    ),
    ("health-no-port", "healthAddress: localhost\n", "healthAddress"),
    ("health-port-range", "healthAddress: 127.0.0.1:70000\n", "healthAddress"),
    ("health-port-text", "healthAddress: '127.0.0.1:http'\n", "healthAddress"),
    ("health-bad-host", "healthAddress: '256.1.1.1:9710'\n", "healthAddress"),
    ("health-bad-name", "healthAddress: 'no_such host:9710'\n", "healthAddress"),
    ("health-unknown-name", "healthAddress: 'no-such-host.invalid:9710'\n", "healthAddress"),
    ("bgp-not-mapping", "bgp: 5\n", "bgp"),
    ("bgp-missing-field", "bgp: {asn: 64512}\n", "bgp."),
    # a misspelt key (and so no peers): the agent can never start a session to anything
    (
        "bgp-unknown-field",
        "bgp: {asn: 64512, nextHop: 10.0.0.1, peers: [{address: 10.0.0.2, asn: 65000, holdtime: 9}]}\n",
        "bgp.peers[0].holdtime: unknown field",
    ),
    (
        "bgp-bad-peer",
        "bgp: {asn: 64512, nextHop: 10.0.0.1, peers: [{address: 10.0.0.2, asn: many}]}\n",
        "bgp.peers",
    ),
    ("socket-path-empty", "socketPath: ''\n", "socketPath"),
]


@pytest.mark.netns
@NEEDS_ROOT
@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in BAD_CONFIGS], ids=[i for i, _, _ in BAD_CONFIGS]
)
def test_bad_config_is_one_line(tmp_path: Path, body: str | None, field: str) -> None:
    config = tmp_path / "agent.yaml"
    db = tmp_path / "state" / "state.db"
    sock = tmp_path / "run" / "agent.sock"
    head = f"nodeName: node1\nstore: {db}\nsocketPath: {sock}\n"
    if body is None:
        config.write_text("- nodeName: node1\n")
    elif body.startswith("socketPath"):
        config.write_text(f"nodeName: node1\nstore: {db}\n{body}")
    else:
        config.write_text(head + body)
    assert_one_line(run_agent(config, isolated=True), str(config), field)
    assert not sock.exists() and not sock.parent.exists(), "a bad config must not create the socket"
    if "no-such-host" not in (body or ""):  # found out only when binding, after the store opened
        assert not db.exists(), "a bad config must not create the database"


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_one_line(run_agent(missing), str(missing), "cannot read")


def test_socket_dir_cannot_be_made(tmp_path: Path) -> None:
    """The socket's parent cannot be created (a file is in the way): one line naming socketPath."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"nodeName: node1\nstore: {tmp_path / 'state.db'}\nsocketPath: {blocker / 'run' / 'agent.sock'}\n"
        f"healthAddress: 127.0.0.1:{free_port()}\n"
    )
    assert_one_line(run_agent(config), str(config), "socketPath")


def test_health_port_in_use_leaves_no_socket(tmp_path: Path) -> None:
    """healthAddress taken by another listener: one line naming healthAddress, and the CNI socket
    bound before it is removed again (a stale socket would look like a live agent to nobody)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        sock = tmp_path / "run" / "agent.sock"
        config = tmp_path / "agent.yaml"
        config.write_text(
            f"nodeName: node1\nstore: {tmp_path / 'state.db'}\nsocketPath: {sock}\n"
            f"healthAddress: 127.0.0.1:{port}\n"
        )
        assert_one_line(run_agent(config), str(config), "healthAddress", str(port))
    assert not sock.exists()


def test_second_agent_on_a_live_socket(tmp_path: Path, agents: AgentFactory) -> None:
    """A second agent pointed at the socket a live agent serves: one line naming socketPath; the
    first agent keeps serving on its socket."""
    first = agents("node1")
    config = tmp_path / "second.yaml"
    config.write_text(
        f"nodeName: node1\nstore: {first.config['store']}\nsocketPath: {first.socket_path}\n"
        f"healthAddress: 127.0.0.1:{free_port()}\n"
    )
    assert_one_line(run_agent(config), str(config), "socketPath", str(first.socket_path))
    assert first.socket_path.is_socket()
    assert first.http("/readyz")[0] == 200


@pytest.mark.parametrize("kind", ["not-sqlite", "directory"])
def test_unusable_store_names_the_store_field(tmp_path: Path, kind: str) -> None:
    """A store path that is not a usable database: one line naming the file and ``store``; a foreign
    file is left exactly as it was."""
    store = tmp_path / "state.db"
    if kind == "directory":
        store.mkdir()
    else:
        store.write_bytes(b"not a database\n" * 100)
    before = None if kind == "directory" else store.read_bytes()
    sock = tmp_path / "run" / "agent.sock"
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"nodeName: node1\nstore: {store}\nsocketPath: {sock}\nhealthAddress: 127.0.0.1:{free_port()}\n"
    )
    assert_one_line(run_agent(config), f"{config}: store: {store}")
    assert not sock.exists()
    if before is not None:
        assert store.read_bytes() == before


# ------------------------------------------------------------------ issue 12, item 7: validation gaps

HEAD = "nodeName: node1\nstore: /tmp/x/state.db\nsocketPath: /tmp/x/agent.sock\n"
BGP = "bgp: {asn: 64512, nextHop: 10.0.0.1, peers: [{address: %s, asn: 65000%s}]}\n"


def config_error(text: str, *, env_node: str | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        parse_agent_config(safe_yaml.load(text), source="a.yaml", default_node_name=env_node)
    line = str(err.value)
    assert "\n" not in line and line.startswith("a.yaml: ")
    return line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a.yaml: nodeName: is required: the Kubernetes node this agent serves"),
        ("nodeName: " + "n" * 300 + "\n", "a.yaml: nodeName: 'nnnn"),
        ("nodeName: Node_1\n", "a.yaml: nodeName: 'Node_1' must be a DNS-1123 subdomain"),
        (HEAD.replace("/tmp/x/agent.sock", "run/agent.sock"), "socketPath: must be an absolute path"),
        (HEAD.replace("/tmp/x/agent.sock", "/" + "s" * 120), "socketPath: must be at most 107 bytes"),
        (HEAD.replace("/tmp/x/state.db", "state.db"), "store: must be an absolute path, not 'state.db'"),
        (HEAD + "kubeconfig: kube/config\n", "kubeconfig: must be an absolute path"),
        (
            HEAD + "ipam: {leaderElection: {leaseDurationSeconds: .inf}}\n",
            "ipam.leaderElection.leaseDurationSeconds: must be a finite number, not inf",
        ),
        (
            HEAD + "ipam: {gc: {intervalSeconds: .nan}}\n",
            "ipam.gc.intervalSeconds: must be a finite number, not nan",
        ),
        (
            HEAD + "ipam: {gc: {intervalSeconds: 1000000000}}\n",
            "ipam.gc.intervalSeconds: must be at most 604800",
        ),
        (
            HEAD + "ipam: {maxAllocatedIPsPerPool: 10000000000}\n",
            "ipam.maxAllocatedIPsPerPool: must be at most",
        ),
        (
            HEAD + "ipam: {leaderElection: {leaseName: 'a b'}}\n",
            "ipam.leaderElection.leaseName: 'a b' must be",
        ),
        (
            HEAD + "ipam: {leaderElection: {leaseNamespace: a.b}}\n",
            "leaseNamespace: 'a.b' must be a DNS-1123 label",
        ),
    ],
)
def test_agent_config_gaps(text: str, message: str) -> None:
    assert message in config_error(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
        + "".join(f"{n}: &{n} [{','.join(['*' + p] * 10)}]\n" for p, n in zip("abcde", "bcdef", strict=True)),
    ],
)
def test_yaml_bombs_in_the_agent_config_are_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    assert str(err.value).startswith(f"{path}: line ") and "\n" not in str(err.value)
    assert "nested deeper than 100 levels" in str(err.value) or "aliases expand" in str(err.value)


def test_node_name_comes_from_the_file_the_environment_or_an_explicit_hostname_opt_in() -> None:
    def parse(text: str, env: str | None = None) -> str:
        raw = safe_yaml.load(text)
        return parse_agent_config(raw, source="a", default_node_name=env, hostname=lambda: "host-1").node_name

    assert parse("nodeName: n1\n", env="n2") == "n1"
    assert parse("store: /x.db\n", env="n2") == "n2"
    assert parse("nodeNameFromHostname: true\n") == "host-1"
    # the hostname is validated as nodeName is
    with pytest.raises(ConfigError, match="nodeNameFromHostname: 'Bad_Host' must be a DNS-1123"):
        parse_agent_config({"nodeNameFromHostname": True}, source="a", hostname=lambda: "Bad_Host")


@pytest.mark.parametrize(
    ("address", "extra", "message"),
    [
        ("'fe80::1%eth0'", "", "bgp.peers[0].address: fe80::1%eth0 cannot be a BGP peer: it has a zone"),
        ("'fe80::1'", "", "it is link-local"),
        ("'::ffff:127.0.0.1'", "", "::ffff:7f00:1 cannot be a BGP peer: it is IPv4-mapped (use 127.0.0.1)"),
        ("255.255.255.255", "", "255.255.255.255 cannot be a BGP peer: it is reserved"),
        (
            "10.0.0.2",
            ", localAddress: 0.0.0.0",
            "bgp.peers[0].localAddress: 0.0.0.0 cannot be a local address",
        ),
        ("10.0.0.2", ", passwordFile: router.md5", "bgp.peers[0].passwordFile: must be an absolute path"),
    ],
)
def test_bgp_peer_addresses_must_be_usable(address: str, extra: str, message: str) -> None:
    with pytest.raises(BgpConfigError) as err:
        parse_bgp_config(safe_yaml.load(BGP % (address, extra))["bgp"], source="a.yaml")
    assert message in str(err.value)


def test_bgp_numbers_must_be_finite() -> None:
    raw = safe_yaml.load(BGP % ("10.0.0.2", ""))["bgp"]
    with pytest.raises(BgpConfigError, match=r"bgp\.reconcileInterval: must be a finite number, not nan"):
        parse_bgp_config({**raw, "reconcileInterval": float("nan")}, source="a.yaml")


@pytest.mark.netns
@NEEDS_ROOT
@pytest.mark.parametrize("kind", ["missing", "empty", "directory", "world-readable"])
def test_bad_password_file_is_one_line_not_an_internal_error(tmp_path: Path, kind: str) -> None:
    """The key file is read when the speaker starts: before, every such file was
    ``internal error (BgpConfigError)``, and a 0644 key was used."""
    key = tmp_path / "router.md5"
    if kind == "directory":
        key.mkdir()
    elif kind != "missing":
        key.write_text("" if kind == "empty" else "s3cret\n")
        key.chmod(0o600 if kind == "empty" else 0o644)
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"nodeName: node1\nstore: {tmp_path / 'state.db'}\nsocketPath: {tmp_path / 'agent.sock'}\n"
        f"healthAddress: 127.0.0.1:{free_port()}\n"
        + f"bgp: {{asn: 64512, nextHop: 10.0.0.1, runtimeDir: {tmp_path / 'bgp'}, requireHostRoute: false,\n"
        + f"  peers: [{{address: 10.0.0.2, asn: 65000, passwordFile: {key}}}]}}\n"
    )
    expected = {
        "missing": "No such file or directory",
        "empty": "is empty",
        "directory": "is not a regular file",
        "world-readable": "is readable by others (mode 0644); chmod 600 it",
    }[kind]
    assert_one_line(run_agent(config, isolated=True), "bgp.peers[0].passwordFile", expected)
