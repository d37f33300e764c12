"""``python -m lab``: drive the namespace lab built from ``lab/seed.clab.yml``, kubectl-style.

    up | demo | down | status | check
    apply -f FILE | delete -f FILE | delete KIND NAME [-n NS]
    get pods [-A | -n NS] [-o wide|yaml|json] | get KIND [NAME] [-n NS] [-o yaml|json]
    scale KIND/NAME N | scale NAME N | delete-pod NAME [-n NS] | wait [-n NS] [--timeout S]
    label node NODE key=value ... | restart agent NODE | restart controller
    vtysh -c CMD | exec HOST -- CMD

``up`` starts the lab's long-running controller (``lab.controller``); the other verbs only write the
store, as kubectl writes the API server, and the controller acts.  One lab per run directory
($SBGP_LAB_DIR, default /tmp/sbgp-lab).  Every user error is one line on stderr and exit code 1; no
traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from ipam.errors import IpamError
from ipam.kinds import resolve_kind
from ipam.store.sqlite import SqliteStore
from lab.build import SEED_TOPOLOGY, Lab, LabError, default_run_dir
from lab.frr import FrrError
from lab.kubelet import CniError
from lab.topology import TopologyError
from lab.verbs import (
    VerbError,
    apply_file,
    delete_file,
    delete_named,
    delete_pod,
    format_pods,
    label_node,
    objects,
    pod_state,
    scale,
    wait_settled,
)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab", description="The seed's BGP underlay lab in namespaces."
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="lab state directory (default $SBGP_LAB_DIR or /tmp/sbgp-lab)",
    )
    p.add_argument("--topology", type=Path, default=SEED_TOPOLOGY, help="containerlab topology file")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="build the topology, start FRR, the agents and the lab's controller")
    sub.add_parser("demo", help="run the seed's steps and check the invariants (builds the lab if needed)")
    q = sub.add_parser("apply", help="create or update objects from YAML (like kubectl apply -f)")
    q.add_argument("-f", "--filename", required=True, type=Path)
    q = sub.add_parser("delete", help="delete -f FILE, or delete KIND NAME [-n NS]")
    q.add_argument("-f", "--filename", type=Path, default=None)
    q.add_argument("kind", nargs="?")
    q.add_argument("name", nargs="?")
    q.add_argument("-n", "--namespace", default=None)
    q = sub.add_parser("scale", help="scale KIND/NAME N (or NAME N: a Deployment or StatefulSet)")
    q.add_argument("target")
    q.add_argument("replicas", type=int)
    q.add_argument("-n", "--namespace", default="default")
    q = sub.add_parser("delete-pod", help="delete a pod gracefully (its controller replaces it)")
    q.add_argument("name")
    q.add_argument("-n", "--namespace", default="default")
    q = sub.add_parser("wait", help="wait until every pod runs or says why it cannot (like rollout status)")
    q.add_argument("-n", "--namespace", default=None, help="one namespace (default: all)")
    q.add_argument("--timeout", type=float, default=300.0)
    q = sub.add_parser("label", help="label node NODE key=value ... (key- removes a label)")
    q.add_argument("what", choices=["node", "nodes", "no"])
    q.add_argument("node")
    q.add_argument("labels", nargs="+")
    q.add_argument("--overwrite", action="store_true")
    q = sub.add_parser("restart", help="restart agent NODE (one node's agent) | restart controller")
    q.add_argument("what", choices=["agent", "controller"])
    q.add_argument("node", nargs="?")
    sub.add_parser("down", help="remove every namespace, process and file of the lab")
    sub.add_parser("status", help="namespaces, processes and BGP sessions")
    sub.add_parser("check", help="check the invariants now")
    q = sub.add_parser("vtysh", help="vtysh against the lab router")
    q.add_argument("-c", dest="commands", action="append", required=True)
    q = sub.add_parser("exec", help="run a command inside a node (router, node1, ...) or a pod")
    q.add_argument("host")
    q.add_argument("argv", nargs=argparse.REMAINDER)
    q = sub.add_parser("get", help="get pods [-A|-n NS] [-o wide|yaml|json], get KIND [NAME]")
    q.add_argument("kind")
    q.add_argument("name", nargs="?")
    q.add_argument("-n", "--namespace", default=None)
    q.add_argument("-A", "--all-namespaces", action="store_true")
    q.add_argument("-o", "--output", choices=["wide", "yaml", "json", "name"], default=None)
    return p


def _status(lab: Lab, out: TextIO) -> int:
    print(f"lab {lab.topo.name} token {lab.token} run dir {lab.run_dir}", file=out)
    for node in lab.topo.nodes:
        ns = lab.ns(node.name)
        exists = Path(ns.path).exists()
        proc = lab.agents.get(node.name)
        what = "-"
        if proc is not None:
            what = f"cmd pid {proc.pid} {'running' if proc.alive() else 'DEAD'}"
        if node.is_frr:
            pids = lab.router_of(node.name).pids()
            what = "frr " + ", ".join(f"{d} {'running' if r.alive() else 'DEAD'}" for d, r in pids.items())
        print(f"  {node.name:8} {ns.name:24} {'up' if exists else 'MISSING':8} {what}", file=out)
    ctl = lab.controller
    state = "not started" if ctl is None else f"pid {ctl.pid} {'running' if ctl.alive() else 'DEAD'}"
    print(f"  controller {state}", file=out)
    try:
        for addr, peer in sorted(lab.router.bgp_peers().items()):
            print(f"  bgp peer {addr:15} {peer.get('state')} pfxRcd={peer.get('pfxRcd', 0)}", file=out)
    except (FrrError, OSError) as exc:
        print(f"  bgp: {exc}", file=out)
    store = SqliteStore(lab.store_path)
    try:
        states = Counter(pod_state(p).status for p in store.list("Pod"))
    finally:
        store.close()
    shown = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
    print(f"  pods: {shown}", file=out)
    return 0


def _dump(objs: Sequence[Mapping[str, Any]], single: bool, fmt: str) -> str:
    doc: Any = objs[0] if single else {"apiVersion": "v1", "kind": "List", "items": list(objs)}
    if fmt == "json":
        return json.dumps(doc, indent=4, sort_keys=True)
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False).rstrip()


def _get(lab: Lab, store: SqliteStore, args: argparse.Namespace, out: TextIO) -> int:
    try:
        info = resolve_kind(args.kind)
    except KeyError as exc:
        raise VerbError(str(exc.args[0])) from None
    namespace = None if args.all_namespaces else (args.namespace or "default")
    objs = list(objects(store, info.kind, args.name, namespace))
    if args.output in ("yaml", "json"):
        if objs:
            print(_dump(objs, args.name is not None, args.output), file=out)
        return 0
    if not objs:
        where = f" in {namespace} namespace" if namespace and info.namespaced else ""
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    if args.output == "name":
        for obj in objs:
            print(f"{info.kind.lower()}/{obj['metadata']['name']}", file=out)
        return 0
    if info.kind == "Pod":
        text = format_pods(
            objs,
            now=time.time(),
            wide=args.output == "wide",
            namespaces=namespace is None and info.namespaced,
        )
        print(text, file=out)
        return 0
    return run_spiderbgp_get(lab.store_path, args, out)


def run_spiderbgp_get(store_path: Path, args: argparse.Namespace, out: TextIO) -> int:
    """Table output of other kinds: the project's own ``spiderbgp get`` renders them."""
    from spiderbgp.cli import main as spiderbgp_main

    argv = ["--store", str(store_path), "get", args.kind]
    if args.name:
        argv.append(args.name)
    if args.all_namespaces:
        argv.append("-A")
    elif args.namespace:
        argv += ["-n", args.namespace]
    if args.output:
        argv += ["-o", args.output]
    return spiderbgp_main(argv, out=out)


def main(
    argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None, out: TextIO | None = None
) -> int:
    env = dict(os.environ if env is None else env)
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    run_dir: Path = args.run_dir or default_run_dir(env)
    if os.geteuid() != 0:
        print("error: the lab needs root (network namespaces)", file=sys.stderr)
        return 1
    try:
        return _run(args, run_dir, env, out)
    except (LabError, TopologyError, FrrError, CniError, IpamError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one line, no traceback
        if env.get("SBGP_DEBUG"):
            raise
        print(f"error: internal error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, run_dir: Path, env: Mapping[str, str], out: TextIO) -> int:
    if args.command == "up":
        lab = Lab.create(run_dir=run_dir, env=env, topology_file=args.topology)
        try:
            lab.up()
        except BaseException:
            lab.down()
            raise
        print(f"lab up: token {lab.token}, run dir {run_dir}", file=out)
        return 0
    if args.command == "demo":
        from lab.demo import run_demo

        return run_demo(run_dir=run_dir, env=env, topology_file=args.topology, out=out)
    if args.command == "down":
        try:
            lab = Lab.load(run_dir, env)
        except LabError:
            print(f"no lab in {run_dir}", file=out)
            return 0
        lab.stop_controller()
        swept = lab.down()
        print(f"lab down: removed {len(swept)} leftover namespaces", file=out)
        return 0
    lab = Lab.load(run_dir, env)
    if args.command == "status":
        return _status(lab, out)
    if args.command == "vtysh":
        out.write(lab.router.vtysh(*args.commands))
        return 0
    if args.command == "exec":
        argv_ = list(args.argv[1:]) if args.argv[:1] == ["--"] else list(args.argv)
        if not argv_:
            raise VerbError("exec HOST -- CMD needs a command")
        host_env = lab.node_env(args.host) if args.host in {n.name for n in lab.topo.nodes} else lab.env
        out.flush()
        return subprocess.run(lab.exec_argv(args.host, argv_), env=host_env, check=False).returncode
    if args.command == "restart" and args.what == "controller":
        lab.stop_controller()
        ref = lab.start_controller()
        print(f"controller restarted (pid {ref.pid})", file=out)
        return 0
    if args.command == "restart":
        agents = [n.name for n in lab.topo.nodes if n.cmd and not n.is_frr]
        if args.node not in agents:
            raise VerbError(
                f"restart agent {args.node}: no such node with an agent (nodes: {', '.join(agents)})"
            )
        lab.stop_cmd(args.node)
        lab.start_cmd(args.node)
        peer = lab.bgp_address(args.node)
        if peer:
            lab.router.wait_established({peer}, timeout=60)
        print(f"agent on {args.node} restarted", file=out)
        return 0
    store = SqliteStore(lab.store_path)
    try:
        return _store_verb(lab, store, args, out)
    finally:
        store.close()


def _store_verb(lab: Lab, store: SqliteStore, args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "get":
        return _get(lab, store, args, out)
    if args.command == "apply":
        for line in apply_file(store, args.filename):
            print(line, file=out)
        return 0
    if args.command == "delete":
        if args.filename is not None:
            if args.kind is not None:
                raise VerbError("delete: give either -f FILE or KIND NAME, not both")
            lines = delete_file(store, args.filename)
        elif args.kind is None or args.name is None:
            raise VerbError("delete: needs -f FILE or KIND NAME")
        else:
            lines = [delete_named(store, args.kind, args.name, args.namespace)]
        for line in lines:
            print(line, file=out)
        return 0
    if args.command == "scale":
        print(scale(store, args.target, args.replicas, args.namespace), file=out)
        return 0
    if args.command == "delete-pod":
        print(delete_pod(store, args.name, args.namespace), file=out)
        return 0
    if args.command == "label":
        print(label_node(store, args.node, args.labels, overwrite=args.overwrite), file=out)
        return 0
    if args.command == "wait":
        failing = wait_settled(store, namespace=args.namespace, timeout=args.timeout)
        for line in failing:
            print(line, file=out)
        if failing:
            print(f"{len(failing)} pod(s) cannot run", file=out)
            return 1
        print("every pod is running", file=out)
        return 0
    if args.command == "check":
        from lab.invariants import check_invariants

        problems = check_invariants(lab, store)
        for line in problems:
            print(f"FAIL {line}", file=out)
        print("invariants hold" if not problems else f"{len(problems)} invariant(s) broken", file=out)
        return 0 if not problems else 1
    raise VerbError(f"unknown command {args.command}")
