"""The ``spiderbgp`` command line: kubectl-like object commands, ipam and bgp views, the agent."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from bgp_speaker.config import BgpConfigError
from ipam.errors import IpamError
from ipam.selectors import LabelSelector, Requirement
from spiderbgp.fields import ConfigError

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A user-facing failure: printed as ``error: <message>``, exit 1."""


def _parser(default_store: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spiderbgp",
        description="Spiderpool-compatible pod IPs announced over BGP: node agent and admin commands.",
    )
    parser.add_argument(
        "--store",
        default=default_store,
        help="SQLite database path, or 'kubernetes' (default: $SPIDERBGP_STORE or %(default)s)",
    )
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig for --store kubernetes outside a cluster"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("apply", help="create or update objects from YAML (like kubectl apply)")
    p.add_argument(
        "-f", "--filename", required=True, help="YAML file with one or more documents, or - for stdin"
    )

    p = sub.add_parser("get", help="list or show objects (like kubectl get)")
    p.add_argument("kind", help="kind, plural or short name: sp, ss, sr, se, pods, ...")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument(
        "-l",
        "--selector",
        default=None,
        help="label selector as kubectl takes it: k=v, k!=v, k in (a,b), k notin (a,b), k, !k; comma-separated",
    )
    p.add_argument("-o", "--output", default="", choices=["", "wide", "yaml", "json", "name"])

    p = sub.add_parser("delete", help="delete an object (like kubectl delete)")
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default=None)

    p = sub.add_parser("ipam", help="IP allocation views and repairs (like calicoctl ipam)")
    ipam_sub = p.add_subparsers(dest="ipam_command", required=True, metavar="SUBCOMMAND")
    q = ipam_sub.add_parser("show", help="usage of every pool, or who holds one IP")
    q.add_argument("--ip", default=None)
    ipam_sub.add_parser("check", help="check records, endpoints and pods against each other")
    q = ipam_sub.add_parser("release", help="release one allocated IP")
    q.add_argument("--ip", required=True)
    q.add_argument("--force", action="store_true", help="release even if the holding pod is still alive")

    p = sub.add_parser("bgp", help="BGP views from the local agent (like calicoctl node status)")
    bgp_sub = p.add_subparsers(dest="bgp_command", required=True, metavar="SUBCOMMAND")
    for name, text in (("status", "BGP sessions of this node"), ("routes", "routes this node announces")):
        q = bgp_sub.add_parser(name, help=text)
        q.add_argument(
            "--socket", default=None, help="agent socket (default: from --config, or the default path)"
        )
        q.add_argument("--config", default=None, help="agent config file to take the socket path from")
        q.add_argument("-o", "--output", default="", choices=["", "wide", "json"])

    p = sub.add_parser("install-cni", help="install the spiderpool CNI plugin file")
    p.add_argument("--dir", default="/opt/cni/bin")
    p.add_argument(
        "--python", default=None, help="interpreter for the plugin's first line (default: this one)"
    )

    p = sub.add_parser("agent", help="run the node agent")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--withdraw-on-exit",
        action="store_true",
        help="withdraw every route before stopping (draining a node)",
    )
    sub.add_parser("version", help="print the version")
    return parser


def _cmd_apply(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    from ipam.admin import apply_documents, load_documents
    from spiderbgp.stores import open_store, transaction

    source = "<stdin>" if args.filename == "-" else args.filename
    if args.filename == "-":
        text = stdin.read()
    else:
        try:
            text = Path(args.filename).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{source}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CliError(f"{source}: is not UTF-8 text") from None
    documents = load_documents(text, source=source)
    store = open_store(args.store, kubeconfig=args.kubeconfig)
    try:
        lines = apply_documents(store, documents, transaction=transaction(store))
    finally:
        store.close()
    for line in lines:
        print(line, file=out)
    return EXIT_OK


_SEL_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SEL_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SEL_EXISTS = re.compile(rf"(?P<not>!?)\s*(?P<key>{_SEL_KEY})")
_SEL_EQUALITY = re.compile(rf"(?P<key>{_SEL_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_SEL_VALUE})")
_SEL_SET = re.compile(rf"(?P<key>{_SEL_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")


def _selector_parts(text: str) -> list[str]:
    """The requirements of a selector: split at commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _parse_selector(text: str | None) -> tuple[dict[str, str], LabelSelector]:
    """A label selector as kubectl's ``-l`` reads it (``k8s.io/apimachinery/pkg/labels.Parse``):
    comma-separated ``k=v``, ``k==v``, ``k!=v`` (also true when ``k`` is absent), ``k in (a,b)``,
    ``k notin (a,b)``, ``k`` (exists) and ``!k``.  Returns the equalities (the store filters on them)
    and the whole selector (what a listed object must match)."""
    if not text or not text.strip():
        return {}, LabelSelector()
    equal: dict[str, str] = {}
    requirements: list[Requirement] = []
    for part in _selector_parts(text):
        if m := _SEL_EQUALITY.fullmatch(part):
            key, value = m["key"], m["value"]
            if m["op"] == "!=":
                requirements.append(Requirement(key, "NotIn", (value,)))
            elif equal.get(key, value) != value:
                requirements.append(Requirement(key, "In", (value,)))  # k=a,k=b: matches nothing
            else:
                equal[key] = value
        elif m := _SEL_SET.fullmatch(part):
            values = tuple(v.strip() for v in m["values"].split(","))
            if not all(re.fullmatch(_SEL_VALUE, v) for v in values) or values == ("",):
                raise CliError(f"selector {text!r}: {part!r}: values must be label values, e.g. (a,b)")
            requirements.append(Requirement(m["key"], "In" if m["op"] == "in" else "NotIn", values))
        elif m := _SEL_EXISTS.fullmatch(part):
            requirements.append(Requirement(m["key"], "DoesNotExist" if m["not"] else "Exists"))
        else:
            raise CliError(
                f"selector {text!r}: cannot read {part!r} (use k=v, k==v, k!=v, k in (a,b), "
                "k notin (a,b), k or !k, separated by commas)"
            )
    return equal, LabelSelector(tuple(sorted(equal.items())), tuple(requirements))


def _cmd_get(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ipam.kinds import resolve_kind
    from spiderbgp.printing import render_objects
    from spiderbgp.stores import open_store

    try:
        info = resolve_kind(args.kind)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    namespace: str | None = None
    if info.namespaced and not args.all_namespaces:
        namespace = args.namespace or "default"
    store = open_store(args.store, kubeconfig=args.kubeconfig, create=False)
    try:
        if args.name:
            objs = [store.get(info.kind, args.name, namespace or "")]
        else:
            equal, selector = _parse_selector(args.selector)
            objs = [
                obj
                for obj in store.list(info.kind, namespace=namespace, labels=equal or None)
                if selector.matches(obj["metadata"].get("labels") or {})
            ]
    finally:
        store.close()
    if not objs and args.output not in ("yaml", "json"):
        where = f" in {namespace} namespace" if namespace else ""
        print(f"No resources found{where}.", file=err)
        return EXIT_OK
    text = render_objects(
        objs,
        info,
        output=args.output,
        namespaced_column=bool(info.namespaced and args.all_namespaces),
        as_list=not args.name,
    )
    print(text, file=out)
    return EXIT_OK


def _cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    from ipam.admin import delete_object
    from ipam.kinds import resolve_kind
    from spiderbgp.stores import KUBERNETES, open_store

    try:
        info = resolve_kind(args.kind)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    namespace = (args.namespace or "default") if info.namespaced else ""
    store = open_store(args.store, kubeconfig=args.kubeconfig, create=False)
    try:
        # the API server's namespace controller empties a namespace itself; the SQLite store has none
        cascade = args.store != KUBERNETES
        line = delete_object(
            store, info.kind, args.name, namespace, refuse_in_use=True, cascade_namespace=cascade
        )
        print(line, file=out)
    finally:
        store.close()
    return EXIT_OK


def _cmd_ipam(args: argparse.Namespace, out: TextIO) -> int:
    from ipam import report
    from spiderbgp.stores import open_store

    store = open_store(args.store, kubeconfig=args.kubeconfig, create=False)
    try:
        if args.ipam_command == "show":
            print(report.show_ip(store, args.ip) if args.ip else report.show_pools(store), file=out)
            return EXIT_OK
        if args.ipam_command == "check":
            text, problems = report.check(store)
            print(text, file=out)
            return EXIT_ERROR if problems else EXIT_OK
        print(report.release_ip(store, args.ip, force=args.force), file=out)
        return EXIT_OK
    finally:
        store.close()


def _cmd_bgp(args: argparse.Namespace, out: TextIO, env: Mapping[str, str]) -> int:
    from spiderbgp.agent_client import AgentClient, render_bgp_routes, render_bgp_status
    from spiderbgp.config import DEFAULT_SOCKET, load_agent_config

    socket_path = args.socket
    if socket_path is None and args.config:
        config = load_agent_config(args.config, default_node_name=env.get("SPIDERBGP_NODE_NAME"))
        socket_path = config.socket_path
    socket_path = socket_path or DEFAULT_SOCKET
    client = AgentClient(socket_path)
    if args.bgp_command == "status":
        data = client.get_json("/v1/bgp/status")
        print(json.dumps(data, indent=2) if args.output == "json" else render_bgp_status(data), file=out)
    else:
        data = client.get_json("/v1/bgp/routes")
        text = json.dumps(data, indent=2) if args.output == "json" else None
        print(text or render_bgp_routes(data, wide=args.output == "wide"), file=out)
    return EXIT_OK


def _cmd_install_cni(args: argparse.Namespace, out: TextIO) -> int:
    from spiderbgp.plugin_package import render_plugin_file

    target_dir = Path(args.dir)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / "spiderpool"
        tmp = target_dir / ".spiderpool.tmp"
        tmp.write_text(render_plugin_file(args.python or sys.executable), encoding="utf-8")
        tmp.chmod(0o755)
        tmp.replace(target)  # atomic: a runtime never executes a half-written plugin
    except OSError as exc:
        raise CliError(f"install-cni: {target_dir}: {exc.strerror}") from None
    print(f"installed {target}", file=out)
    return EXIT_OK


def _cmd_agent(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from spiderbgp.agent import run_agent
    from spiderbgp.config import load_agent_config

    config = load_agent_config(args.config, default_node_name=env.get("SPIDERBGP_NODE_NAME"))
    store_override = env.get("SPIDERBGP_STORE")
    return run_agent(
        config,
        store_override=store_override if args.store_given else None,
        withdraw_on_exit=args.withdraw_on_exit,
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Entry point; the only place that reads the environment.  Never lets a traceback reach the user."""
    env = os.environ if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr
    stdin = stdin or sys.stdin
    from spiderbgp.config import DEFAULT_STORE

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(env.get("SPIDERBGP_STORE") or DEFAULT_STORE)
    try:
        # usage errors and --help go to the streams the caller gave, not the process's
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    args.store_given = (
        any(a == "--store" or a.startswith("--store=") for a in argv) or "SPIDERBGP_STORE" in env
    )
    try:
        if args.command == "apply":
            return _cmd_apply(args, out, stdin)
        if args.command == "get":
            return _cmd_get(args, out, err)
        if args.command == "delete":
            return _cmd_delete(args, out)
        if args.command == "ipam":
            return _cmd_ipam(args, out)
        if args.command == "bgp":
            return _cmd_bgp(args, out, env)
        if args.command == "install-cni":
            return _cmd_install_cni(args, out)
        if args.command == "agent":
            return _cmd_agent(args, env)
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"spiderbgp {version('spiderbgp')}", file=out)
        except PackageNotFoundError:
            print("spiderbgp (not installed)", file=out)
        return EXIT_OK
    except (CliError, ConfigError, IpamError, BgpConfigError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one line, no traceback
        if env.get("SPIDERBGP_DEBUG"):
            raise
        print(f"error: internal error ({type(exc).__name__}): {exc}", file=err)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
