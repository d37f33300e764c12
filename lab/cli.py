"""``python -m lab``: drive the namespace lab built from ``lab/seed.clab.yml``.

    up | demo | apply -f FILE | scale NAME REPLICAS | delete-pod NAME | down | status
    vtysh -c CMD | exec HOST -- CMD | get pods

One lab per run directory ($SBGP_LAB_DIR, default /tmp/sbgp-lab).  Every user error is one line on
stderr and exit code 1; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from ipam.errors import IpamError
from ipam.sqlite_store import SqliteStore
from lab.build import SEED_TOPOLOGY, Lab, LabError, default_run_dir
from lab.frr import FrrError
from lab.kubelet import CniError, Kubelet
from lab.topology import TopologyError

__all__ = ["format_pods", "main", "run_spiderbgp"]


def _age(created: str, now: float) -> str:
    try:
        stamp = time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return "<unknown>"
    secs = max(0, int(now - stamp))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h"


def format_pods(pods: Sequence[Mapping[str, object]], *, now: float) -> str:
    """``kubectl get po -o wide`` columns: NAME READY STATUS RESTARTS AGE IP NODE."""
    rows = [("NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE")]
    for pod in pods:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        assert isinstance(meta, dict) and isinstance(spec, dict) and isinstance(status, dict)
        containers = status.get("containerStatuses") or []
        ready = sum(1 for c in containers if c.get("ready"))
        total = len(spec.get("containers") or []) or len(containers) or 1
        rows.append(
            (
                str(meta.get("name", "")),
                f"{ready}/{total}",
                str(status.get("phase", "Pending")),
                str(sum(int(c.get("restartCount", 0)) for c in containers)),
                _age(str(meta.get("creationTimestamp", "")), now),
                str(status.get("podIP") or "<none>"),
                str(spec.get("nodeName") or "<none>"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def run_spiderbgp(lab: Lab, args: Sequence[str], out: TextIO) -> int:
    """The real ``spiderbgp`` CLI against the lab's store (what a user would type)."""
    res = subprocess.run(
        ["spiderbgp", "--store", str(lab.store_path), *args],
        capture_output=True,
        text=True,
        env=lab.env,
        timeout=120,
        check=False,
    )
    out.write(res.stdout)
    if res.returncode != 0:
        out.write(res.stderr)
    return res.returncode


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
    sub.add_parser("up", help="build the topology and start FRR and the agents")
    sub.add_parser("demo", help="run the seed's steps and check the invariants (builds the lab if needed)")
    q = sub.add_parser("apply", help="apply YAML to the store and let the kubelet stand-in act on it")
    q.add_argument("-f", "--filename", required=True, type=Path)
    q = sub.add_parser("scale", help="set the replicas of a Deployment or StatefulSet")
    q.add_argument("name")
    q.add_argument("replicas", type=int)
    q = sub.add_parser("delete-pod", help="delete a pod (its controller replaces it)")
    q.add_argument("name")
    sub.add_parser("down", help="remove every namespace, process and file of the lab")
    sub.add_parser("status", help="namespaces, processes and BGP sessions")
    sub.add_parser("check", help="check the invariants now")
    q = sub.add_parser("vtysh", help="vtysh against the lab router")
    q.add_argument("-c", dest="commands", action="append", required=True)
    q = sub.add_parser("exec", help="run a command inside router, node1, node2, client or a pod")
    q.add_argument("host")
    q.add_argument("argv", nargs=argparse.REMAINDER)
    q = sub.add_parser("get", help="get pods (like kubectl get po -o wide)")
    q.add_argument("what", choices=["pods", "po", "pod"])
    return p


def open_kubelet(lab: Lab, out: TextIO) -> tuple[Kubelet, SqliteStore]:
    store = SqliteStore(lab.store_path)
    kubelet = Kubelet(lab, store, log=lambda line: print(line, file=out))
    return kubelet, store


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
    try:
        for addr, peer in sorted(lab.router.bgp_peers().items()):
            print(f"  bgp peer {addr:15} {peer.get('state')} pfxRcd={peer.get('pfxRcd', 0)}", file=out)
    except (FrrError, OSError) as exc:
        print(f"  bgp: {exc}", file=out)
    pods = lab.extra.get("pods", {})
    print(f"  pods: {len(pods)}", file=out)
    return 0


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
        if args.command == "up":
            lab = Lab.create(run_dir=run_dir, env=env, topology_file=args.topology)
            try:
                lab.up()
            except BaseException:
                lab.down()
                raise
            kubelet, store = open_kubelet(lab, out)
            kubelet.ensure_cluster_objects()
            store.close()
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
            try:
                kubelet, store = open_kubelet(lab, out)
                kubelet.down()
                store.close()
            except (IpamError, CniError, OSError) as exc:
                print(f"warning: pods: {exc}", file=out)
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
            argv_ = [a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else list(args.argv)
            if not argv_:
                print("error: exec HOST -- CMD needs a command", file=sys.stderr)
                return 1
            return subprocess.run(lab.exec_argv(args.host, argv_), env=lab.env, check=False).returncode
        kubelet, store = open_kubelet(lab, out)
        try:
            if args.command == "get":
                print(format_pods(store.list("Pod", namespace=kubelet.namespace), now=time.time()), file=out)
                return 0
            if args.command == "apply":
                rc = run_spiderbgp(lab, ["apply", "-f", str(args.filename.resolve())], out)
                if rc == 0:
                    kubelet.reconcile()
                return rc
            if args.command == "scale":
                print(kubelet.scale(args.name, args.replicas), file=out)
                return 0
            if args.command == "delete-pod":
                kubelet.delete_pod(args.name)
                return 0
            if args.command == "check":
                from lab.invariants import check_invariants

                problems = check_invariants(lab, kubelet, store)
                for line in problems:
                    print(f"FAIL {line}", file=out)
                print("invariants hold" if not problems else f"{len(problems)} invariant(s) broken", file=out)
                return 0 if not problems else 1
        finally:
            store.close()
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
    return 1
