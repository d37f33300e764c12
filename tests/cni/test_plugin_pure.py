"""Pure tests of the plugin: env, CNI_ARGS, stdin and netconf parsing, result rendering, HTTP parsing."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni import agent_client, fastjson, netconf
from cni import spiderpool as sp
from cni.wire import AddResponse, IPConfig, Route
from cni.wire_rules import id_problem, interface_name_problem

BASE_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}  # fmt: skip


def code_of(fn: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(netconf.PluginError) as info:
        fn(*args)
    return info.value.code, info.value.details


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
def test_each_missing_env_variable_is_code_4_naming_it(missing: str) -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != missing}
    assert code_of(netconf.parse_env, env) == (4, f"required env variables [{missing}] missing")
    assert code_of(netconf.parse_env, {**env, missing: ""})[0] == 4


def test_missing_variables_listed_together_and_cni_path_optional() -> None:
    assert (
        code_of(netconf.parse_env, {"CNI_COMMAND": "ADD"})[1]
        == "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
    )
    assert netconf.parse_env(BASE_ENV).path == ""
    assert netconf.parse_env({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "a", "CNI_IFNAME": "eth0"}).netns == ""
    assert code_of(netconf.parse_env, {"CNI_COMMAND": "GC"})[1] == "required env variables [CNI_PATH] missing"
    assert netconf.parse_env({"CNI_COMMAND": "STATUS"}).command == "STATUS"
    assert (
        netconf.parse_env({"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy", "CNI_ARGS": "bogus"}).command
        == "VERSION"
    )


@pytest.mark.parametrize("command", ["add", "FOO", ""])
def test_bad_command(command: str) -> None:
    assert code_of(netconf.parse_env, {**BASE_ENV, "CNI_COMMAND": command})[0] == 4


@pytest.mark.parametrize(
    ("cid", "ok"),
    [
        ("abc", True),
        ("A1_b.c-d", True),
        ("9", True),
        ("_a", False),
        ("-a", False),
        ("a/b", False),
        ("a b", False),
        ("é", False),
        ("c" * 256, True),
        ("c" * 257, False),
    ],
)
def test_container_id_rule(cid: str, ok: bool) -> None:
    assert (id_problem(cid) == "") is ok
    if not ok:
        assert code_of(netconf.parse_env, {**BASE_ENV, "CNI_CONTAINERID": cid})[1].startswith(
            "CNI_CONTAINERID:"
        )


@pytest.mark.parametrize("name", ["a" * 16, "é" * 8, ".", "..", "a/b", "a:b", "a b", "a\tb", "a\x00b"])
def test_bad_interface_names(name: str) -> None:
    code, details = code_of(netconf.parse_env, {**BASE_ENV, "CNI_IFNAME": name})
    assert code == 4 and details.startswith("CNI_IFNAME:")


def test_interface_name_limits() -> None:
    assert interface_name_problem("a" * 15) == ""
    assert interface_name_problem("") == "is empty"


def test_cni_args_parsing() -> None:
    args = netconf.parse_cni_args(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=u;FOO=bar"
    )
    assert (args.pod_namespace, args.pod_name, args.pod_uid, args.infra_container_id) == ("ns", "p", "u", "x")
    assert netconf.parse_cni_args("K8S_POD_NAME=p").pod_uid == ""  # UID optional
    assert netconf.parse_cni_args("IgnoreUnknown=TRUE;X=1").pod_name == ""
    assert netconf.parse_cni_args("").pod_name == ""


@pytest.mark.parametrize(("text", "needle"), [("FOO=bar", "unknown key 'FOO'"), ("IgnoreUnknown=0;FOO=1", "unknown key"), ("a=b=c", "KEY=VALUE"),
                                              ("novalue", "KEY=VALUE"), ("IgnoreUnknown=maybe", "IgnoreUnknown"), ("IgnoreUnknown=1;IP=10.0.0.5", "static IP")])  # fmt: skip
def test_cni_args_errors(text: str, needle: str) -> None:
    code, details = code_of(netconf.parse_cni_args, text)
    assert code == 4 and details.startswith("CNI_ARGS:") and needle in details


def test_add_needs_pod_identity() -> None:
    code, details = code_of(netconf.parse_env, {**BASE_ENV, "CNI_ARGS": "K8S_POD_NAME=p"})
    assert code == 4 and "K8S_POD_NAMESPACE" in details and "K8S_POD_NAME " not in details


def conf(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"cniVersion": "1.0.0", "name": "net1", "ipam": {"type": "spiderpool"}}
    base.update(over)
    return base


@pytest.mark.parametrize(("raw", "code"), [(b"", 6), (b"{", 6), (b"[1]", 6), (b"\xff\xfe", 6), (b'{"a":1} x', 6), (b"[" * 100000, 6), (b"{" + b" " * (1 << 20) + b"}", 6),
                                           (b'{"a": NaN}', 6)])  # fmt: skip
def test_stdin_decoding_errors(raw: bytes, code: int) -> None:
    assert code_of(netconf.decode_config, raw)[0] == code


@pytest.mark.parametrize(
    ("over", "code", "needle"),
    [
        ({"name": None}, 7, "name: missing"),
        ({"name": "bad name"}, 7, "name:"),
        ({"cniVersion": "9.9.9"}, 1, 'config is "9.9.9"'),
        ({"cniVersion": "0.2.0"}, 1, "plugin supports"),
        ({"cniVersion": None}, 1, '"0.1.0"'),
        ({"cniVersion": 1}, 6, "cniVersion"),
        ({"ipam": None}, 7, "ipam: missing"),
        ({"ipam": {"type": "host-local"}}, 7, 'ipam.type: expected "spiderpool", got "host-local"'),
        ({"ipam": {"type": "spiderpool", "subnet": "10.0.0.0/8"}}, 2, 'ipam.subnet: "10.0.0.0/8"'),
        ({"ipam": {"type": "spiderpool", "timeout": 0}}, 7, "ipam.timeout"),
        ({"ipam": {"type": "spiderpool", "timeout": True}}, 7, "ipam.timeout"),
        ({"ipam": {"type": "spiderpool", "clean_gateway": "yes"}}, 7, "ipam.clean_gateway"),
        (
            {"ipam": {"type": "spiderpool", "ipam_unix_socket_path": "rel.sock"}},
            7,
            "ipam.ipam_unix_socket_path",
        ),
        ({"ipam": {"type": "spiderpool", "default_ipv4_ippool": [1]}}, 7, "ipam.default_ipv4_ippool"),
        ({"ipam": {"type": "spiderpool", "log_level": "loud"}}, 7, "ipam.log_level"),
        ({"ipam": {"type": "spiderpool", "log_file_path": "x.log"}}, 7, "ipam.log_file_path"),
        ({"args": {"cni": {"ips": ["10.0.0.5/24"]}}}, 2, 'args.cni.ips: ["10.0.0.5/24"]'),
        ({"prevResult": [1]}, 7, "prevResult"),
    ],
)
def test_netconf_errors(over: dict[str, Any], code: int, needle: str) -> None:
    raw = conf(**over)
    raw = {k: v for k, v in raw.items() if v is not None}
    got_code, details = code_of(netconf.parse_config, "ADD", raw)
    assert got_code == code and needle in details, details


def test_netconf_values_and_defaults() -> None:
    c = netconf.parse_config("ADD", conf(ipam={"type": "spiderpool", "default_ipv4_ippool": ["a", "b"], "default_ipv6_ippool": "c", "clean_gateway": True,
                                          "timeout": 2, "log_level": "WARN", "log_file_max_size": 100, "ipam_unix_socket_path": "/x.sock"}, other_top_level_key=1))  # fmt: skip
    assert c.ipam == netconf.IpamConf(
        default_ipv4_ippool=("a", "b"),
        default_ipv6_ippool=("c",),
        clean_gateway=True,
        socket_path="/x.sock",
        timeout=2.0,
        log_level="warn",
    )
    d = netconf.parse_config("DEL", conf()).ipam
    assert (d.socket_path, d.timeout, d.log_level) == ("/run/spiderbgp/agent.sock", 30.0, "info")


def test_gc_needs_valid_attachments() -> None:
    assert code_of(netconf.parse_config, "GC", conf(cniVersion="1.1.0"))[0] == 7
    bad = conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "a"}]})
    assert "valid-attachments[0].ifname" in code_of(netconf.parse_config, "GC", bad)[1]
    ok = netconf.parse_config(
        "GC",
        conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}),
    )
    assert ok.valid_attachments is not None and ok.valid_attachments[0].container_id == "a"


RESPONSE = AddResponse(
    ips=[IPConfig(address="10.1.0.5/16", gateway="10.1.0.1", pool="p4", nic="eth0"), IPConfig(address="fd00::5/64", pool="p6", nic="eth0"),
         IPConfig(address="10.2.0.5/24", pool="other", nic="net1")],
    routes=[Route(if_name="eth0", dst="0.0.0.0/0", gw="10.1.0.1"), Route(if_name="net1", dst="10.9.0.0/16"), Route(if_name="eth0", dst="fd01::/64")],
)  # fmt: skip


@pytest.mark.parametrize("version", netconf.SUPPORTED_VERSIONS)
def test_render_result_per_version(version: str) -> None:
    out = sp.render_result(RESPONSE, "eth0", version)
    legacy = version < "1"
    v4 = {"version": "4"} if legacy else {}
    v6 = {"version": "6"} if legacy else {}
    assert out == {"cniVersion": version, "ips": [{**v4, "address": "10.1.0.5/16", "gateway": "10.1.0.1"}, {**v6, "address": "fd00::5/64"}],
                   "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "fd01::/64"}]}  # fmt: skip
    assert list(out) == ["cniVersion", "ips", "routes"]


def test_render_result_other_interface_and_none() -> None:
    out = sp.render_result(RESPONSE, "net1", "1.1.0")
    assert out["ips"] == [{"address": "10.2.0.5/24"}] and out["routes"] == [{"dst": "10.9.0.0/16"}]
    assert code_of(sp.render_result, RESPONSE, "eth9", "1.1.0")[0] == 105


def test_prev_result_addresses_by_interface() -> None:
    prev = {
        "interfaces": [{"name": "eth0"}, {"name": "veth1"}],
        "ips": [
            {"address": "10.0.0.1/24", "interface": 1},
            {"address": "10.0.0.2/24", "interface": 0},
            {"address": "10.0.0.3/24"},
        ],
    }
    assert sp.prev_result_addresses(prev, "eth0") == ["10.0.0.2/24", "10.0.0.3/24"]
    assert code_of(sp.prev_result_addresses, {"ips": [{"gateway": "x"}]}, "eth0")[0] == 7


def test_version_result_tolerates_anything() -> None:
    assert sp.version_result(b"")["cniVersion"] == "1.1.0"
    assert sp.version_result(b'{"cniVersion":"0.4.0"}')["cniVersion"] == "0.4.0"
    assert sp.version_result(b'{"cniVersion":"7"}')["cniVersion"] == "1.1.0"
    assert sp.version_result(b"\xff[[[")["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_http_response_parsing() -> None:
    assert agent_client.parse_http_response(b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}', "s") == (
        200,
        {"a": 1},
    )
    assert agent_client.parse_http_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n", "s"
    ) == (200, [1, 2])
    assert agent_client.parse_http_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n<html>", "s") == (
        503,
        None,
    )
    assert code_of(agent_client.parse_http_response, b"garbage", "s")[0] == 105
    assert (
        code_of(agent_client.parse_http_response, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}", "s")[0]
        == 105
    )


def test_agent_error_mapping() -> None:
    assert (
        agent_client.agent_error(409, {"code": 100, "msg": "no IP available", "details": "pool p"}, "s").code
        == 100
    )
    assert agent_client.agent_error(503, None, "s").code == 11
    assert agent_client.agent_error(500, {"unexpected": 1}, "s").code == 11
    assert agent_client.agent_error(404, None, "s").code == 105


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_json_codec_matches_stdlib(value: object) -> None:
    text = fastjson.json_dumps(value)
    assert text == json.dumps(value, separators=(",", ":"))
    assert fastjson.json_loads(text) == json.loads(text)
    assert fastjson.json_loads(json.dumps(value, indent=2)) == json.loads(text)


@given(st.text(max_size=40))
def test_json_loads_rejects_what_stdlib_rejects(text: str) -> None:
    try:
        expected: object = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, RecursionError):
        with pytest.raises(ValueError):
            fastjson.json_loads(text)
    else:
        assert fastjson.json_loads(text) == expected


ENV_KEYS = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]


@settings(max_examples=300, deadline=None)
@given(
    env=st.dictionaries(st.sampled_from(ENV_KEYS), st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "eth0", "a=b", "x;y"]) | st.text(max_size=8)),
    stdin=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()) | st.builds(lambda v, i: json.dumps(conf(cniVersion=v, ipam=i)).encode(),
                                                                                                   st.sampled_from([*netconf.SUPPORTED_VERSIONS, "9"]), json_values),
)  # fmt: skip
def test_main_never_tracebacks(env: dict[str, str], stdin: bytes) -> None:
    env = {**env}
    out, err = io.StringIO(), io.StringIO()
    # any socket path the input names must not exist: point the default there via the netconf only
    rc = sp.main(env, io.BytesIO(stdin), out, err)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    if rc == 0:
        assert out.getvalue() == "" or isinstance(json.loads(out.getvalue()), dict)
    else:
        result = json.loads(out.getvalue())
        assert rc == 1 and set(result) <= {"cniVersion", "code", "msg", "details"}
        assert isinstance(result["code"], int) and result["code"] != 999 and result["msg"]
