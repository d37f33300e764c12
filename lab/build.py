"""Build the containerlab topology with network namespaces, veth pairs and host processes.

Everything about the topology comes from the .clab.yml file (``lab.topology``): nodes become
namespaces ``sbgp-<token>-<node>``, links veth pairs, ``exec`` lines run inside the node's namespace,
``cmd`` is started there as a host process, nodes with an FRR image run zebra + bgpd (``lab.frr``), and
binds become host paths under the run directory.  Bound text files are copied with container paths
rewritten to those host paths, and so are commands, so one topology serves Docker and this builder.

A lab outlives the command that built it: ``state.json`` in the run directory lists every namespace,
process (PID + start time) and path, so ``down`` (or a test fixture) removes all of it, also after a
crash; ``down`` also sweeps any namespace carrying the lab's token.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lab.frr import FRR_STATE_ROOT, FrrRouter, wait_until
from lab.netns import Netns, ProcRef, Sandbox, addresses, ip_netns_exec, kill_procs, set_link, sweep
from lab.topology import Node, Topology, load_topology, translate_paths

__all__ = ["REPO_ROOT", "ROLE_LABEL", "SEED_TOPOLOGY", "Lab", "LabError"]

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_TOPOLOGY = REPO_ROOT / "lab" / "seed.clab.yml"
ROLE_LABEL = "spiderbgp.io/role"
STATE_FILE = "state.json"
RUN_ENV = "SBGP_RUN"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUN = Path("/run")
CONTROLLER_DIR = "controller"
CONTROLLER_READY = "pods.json"  # the controller writes its pod state once the cluster objects exist


class LabError(RuntimeError):
    """A lab step failed; the message is one line naming the node and the step."""


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"  ({exc.strerror})"
    return "\n".join(f"  {ln}" for ln in text.splitlines()[-lines:]) or "  (empty)"


def _write_shim(bin_dir: Path) -> None:
    """``spiderbgp`` on the lab's PATH runs this working tree's CLI with the lab's interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "spiderbgp"
    shim.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}} exec {shlex.quote(sys.executable)} "
        "-c 'import sys; from spiderbgp.cli import main; sys.exit(main())' \"$@\"\n"
    )
    shim.chmod(0o755)


class Lab:
    """One running (or being built) lab.  Create with ``Lab.create`` and ``up()``; reopen from
    another process with ``Lab.load(run_dir)``; tear down with ``down()``."""

    def __init__(
        self,
        *,
        topology_file: Path,
        run_dir: Path,
        sandbox: Sandbox,
        env: Mapping[str, str],
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.topology_file = topology_file
        self.run_dir = run_dir
        self.sandbox = sandbox
        self.base_env = dict(env)
        self.topo: Topology = load_topology(topology_file, {RUN_ENV: str(run_dir)})
        self.extra: dict[str, Any] = extra if extra is not None else {}
        self.agents: dict[str, ProcRef] = {}
        self.controller: ProcRef | None = None
        self.mount_holders: dict[str, ProcRef] = {}
        self._routers: dict[str, FrrRouter] = {}

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        run_dir: Path,
        env: Mapping[str, str],
        topology_file: Path = SEED_TOPOLOGY,
        token: str | None = None,
    ) -> Lab:
        if (run_dir / STATE_FILE).exists():
            raise LabError(f"a lab is already up in {run_dir} (run `python -m lab down` first)")
        run_dir.mkdir(parents=True, exist_ok=True)
        sandbox = Sandbox(token)
        lab = cls(topology_file=topology_file, run_dir=run_dir, sandbox=sandbox, env=env)
        sandbox.add_path(run_dir)
        return lab

    @classmethod
    def load(cls, run_dir: Path, env: Mapping[str, str]) -> Lab:
        state_file = run_dir / STATE_FILE
        try:
            state = json.loads(state_file.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab is up in {run_dir} (run `python -m lab up`)") from None
        lab = cls(
            topology_file=Path(state["topology"]),
            run_dir=run_dir,
            sandbox=Sandbox.restore(state["sandbox"]),
            env=env,
            extra=dict(state.get("extra", {})),
        )
        lab.agents = {k: ProcRef(int(v[0]), int(v[1])) for k, v in state.get("agents", {}).items()}
        lab.mount_holders = {k: ProcRef(int(v[0]), int(v[1])) for k, v in state.get("mounts", {}).items()}
        ctl = state.get("controller")
        lab.controller = ProcRef(int(ctl[0]), int(ctl[1])) if ctl else None
        for node in lab.topo.nodes:
            if node.is_frr:
                lab.router_of(node.name).reattach()
        return lab

    def save(self) -> None:
        state = {
            "topology": str(self.topology_file),
            "sandbox": self.sandbox.snapshot(),
            "agents": {k: [v.pid, v.start_time] for k, v in self.agents.items()},
            "controller": [self.controller.pid, self.controller.start_time] if self.controller else None,
            "mounts": {k: [v.pid, v.start_time] for k, v in self.mount_holders.items()},
            "extra": self.extra,
        }
        tmp = self.run_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(self.run_dir / STATE_FILE)

    # ---- names and paths ---------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self.sandbox.token

    def ns(self, node: str) -> Netns:
        self.topo.node(node)  # raises for unknown nodes
        return Netns(self.sandbox.name(node))

    def node_dir(self, node: str) -> Path:
        return self.run_dir / node

    def mounts(self, node: str) -> list[tuple[str, str]]:
        """(container path, host path) of every bind of ``node`` as this builder realizes it: a file
        bind points at the node's rewritten copy, a directory bind at the host directory."""
        n = self.topo.node(node)
        out: list[tuple[str, str]] = []
        for bind in n.binds:
            if Path(bind.host).is_file():
                out.append((bind.container, str(self._copy_path(n, bind.container))))
            else:
                out.append((bind.container, bind.host))
        return out

    def host_path(self, node: str, container_path: str) -> Path:
        return Path(translate_paths(container_path, self.mounts(node)))

    def _copy_path(self, node: Node, container_path: str) -> Path:
        return self.node_dir(node.name) / "binds" / container_path.lstrip("/").replace("/", "__")

    @property
    def env(self) -> dict[str, str]:
        """The environment of every lab process: the lab's own, never the caller's (a caller's
        ``SPIDERBGP_STORE`` or ``SPIDERBGP_SOCKET`` must not reach the agents, plugins or node commands).
        PATH has the lab's shim and the interpreter's bin directory first, then the system's."""
        path = [str(self.run_dir / "bin"), str(Path(sys.executable).parent), SYSTEM_PATH]
        return {"PATH": ":".join(path), "LANG": "C.UTF-8", "HOME": "/root"}

    def node_env(self, node: str) -> dict[str, str]:
        """A node's environment: the lab's plus the topology's ``env`` for that node."""
        return {**self.env, **dict(self.topo.node(node).env)}

    def node_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """argv running ``argv`` inside ``node``: its network namespace and, for a node with binds, its
        mount namespace, where the binds sit at their container paths (as in the container)."""
        holder = self.mount_holders.get(node)
        if holder is None:
            return ip_netns_exec(self.ns(node), argv)
        return ["nsenter", "--target", str(holder.pid), "--mount", "--net", "--", *argv]

    def host_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """argv running ``argv`` in ``node``'s network namespace but the host's mount namespace
        (the kubelet's view: CNI plugins open pod namespaces under /var/run/netns)."""
        return ip_netns_exec(self.ns(node), argv)

    def nodes_with_role(self, role: str) -> list[str]:
        return [n.name for n in self.topo.nodes if n.label(ROLE_LABEL) == role]

    @property
    def k8s_nodes(self) -> list[str]:
        return self.nodes_with_role("node")

    @property
    def client(self) -> str:
        clients = self.nodes_with_role("client")
        if not clients:
            raise LabError(f"{self.topo.source}: no node labelled {ROLE_LABEL}: client")
        return clients[0]

    @property
    def router_node(self) -> str:
        for n in self.topo.nodes:
            if n.is_frr:
                return n.name
        raise LabError(f"{self.topo.source}: no node runs an FRR image")

    def router_of(self, node: str) -> FrrRouter:
        if node not in self._routers:
            self._routers[node] = FrrRouter(
                self.sandbox,
                self.ns(node),
                run_dir=self.node_dir(node) / "frr",
                daemons=self._frr_daemons(self.topo.node(node)),
            )
        return self._routers[node]

    @property
    def router(self) -> FrrRouter:
        return self.router_of(self.router_node)

    def node_addresses(self, node: str) -> list[str]:
        """The node's IPv4 addresses (without prefix length), loopback excluded."""
        return [
            a.split("/")[0] for a in addresses(self.ns(node)) if ":" not in a and not a.startswith("127.")
        ]

    def agent_config(self, node: str) -> dict[str, Any]:
        """The node's agent config as the agent reads it (the rewritten copy named by ``--config``)."""
        argv = shlex.split(self.topo.node(node).cmd)
        if "--config" not in argv:
            raise LabError(f"{self.topo.source}: node {node}: cmd has no --config FILE")
        path = self.host_path(node, argv[argv.index("--config") + 1])
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise LabError(f"{path}: agent config is not a mapping")
        return data

    @property
    def store_path(self) -> Path:
        """The embedded store file shared by the nodes (from the first node's agent config)."""
        return Path(str(self.agent_config(self.k8s_nodes[0])["store"]))

    # ---- bring up / tear down ----------------------------------------------------------------

    def up(self, *, timeout: float = 60.0, wait_bgp: bool = True, controller: bool = True) -> None:
        """Build every namespace, link, file and process of the topology (saving state as it goes),
        then start the lab's controller (``lab.controller``), which runs the cluster from then on."""
        _write_shim(self.run_dir / "bin")
        self.save()
        for node in self.topo.nodes:
            self.sandbox.netns(node.name)
            self.save()
        for link in self.topo.links:
            self.sandbox.veth(self.ns(link.a.node), link.a.iface, self.ns(link.b.node), link.b.iface)
        for node in self.topo.nodes:
            self._materialize_binds(node)
        for node in self.topo.nodes:
            if node.binds and not node.is_frr:
                self._mount_namespace(node)
                self.save()
        for node in self.topo.nodes:
            for line in node.exec:
                self._exec_line(node, line)
        for node in self.topo.nodes:
            if node.is_frr:
                self._start_frr(node)
                self.save()
        for node in self.topo.nodes:
            if node.cmd and not node.is_frr:
                self.start_cmd(node.name)
                self.save()
        if controller and self.k8s_nodes:
            self.start_controller(timeout=timeout)
        if wait_bgp and self.k8s_nodes:
            peers = {addr for name in self.k8s_nodes for addr in [self.bgp_address(name)] if addr}
            try:
                self.router.wait_established(peers, timeout=timeout)
            except TimeoutError as exc:
                # the run directory goes with the lab, so the error carries what explains it
                raise LabError(f"{exc}\n{self.diagnosis()}") from None

    def diagnosis(self, lines: int = 12) -> str:
        """The router's view of its peers and the tail of every node agent's and ExaBGP's log."""
        parts: list[str] = []
        try:
            peers = self.router.bgp_peers()
            parts.append(
                "router peers: "
                + ", ".join(f"{addr} {p.get('state', '?')}" for addr, p in sorted(peers.items()))
            )
        except Exception as exc:  # a diagnosis must not hide the error it explains
            parts.append(f"router peers: unavailable ({exc})")
        parts.append(f"--- router: {self.router.log_file}:")
        parts.append(_tail(self.router.log_file, lines))
        for node in self.k8s_nodes:
            ref = self.agents.get(node)
            alive = "not started" if ref is None else ("running" if ref.alive() else "exited")
            parts.append(f"--- {node}: agent {alive}; {self.agent_log(node)}:")
            parts.append(_tail(self.agent_log(node), lines))
            runtime = (self.agent_config(node).get("bgp") or {}).get("runtimeDir")
            if runtime:
                exa_log = self.host_path(node, str(runtime)) / "exabgp.log"
                parts.append(f"--- {node}: {exa_log}:")
                parts.append(_tail(exa_log, lines))
        return "\n".join(parts)

    def bgp_address(self, node: str) -> str | None:
        bgp = self.agent_config(node).get("bgp") or {}
        value = bgp.get("nextHop") if isinstance(bgp, dict) else None
        return str(value) if value else None

    def _materialize_binds(self, node: Node) -> None:
        mounts = self.mounts(node.name)
        for bind in node.binds:
            src = Path(bind.host)
            if src.is_file():
                dst = self._copy_path(node, bind.container)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(translate_paths(src.read_text(), mounts))
            else:
                src.mkdir(parents=True, exist_ok=True)

    def _mount_namespace(self, node: Node) -> None:
        """A mount namespace for ``node`` with every bind at its container path, held by a ``sleep``
        inside the node's namespaces (it goes with them).  A missing mount point is made on an overlay
        of its nearest existing ancestor (upper layer in the run directory), so the host's /etc, /var
        or /opt never change.  For binds under /run the node gets a /run of its own (a tmpfs, as a
        container has; the host's /run is volatile and shared with other labs), with the host's
        /run/netns moved into it."""
        script = ["set -e"]
        overlaid: list[Path] = []  # made writable in the node's view: an overlay, or the node's own /run
        scratch = self.node_dir(node.name) / "mnt"
        for i, (container, host) in enumerate(self.mounts(node.name)):
            target = Path(container)
            is_file = Path(host).is_file()
            under_run = RUN in target.parents
            if (under_run or not target.exists()) and not any(o in target.parents for o in overlaid):
                ancestor = next(p for p in target.parents if p.exists())
                if under_run:
                    # a node's /run of its own (a tmpfs, as in a container), with the host's /run/netns
                    # moved in so pod namespaces stay reachable; nothing is made on the host
                    keep = scratch / "netns"
                    keep.mkdir(parents=True, exist_ok=True)
                    script += [
                        f"mount --rbind /run/netns {shlex.quote(str(keep))}",
                        "mount -t tmpfs -o mode=0755 tmpfs /run",
                        "mkdir -p /run/netns",
                        f"mount --move {shlex.quote(str(keep))} /run/netns",
                    ]
                    overlaid.append(RUN)
                else:
                    upper, work = scratch / f"upper{i}", scratch / f"work{i}"
                    upper.mkdir(parents=True, exist_ok=True)
                    work.mkdir(parents=True, exist_ok=True)
                    script.append(
                        f"mount -t overlay overlay -o lowerdir={shlex.quote(str(ancestor))},"
                        f"upperdir={shlex.quote(str(upper))},workdir={shlex.quote(str(work))} "
                        f"{shlex.quote(str(ancestor))}"
                    )
                    overlaid.append(ancestor)
            q = shlex.quote(container)
            if is_file:
                script.append(f"mkdir -p {shlex.quote(str(target.parent))}; [ -e {q} ] || : > {q}")
            else:
                script.append(f"mkdir -p {q}")
            script.append(f"mount --bind {shlex.quote(host)} {q}")
            bind = node.bind_for(container)
            if bind is not None and bind.read_only:
                script.append(f"mount -o remount,bind,ro {q}")
        script.append("echo ready")
        script.append("exec sleep infinity")
        proc = self.sandbox.popen(
            self.ns(node.name),
            ["unshare", "--mount", "--propagation", "slave", "sh", "-c", "\n".join(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().decode().strip()
        proc.stdout.close()
        if line != "ready":
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise LabError(f"node {node.name}: mount namespace: {err[-1] if err else 'no output'}")
        proc.stderr.close()
        self.mount_holders[node.name] = ProcRef.of(proc.pid)

    def _exec_line(self, node: Node, line: str) -> None:
        cmd = translate_paths(line, self.mounts(node.name))
        res = subprocess.run(
            self.node_argv(node.name, ["sh", "-c", cmd]),
            capture_output=True,
            text=True,
            check=False,
            env=self.node_env(node.name),
            timeout=60,
        )
        if res.returncode != 0:
            raise LabError(
                f"node {node.name}: exec {line!r} failed (exit {res.returncode}): {res.stderr.strip()}"
            )

    def _frr_daemons(self, node: Node) -> tuple[str, ...]:
        bind = node.bind_for("/etc/frr/daemons")
        wanted = ["zebra"]
        if bind is not None and Path(bind.host).is_file():
            for line in Path(bind.host).read_text().splitlines():
                key, _, value = line.strip().partition("=")
                if value == "yes" and key.endswith("d") and key != "zebra":
                    wanted.append(key)
        else:
            wanted.append("bgpd")
        return tuple(wanted)

    def _start_frr(self, node: Node) -> None:
        bind = node.bind_for("/etc/frr/frr.conf")
        config = Path(bind.host).read_text() if bind is not None else None
        self.router_of(node.name).start(config)

    def agent_log(self, node: str) -> Path:
        return self.node_dir(node) / "cmd.log"

    def start_cmd(self, node: str) -> ProcRef:
        """Start the node's ``cmd`` inside its namespace, output appended to ``<node>/cmd.log``."""
        n = self.topo.node(node)
        argv = shlex.split(translate_paths(n.cmd, self.mounts(node)))
        log = self.agent_log(node)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = self.sandbox.popen(
                None,
                self.node_argv(node, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.node_env(node),
            )
        ref = ProcRef.of(proc.pid)
        self.agents[node] = ref
        self.save()
        return ref

    def stop_cmd(self, node: str, *, sig: int = signal.SIGTERM) -> None:
        """Stop the node's ``cmd`` process (SIGKILL = a crash)."""
        ref = self.agents.pop(node, None)
        if ref is None:
            return
        if sig == signal.SIGKILL:
            ref.signal(sig)
            wait_until(lambda: not ref.alive(), timeout=5, interval=0.02, what=f"{node} cmd to die")
        else:
            self.sandbox.stop_proc(ref)
        self.save()

    # ---- the controller (control plane and kubelets, lab.controller) ---------------------------

    @property
    def controller_dir(self) -> Path:
        return self.run_dir / CONTROLLER_DIR

    def start_controller(self, *, timeout: float = 30.0) -> ProcRef:
        """Start ``python -m lab.controller`` for this lab (a host process: it only reads the store and
        runs commands inside the lab's namespaces) and wait until it has written the cluster objects."""
        self.controller_dir.mkdir(parents=True, exist_ok=True)
        ready = self.controller_dir / CONTROLLER_READY
        with (self.controller_dir / "controller.log").open("ab") as out:
            proc = self.sandbox.popen(
                None,
                [sys.executable, "-m", "lab.controller", "--run-dir", str(self.run_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, "PYTHONPATH": str(REPO_ROOT)},
                cwd=REPO_ROOT,
            )
        ref = ProcRef.of(proc.pid)
        self.controller = ref
        self.save()
        try:
            wait_until(
                lambda: ready.exists() or not ref.alive(),
                timeout=timeout,
                interval=0.05,
                what="the controller",
            )
        except TimeoutError as exc:
            raise LabError(f"{exc}\n{_tail(self.controller_dir / 'controller.log', 12)}") from None
        if not ref.alive():
            raise LabError(
                "the controller exited at start:\n" + _tail(self.controller_dir / "controller.log", 12)
            )
        return ref

    def stop_controller(self) -> None:
        ref, self.controller = self.controller, None
        if ref is not None:
            self.sandbox.stop_proc(ref)
            self.save()

    def set_link(self, node: str, iface: str, *, up: bool) -> None:
        set_link(self.ns(node), iface, up=up)

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """argv running ``argv`` inside a node (its namespaces) or a pod's network namespace
        (``lab exec``): ``node1``, ``NAMESPACE/POD`` or ``POD`` (namespace default)."""
        names = {n.name for n in self.topo.nodes}
        if host in names:
            return self.node_argv(host, argv)
        namespace, _, pod = host.rpartition("/")
        ns = Netns(self.sandbox.name(f"{namespace or 'default'}.{pod}"))
        if not Path(ns.path).exists():
            raise LabError(
                f"no node or running pod named {host!r} in this lab (nodes: {', '.join(sorted(names))}; "
                "pods as NAME or NAMESPACE/NAME)"
            )
        return ip_netns_exec(ns, argv)

    def down(self) -> list[str]:
        """Remove everything: processes (by PID + start time), namespaces (also unrecorded ones with the
        lab's token), FRR pathspace dirs, the run directory.  Returns what was swept."""
        errors: list[str] = []
        try:
            self.sandbox.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        swept = sweep(self.sandbox.prefix)
        for state_dir in FRR_STATE_ROOT.glob(f"{self.sandbox.prefix}*"):
            shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if errors:
            raise LabError("; ".join(errors))
        return swept

    def kill_all_agents(self) -> None:
        kill_procs(list(self.agents.values()))
        self.agents.clear()


def default_run_dir(env: Mapping[str, str]) -> Path:
    """The CLI's run directory: $SBGP_LAB_DIR or /tmp/sbgp-lab (one lab per directory)."""
    return Path(env.get("SBGP_LAB_DIR") or "/tmp/sbgp-lab")
