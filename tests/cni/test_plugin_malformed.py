"""Malformed netconf and environment through the installed plugin file, in a fresh interpreter.

In-process tests cannot see what only a fresh ``python -I -S`` process does (there ``json.decoder``
is not loaded, and the C scanner's syntax errors came out as SystemError tracebacks), so every case
runs the rendered file.  Each gets one CNI error object on stdout and exit 1, and the codes follow
libcni's skel order, checked against the reference ``host-local`` plugin where it runs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cni.conftest import Plugin, Result

HOST_LOCAL = Path("/usr/lib/cni/host-local")
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}  # fmt: skip
POD_ARGS = {"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}
GOOD = b'{"name":"n","cniVersion":"1.0.0","ipam":{"type":"spiderpool","ipam_unix_socket_path":"/nonexistent/a.sock"}}'

MALFORMED = {
    "trailing comma": b'{"name":"n","cniVersion":"1.0.0",}',
    "single quotes": b"{'name':'n'}",
    "unterminated string": b'{"name":"n","cniVersion":"1.0',
    "unterminated object": b'{"name":"n","cniVersion":"1.0.0"',
    "missing value": b'{"name":}',
    "control character in a string": b'{"name":"a\x00b"}',
    "bad escape": b'{"name":"\\q"}',
    "garbage": b"garbage",
    "empty": b"",
    "not utf-8": b'{"name":"\xff"}',
    "over 1 MiB cut mid-string": b'{"name":"n","x":"' + b"y" * (1 << 20),
    "1 MiB cut mid-string": (b'{"name":"n","x":"' + b"y" * (1 << 20))[: 1 << 20],
    "deep nesting": b"[" * 100_000,
}


def error(res: Result) -> dict[str, object]:
    assert res.rc == 1, res
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    assert res.stdout.count("\n") == 1
    body: dict[str, object] = res.json
    assert set(body) <= {"cniVersion", "code", "msg", "details"} and body["msg"]
    assert "\n" not in str(body.get("details", ""))
    return body


def reference_code(env: dict[str, str], stdin: bytes) -> int:
    """The code host-local (libcni's skel) answers, for inputs that fail before its own ADD runs."""
    proc = subprocess.run([str(HOST_LOCAL)], input=stdin, env=env, capture_output=True, timeout=20)
    assert proc.returncode == 1, proc
    return int(json.loads(proc.stdout)["code"])


@pytest.mark.parametrize("stdin", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("args", [POD_ARGS, {}], ids=["with pod args", "without pod args"])
def test_every_malformed_stdin_is_code_6(plugin: Plugin, stdin: bytes, args: dict[str, str]) -> None:
    body = error(plugin.run({**ENV, **args}, stdin))
    assert body["code"] == 6 and body["msg"] == "failed to decode content"
    assert str(body["details"]).startswith("network configuration on stdin ")


@pytest.mark.parametrize("command", ["DEL", "CHECK", "GC", "STATUS"])
def test_malformed_stdin_is_code_6_for_every_command(plugin: Plugin, command: str) -> None:
    assert error(plugin.run({**ENV, "CNI_COMMAND": command}, MALFORMED["trailing comma"]))["code"] == 6


@pytest.mark.parametrize(
    "stdin", [MALFORMED["trailing comma"], MALFORMED["over 1 MiB cut mid-string"], b"\xff"]
)
def test_version_answers_whatever_stdin_holds(plugin: Plugin, stdin: bytes) -> None:
    """skel does not read stdin for VERSION, and the reference plugins answer it whatever it holds."""
    res = plugin.run({"CNI_COMMAND": "VERSION"}, stdin)
    assert res.rc == 0 and "Traceback" not in res.stderr
    assert res.json == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


@pytest.mark.skipif(not HOST_LOCAL.exists(), reason="reference CNI plugins not installed")
@pytest.mark.parametrize(
    ("env", "stdin", "code"),
    [
        ({}, b"garbage", 6),  # the config before CNI_ARGS: K8S_POD_* are missing here
        ({}, b'{"name":"n","cniVersion":"9.9.9"}', 1),
        ({}, b'{"cniVersion":"1.0.0"}', 7),
        ({"CNI_CONTAINERID": "c 1"}, b"garbage", 6),  # the config before the container ID
        ({"CNI_CONTAINERID": "c 1"}, b'{"name":"n","cniVersion":"9.9.9"}', 4),  # the IDs before the version
        ({"CNI_IFNAME": "../x"}, b'{"name":"n","cniVersion":"9.9.9"}', 4),
        ({"CNI_NETNS": ""}, b"garbage", 4),  # missing variables before everything
    ],
)
def test_checks_come_in_skel_order(plugin: Plugin, env: dict[str, str], stdin: bytes, code: int) -> None:
    full = {**ENV, **env}
    assert reference_code(full, stdin) == code
    assert error(plugin.run(full, stdin))["code"] == code


def test_pod_args_are_checked_after_the_whole_config(plugin: Plugin) -> None:
    body = error(plugin.run(ENV, GOOD))
    assert body["code"] == 4 and "K8S_POD_NAMESPACE and K8S_POD_NAME missing" in str(body["details"])
    bad_ipam = GOOD.replace(b'"type":"spiderpool"', b'"type":"spiderpool","subnet":"x"')
    assert error(plugin.run(ENV, bad_ipam))["code"] == 2
    # with the pod's args the same config reaches the (absent) agent: try again later
    assert error(plugin.run({**ENV, **POD_ARGS}, GOOD))["code"] == 11
