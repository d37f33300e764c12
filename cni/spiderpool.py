"""The ``spiderpool`` CNI IPAM plugin: env + stdin -> one request to the node agent -> CNI result.

CNI spec 1.1.0; results for cniVersion 0.3.0, 0.3.1, 0.4.0 (each IP carries ``"version"``), 1.0.0 and
1.1.0.  Commands VERSION, ADD, DEL, CHECK, GC and STATUS; without ``CNI_COMMAND`` an "about" text goes
to stderr.  Errors are the spec's error JSON on stdout and exit status 1, never a traceback.

The container runtime starts this file once per call, so start-up time is the whole cost: it imports
only modules the interpreter already has or C modules (``_json``, ``_socket``), and speaks the one
HTTP/1.1 exchange it needs by itself instead of through ``http.client`` (whose import alone costs
~20 ms: email parsing and ssl).  ``spiderbgp.plugin_package`` builds the installed single file from
the whole modules ``cni/wire.py``, ``cni/fastjson.py`` (JSON), ``cni/netconf.py`` (env and config
parsing), ``cni/agent_client.py`` (the HTTP exchange) and this one (results, commands, main), with
the program's bytecode embedded (scripts are never cached as ``.pyc``).

Decisions (see docs/agent-api.md):
- DEL while the agent is unreachable fails with code 11 so the runtime retries it; the agent's IP GC
  reclaims whatever a runtime that gives up leaves behind.
- Static IP requests (``args.cni.ips``, ``CNI_ARGS`` ``IP=``) are refused: pin IPs with Spiderpool's
  pod annotations instead.
"""

from __future__ import annotations

import posix  # the C module behind os: importing os would cost a millisecond of start-up
import sys

from cni.agent_client import Log, Transport, agent_error
from cni.fastjson import json_dumps, json_loads
from cni.netconf import (
    ABOUT,
    CURRENT_VERSION,
    SUPPORTED_VERSIONS,
    Env,
    IpamConf,
    NetConf,
    PluginError,
    _version_tuple,
    check_identifiers,
    decode_config,
    make_env,
    network_name,
    parse_config,
    pod_args,
    required_env,
)
from cni.wire import (
    CODE_INVALID_CONFIG,
    CODE_IO_FAILURE,
    CODE_PLUGIN_INTERNAL,
    CODE_PROTOCOL,
    CODE_TRY_AGAIN,
    CODE_UNAVAILABLE,
    CODE_UNAVAILABLE_LIMITED,
    MAX_BODY_BYTES,
    PATH_ADD,
    PATH_CHECK,
    PATH_DEL,
    PATH_GC,
    PATH_STATUS,
    AddRequest,
    AddResponse,
    CheckRequest,
    DelRequest,
    GcRequest,
    StatusRequest,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO, NoReturn, TextIO


# --- result rendering ----------------------------------------------------------------------------


def render_result(
    response: AddResponse, if_name: str, cni_version: str, prev_result: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The abbreviated IPAM result for ``if_name`` in ``cni_version`` (0.3.x/0.4.0 carry ``version``).

    With a ``prevResult`` the result is that object with our IPs and routes added (spec: output the
    prevResult "with any possible modifications made by that plugin included").
    """
    legacy = _version_tuple(cni_version) < (1, 0, 0)
    ips: list[dict[str, Any]] = []
    for ip in response.ips:
        if ip.nic != if_name:
            continue
        entry: dict[str, Any] = {"version": str(ip.version)} if legacy else {}
        entry["address"] = ip.address
        if ip.gateway:
            entry["gateway"] = ip.gateway
        ips.append(entry)
    if not ips:
        raise PluginError(CODE_PROTOCOL, f"the agent allocated no IP for interface {if_name}")
    routes: list[dict[str, Any]] = []
    for route in response.routes:
        if route.if_name == if_name:
            routes.append({"dst": route.dst, "gw": route.gw} if route.gw else {"dst": route.dst})
    result: dict[str, Any] = {"cniVersion": cni_version}
    if prev_result:
        result.update(prev_result)
        result["cniVersion"] = cni_version
        old_ips = [v for v in result.get("ips") or [] if isinstance(v, dict)]
        known = {v.get("address") for v in old_ips}
        result["ips"] = old_ips + [v for v in ips if v["address"] not in known]
        old_routes = [v for v in result.get("routes") or [] if isinstance(v, dict)]
        result["routes"] = old_routes + [v for v in routes if v not in old_routes]
        if not result["routes"]:
            del result["routes"]
    else:
        result["ips"] = ips
        if routes:
            result["routes"] = routes
    dns = response.dns.to_json() if response.dns is not None else {}
    if dns and "dns" not in result:
        result["dns"] = dns
    return result


def prev_result_addresses(prev_result: Mapping[str, Any], if_name: str) -> list[str]:
    """The ``ips[].address`` of ``prevResult`` that belong to ``if_name`` (or to no interface)."""
    interfaces = prev_result.get("interfaces")
    names: list[object] = (
        [i.get("name") if isinstance(i, dict) else None for i in interfaces]
        if isinstance(interfaces, list)
        else []
    )
    out: list[str] = []
    for ip in prev_result.get("ips") or []:
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            raise PluginError(CODE_INVALID_CONFIG, f"prevResult.ips: {json_dumps(ip)[:80]} has no address")
        index = ip.get("interface")
        if (
            isinstance(index, int)
            and not isinstance(index, bool)
            and 0 <= index < len(names)
            and names[index] != if_name
        ):
            continue
        out.append(ip["address"])
    return out


def error_result(err: PluginError, cni_version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": cni_version, "code": err.code, "msg": err.msg}
    if err.details:
        out["details"] = err.details
    return out


# --- commands ------------------------------------------------------------------------------------


def cmd_add(env: Env, conf: NetConf, transport: Transport) -> dict[str, Any]:
    request = AddRequest(
        container_id=env.container_id,
        if_name=env.if_name,
        netns=env.netns,
        pod_namespace=env.args.pod_namespace,
        pod_name=env.args.pod_name,
        pod_uid=env.args.pod_uid,
        default_ipv4_ippool=conf.ipam.default_ipv4_ippool,
        default_ipv6_ippool=conf.ipam.default_ipv6_ippool,
        clean_gateway=conf.ipam.clean_gateway,
        cni_version=conf.cni_version,
        network=conf.name,
    )
    status, body = transport.request("POST", PATH_ADD, request.to_json())
    if status != 200:
        raise agent_error(status, body, transport.socket_path)
    try:
        response = AddResponse.from_json(body)
    except ValueError as err:
        raise PluginError(CODE_PROTOCOL, f"agent answer: {err}") from None
    return render_result(response, env.if_name, conf.cni_version, conf.prev_result)


def cmd_del(env: Env, conf: NetConf, transport: Transport) -> None:
    request = DelRequest(
        container_id=env.container_id,
        if_name=env.if_name,
        netns=env.netns,
        pod_namespace=env.args.pod_namespace,
        pod_name=env.args.pod_name,
        pod_uid=env.args.pod_uid,
        cni_version=conf.cni_version,
        network=conf.name,
    )
    status, body = transport.request("POST", PATH_DEL, request.to_json())
    if status not in (200, 204):
        raise agent_error(status, body, transport.socket_path)


def cmd_check(env: Env, conf: NetConf, transport: Transport) -> None:
    if conf.prev_result is None:
        raise PluginError(
            CODE_INVALID_CONFIG, "prevResult: missing (CHECK compares the agent's record with it)"
        )
    request = CheckRequest(
        container_id=env.container_id,
        if_name=env.if_name,
        netns=env.netns,
        pod_namespace=env.args.pod_namespace,
        pod_name=env.args.pod_name,
        pod_uid=env.args.pod_uid,
        ips=prev_result_addresses(conf.prev_result, env.if_name),
        cni_version=conf.cni_version,
        network=conf.name,
    )
    status, body = transport.request("POST", PATH_CHECK, request.to_json())
    if status not in (200, 204):
        raise agent_error(status, body, transport.socket_path)


def cmd_gc(conf: NetConf, transport: Transport) -> None:
    request = GcRequest(
        network=conf.name, valid_attachments=conf.valid_attachments or (), cni_version=conf.cni_version
    )
    status, body = transport.request("POST", PATH_GC, request.to_json())
    if status not in (200, 204):
        raise agent_error(status, body, transport.socket_path)


def cmd_status(conf: NetConf, transport: Transport) -> None:
    request = StatusRequest(
        network=conf.name,
        cni_version=conf.cni_version,
        default_ipv4_ippool=conf.ipam.default_ipv4_ippool,
        default_ipv6_ippool=conf.ipam.default_ipv6_ippool,
    )
    status, body = transport.request("GET", f"{PATH_STATUS}?{request.to_query()}")
    if status not in (200, 204):
        err = agent_error(status, body, transport.socket_path)
        # STATUS speaks only "available" (0), 50 and 51: exhausted pools, a failing agent, all are 50.
        code = err.code if err.code in (CODE_UNAVAILABLE, CODE_UNAVAILABLE_LIMITED) else CODE_UNAVAILABLE
        raise PluginError(code, err.details)


def version_result(stdin_data: bytes) -> dict[str, Any]:
    """VERSION: echo the input's cniVersion when it is one we speak.  Any stdin is tolerated, as the
    reference plugins do (skel does not read it for VERSION)."""
    return {"cniVersion": stated_version(stdin_data), "supportedVersions": list(SUPPORTED_VERSIONS)}


def stated_version(stdin_data: bytes) -> str:
    """The configuration's cniVersion when it is one we speak, else ours; never raises (it labels
    the VERSION answer and every error result, whatever stdin holds)."""
    if len(stdin_data) > MAX_BODY_BYTES:
        return CURRENT_VERSION
    try:
        value = json_loads(stdin_data.decode("utf-8"))
    except Exception:  # malformed stdin has its own error; here it only means "no version"
        return CURRENT_VERSION
    if isinstance(value, dict) and value.get("cniVersion") in SUPPORTED_VERSIONS:
        return str(value["cniVersion"])
    return CURRENT_VERSION


def run(
    environ: Mapping[str, str],
    stdin_data: bytes,
    log: Log,
    make_transport: Callable[[IpamConf, int], Transport] | None = None,
) -> dict[str, Any] | None:
    """One invocation minus the I/O: the result object to print (None: print nothing), or PluginError.

    Checked in the order of libcni's skel, so that each input gets the reference plugins' code: the
    variables the command needs (4), the configuration's JSON (6) and network name (7), container ID
    and interface name (4), cniVersion (1), the rest of the configuration (7, 2), then ``CNI_ARGS``
    (4), which the plugin's own command reads.
    """
    command = required_env(environ)
    if command == "VERSION":
        return version_result(stdin_data)
    raw = decode_config(stdin_data)
    network_name(raw)
    check_identifiers(command, environ)
    conf = parse_config(command, raw)
    env = make_env(command, environ, pod_args(command, environ))
    log.configure(conf.ipam.log_level, conf.ipam.log_file_path)
    unreachable = CODE_UNAVAILABLE if env.command == "STATUS" else CODE_TRY_AGAIN
    transport = (make_transport or _transport)(conf.ipam, unreachable)
    log.log(
        "debug",
        f"{env.command} container={env.container_id} ifname={env.if_name} network={conf.name} socket={conf.ipam.socket_path}",
    )
    if env.command == "ADD":
        result = cmd_add(env, conf, transport)
        log.log(
            "debug",
            f"ADD {env.args.pod_namespace}/{env.args.pod_name} {env.if_name}: {json_dumps(result.get('ips'))}",
        )
        return result
    if env.command == "DEL":
        cmd_del(env, conf, transport)
    elif env.command == "CHECK":
        cmd_check(env, conf, transport)
    elif env.command == "GC":
        cmd_gc(conf, transport)
    else:
        cmd_status(conf, transport)
    return None


def _transport(ipam: IpamConf, unreachable_code: int) -> Transport:
    return Transport(ipam.socket_path, ipam.timeout, unreachable_code)


def main(environ: Mapping[str, str], stdin: BinaryIO, stdout: TextIO, stderr: TextIO) -> int:
    """The plugin's entry point: exit status 0 with the result (or nothing), else 1 with error JSON."""
    log = Log(stderr)
    stdin_data = b""
    try:
        if "CNI_COMMAND" not in environ:
            stderr.write(f"{ABOUT}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
            return 0
        try:
            stdin_data = stdin.read(MAX_BODY_BYTES + 1)
        except OSError as err:
            raise PluginError(
                CODE_IO_FAILURE, f"cannot read the network configuration from stdin: {err}"
            ) from None
        result = run(environ, stdin_data, log)
        if result is not None:
            stdout.write(json_dumps(result) + "\n")
            stdout.flush()
        return 0
    except PluginError as err:
        failure = err
    except BaseException as err:  # nothing may escape as a traceback
        failure = PluginError(CODE_PLUGIN_INTERNAL, f"{type(err).__name__}: {err}"[:500])
    log.log(
        "error",
        f"{environ.get('CNI_COMMAND', '')} container={environ.get('CNI_CONTAINERID', '')}: code {failure.code}: {failure.details}",
    )
    try:
        stdout.write(json_dumps(error_result(failure, stated_version(stdin_data))) + "\n")
        stdout.flush()
    except (OSError, ValueError):
        pass
    return 1


def process_environ() -> dict[str, str]:
    """``os.environ`` as a plain dict, decoded the way ``os`` decodes it."""
    encoding = sys.getfilesystemencoding()
    return {
        k.decode(encoding, "surrogateescape"): v.decode(encoding, "surrogateescape")
        for k, v in posix.environ.items()
    }


def exit_now(status: int) -> NoReturn:
    """Flush stdout and stderr and end the process without the interpreter's finalization.

    Tearing down the modules and objects of the program costs more (~1.5 ms) than the rest of
    its start-up; nothing is left to clean up once main() has returned (its socket is closed, its
    log file written).
    """
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib would be one more import at start-up
            stream.flush()
        except (OSError, ValueError):
            pass
    posix._exit(status)


if __name__ == "__main__":
    exit_now(main(process_environ(), sys.stdin.buffer, sys.stdout, sys.stderr))
