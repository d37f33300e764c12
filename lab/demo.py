"""The seed, step by step, on the namespace lab; ends with the invariants (exit 1 if any fails).

Each step prints the command a user would type and what the seed shows (``kubectl get sp``,
``kubectl get po -o wide``, the router's ``show bgp summary`` / ``show bgp ipv4 unicast``, the
client's page fetches) and checks it.  The steps only write the store, as the verbs of
``python -m lab`` do, and wait for the lab's controller to act (``lab.verbs.wait_settled``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

import netaddr

from ipam.errors import IpamError, NotFound
from ipam.records import Obj
from ipam.store.protocol import Store
from ipam.store.sqlite import SqliteStore
from lab.build import REPO_ROOT, STATE_FILE, Lab
from lab.invariants import block_views, check_invariants, fetch_pages, pod_views, route_problems
from lab.verbs import apply_file, delete_pod, format_pods, label_node, scale, wait_settled

__all__ = ["Demo", "run_demo"]

CONFIGS = REPO_ROOT / "configs"
SEED_POOL = "nginx-ippool-v4"
SEED_RANGE = netaddr.IPRange("10.244.100.0", "10.244.200.1")
BLOCK_POOL = "block-ippool-v4"
DEMO_WEB_LABEL = "spiderbgp.io/demo-web"


class Demo:
    def __init__(self, lab: Lab, store: Store, out: TextIO) -> None:
        self.lab, self.store, self.out = lab, store, out
        self.failures: list[str] = []

    # ---- output and checks -------------------------------------------------------------------

    def say(self, title: str) -> None:
        print(f"\n==> {title}", file=self.out, flush=True)

    def expect(self, ok: bool, what: str) -> None:
        print(f"    [{'ok' if ok else 'FAIL'}] {what}", file=self.out, flush=True)
        if not ok:
            self.failures.append(what)

    def shell(self, line: str) -> None:
        print(f"$ {line}", file=self.out, flush=True)

    def get_sp(self, kind: str = "sp") -> None:
        """``spiderbgp get sp`` (or another kind) on a node, as a user types it (the node's binds give
        it the store)."""
        node = self.lab.k8s_nodes[0]
        self.shell(f"python -m lab exec {node} -- spiderbgp get {kind}")
        res = subprocess.run(
            self.lab.exec_argv(node, ["spiderbgp", "get", kind]),
            env=self.lab.node_env(node),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.out.write(res.stdout or res.stderr)

    def get_pods(self) -> None:
        self.shell("python -m lab get pods -o wide")
        pods = self.store.list("Pod", namespace="default")
        print(format_pods(pods, now=time.time()), file=self.out)

    def apply(self, name: str) -> None:
        path = CONFIGS / name
        self.shell(f"python -m lab apply -f {path}")
        for line in apply_file(self.store, path):
            print(line, file=self.out)
        self.settle()

    def scale(self, name: str, replicas: int) -> None:
        self.shell(f"python -m lab scale {name} {replicas}")
        print(scale(self.store, name, replicas), file=self.out)
        self.settle()

    def label(self, node: str, *assignments: str) -> None:
        self.shell(f"python -m lab label node {node} {' '.join(assignments)}")
        print(label_node(self.store, node, assignments), file=self.out)

    def delete_pod(self, name: str) -> None:
        self.shell(f"python -m lab delete-pod {name}")
        print(delete_pod(self.store, name), file=self.out)
        self.wait(lambda: name not in self.pods_of(name) or self._replaced(name), timeout=60)
        self.settle()

    def _replaced(self, name: str) -> bool:
        try:
            return not self.store.get("Pod", name, "default")["metadata"].get("deletionTimestamp")
        except NotFound:
            return False

    def settle(self) -> None:
        """``python -m lab wait``: until every pod runs (or says why it cannot)."""
        self.shell("python -m lab wait")
        try:
            failing = wait_settled(self.store, timeout=120)
        except TimeoutError as exc:
            self.expect(False, str(exc))
            return
        for line in failing:
            print(line, file=self.out)
        print("every pod is running" if not failing else f"{len(failing)} pod(s) cannot run", file=self.out)
        self.expect(not failing, "every pod is running")

    def pool(self, name: str) -> Obj:
        return self.store.get("SpiderIPPool", name)

    def allocated(self, name: str) -> int:
        return int((self.pool(name).get("status") or {}).get("allocatedIPCount") or 0)

    def pods_of(self, prefix: str) -> dict[str, str]:
        """name -> IP of the running pods of namespace default whose name starts with ``prefix``."""
        return {
            pod["metadata"]["name"]: str((pod.get("status") or {}).get("podIP") or "")
            for pod in self.store.list("Pod", namespace="default")
            if pod["metadata"]["name"].startswith(prefix)
            and (pod.get("status") or {}).get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp")
        }

    def wait(self, probe: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.3)
        return True

    def routes_converged(self, timeout: float = 20.0) -> list[str]:
        views = pod_views(self.lab, self.store)
        problems: list[str] = []

        def probe() -> bool:
            problems[:] = route_problems(
                self.lab.router.bgp_routes(), views, block_views(self.lab, self.store)
            )
            return not problems

        self.wait(probe, timeout)
        return problems

    def show_bgp(self) -> None:
        problems = self.routes_converged()
        self.shell("python -m lab vtysh -c 'show bgp ipv4 unicast'")
        print(self.lab.router.vtysh("show bgp ipv4 unicast"), file=self.out)
        self.expect(
            not problems,
            "the router has exactly each pod's /32 with its node as next hop"
            + (f" ({problems[0]})" if problems else ""),
        )

    def fetch_all(self, pods: Mapping[str, str]) -> None:
        answers = fetch_pages(self.lab, sorted(pods.values()))
        for name, ip in pods.items():
            self.shell(f"python -m lab exec client -- curl -s http://{ip}/")
            print(answers.get(ip) or "(no answer)", file=self.out)
            self.expect(answers.get(ip) == name, f"the client reaches {name} at {ip}")

    # ---- the seed ----------------------------------------------------------------------------

    def run(self) -> None:
        lab = self.lab
        self.say("Create the SpiderIPPool used by the pods (the seed's nginx-ippool-v4)")
        self.apply("nginx-ippool-v4.yaml")
        self.get_sp()
        pool = self.pool(SEED_POOL)
        status = pool.get("status") or {}
        self.expect(
            int(status.get("allocatedIPCount") or 0) == 0 and status.get("totalIPCount") == 25602,
            "nginx-ippool-v4: 0 of 25602 IPs allocated",
        )

        self.say("The router's BGP sessions with both nodes (calicoctl node status in the seed)")
        lab.router.wait_established({a for n in lab.k8s_nodes for a in [lab.bgp_address(n)] if a}, timeout=60)
        self.shell("python -m lab vtysh -c 'show bgp summary'")
        print(lab.router.vtysh("show bgp summary"), file=self.out)
        self.expect(len(lab.router.established()) == len(lab.k8s_nodes), "both sessions Established")

        self.say("Create the seed's nginx Deployment (2 replicas, ippool annotation)")
        self.apply("nginx-deployment.yaml")
        self.get_pods()
        nginx = self.pods_of("nginx-")
        self.expect(len(nginx) == 2, "2 nginx pods running")
        self.expect(
            all(ip and netaddr.IPAddress(ip) in SEED_RANGE for ip in nginx.values()),
            f"their IPs come from 10.244.100.0-10.244.200.1: {sorted(nginx.values())}",
        )
        self.get_sp()
        self.expect(self.allocated(SEED_POOL) == 2, "nginx-ippool-v4: 2 allocated")
        self.show_bgp()
        self.fetch_all(nginx)

        self.say("Scale to 3 replicas")
        self.scale("nginx", 3)
        self.get_pods()
        nginx = self.pods_of("nginx-")
        self.expect(
            len(nginx) == 3 and all(netaddr.IPAddress(ip) in SEED_RANGE for ip in nginx.values()),
            "3 pods, IPs from the same pool",
        )
        self.get_sp()
        self.expect(self.allocated(SEED_POOL) == 3, "nginx-ippool-v4: 3 allocated")
        self.show_bgp()
        self.fetch_all(nginx)

        self.say("Delete a pod: its replacement is served, the old route is gone")
        victim = sorted(nginx)[0]
        self.delete_pod(victim)
        self.get_pods()
        after = self.pods_of("nginx-")
        self.expect(victim not in after and len(after) == 3, f"{victim} replaced, 3 pods again")
        self.show_bgp()
        self.fetch_all(after)

        self.say("A StatefulSet pod deleted and recreated keeps its IP")
        self.apply("web-statefulset.yaml")
        web = self.pods_of("web-")
        self.get_pods()
        before = web.get("web-1")
        self.delete_pod("web-1")
        web = self.pods_of("web-")
        self.get_pods()
        self.expect(
            before is not None and web.get("web-1") == before, f"web-1 kept {before} (now {web.get('web-1')})"
        )
        self.show_bgp()
        self.fetch_all(web)

        self.say(
            "A Deployment annotated with ipam.spidernet.io/subnet gets an auto-pool that follows its replicas"
        )
        self.apply("demo-subnet-v4.yaml")
        self.get_sp()
        for replicas in (4, 1):
            self.scale("auto", replicas)
            grown = self.wait(lambda r=replicas: self._auto_pool_size() == r + 1, timeout=30)  # type: ignore[misc]
            self.get_sp()
            self.expect(
                grown, f"the auto-pool holds replicas+1 = {replicas + 1} IPs (has {self._auto_pool_size()})"
            )
        self.fetch_all(self.pods_of("auto-"))

        self.dual_stack()
        self.blocks()

        self.say("Invariants")
        problems = check_invariants(lab, self.store)
        for line in problems:
            self.expect(False, line)
        self.expect(
            not problems,
            "no IP twice; every allocation on a live pod; counts match; routes exact; every pod answers",
        )

    def dual_stack(self) -> None:
        """The last step: a dual-stack pool pair and Deployment (Spiderpool's basic example), each pod
        reached by the client over IPv4 and IPv6; the invariants that follow cover both families."""
        self.say("A dual-stack Deployment: each pod gets an IPv4 and an IPv6 address and answers on both")
        self.apply("dual-stack.yaml")
        self.get_pods()
        pods = {
            p["metadata"]["name"]: [str(x.get("ip")) for x in (p.get("status") or {}).get("podIPs") or []]
            for p in self.store.list("Pod", namespace="default")
            if p["metadata"]["name"].startswith("dual-")
            and (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        }
        v4, v6 = netaddr.IPNetwork("10.245.0.0/16"), netaddr.IPNetwork("fd00:10:245::/64")
        self.expect(
            len(pods) == 2
            and all(
                sorted(netaddr.IPAddress(ip).version for ip in ips) == [4, 6]
                and all(netaddr.IPAddress(ip) in (v6 if ":" in ip else v4) for ip in ips)
                for ips in pods.values()
            ),
            f"2 dual pods, each with one address from {v4} and one from {v6}: {sorted(pods.values())}",
        )
        problems = self.routes_converged()
        self.shell("python -m lab vtysh -c 'show bgp ipv6 unicast'")
        print(self.lab.router.vtysh("show bgp ipv6 unicast"), file=self.out)
        self.expect(
            not problems,
            "the router has each pod's /32 and /128, IPv6 over the IPv4 sessions with next hop fd00:13::N"
            + (f" ({problems[0]})" if problems else ""),
        )
        answers = fetch_pages(self.lab, [ip for ips in pods.values() for ip in ips])
        for name, ips in sorted(pods.items()):
            for ip in ips:
                url = f"http://[{ip}]/" if ":" in ip else f"http://{ip}/"
                self.shell(f"python -m lab exec client -- curl -s {'-g ' if ':' in ip else ''}{url}")
                print(answers.get(ip) or "(no answer)", file=self.out)
                self.expect(answers.get(ip) == name, f"the client reaches {name} at {url}")

    def blocks(self) -> None:
        """A pool with allocation blocks (issue 15) under the agents' ``advertise: block``: the router
        holds one prefix per node's block; a StatefulSet pod moved to the other node keeps its address,
        which its new node announces as a /32 inside the old node's block; the client reaches all."""
        self.say("A pool with allocation blocks: the router learns one prefix per node's block")
        self.apply("block-ippool-v4.yaml")
        first, second = self.lab.k8s_nodes[0], self.lab.k8s_nodes[1]
        self.label(first, f"{DEMO_WEB_LABEL}=yes")
        self.apply("block-workloads.yaml")
        self.get_pods()
        pods = self.pods_of("blk-")
        self.expect(len(pods) == 3, f"3 pods of block-ippool-v4 running: {sorted(pods)}")
        self.expect(
            {self._node_of(n) for n in pods if not n.startswith("blk-web-")} == {first, second},
            f"the blk Deployment has a pod on {first} and one on {second}",
        )
        self.get_sp("sib")
        blocks = {b.cidr: b.node for b in block_views(self.lab, self.store)}
        self.expect(
            sorted(blocks.values()) == sorted([first, second]),
            f"one SpiderIPBlock per node: {blocks}",
        )
        self.show_block_routes(blocks, borrowed={})
        self.fetch_all(pods)

        self.say(f"Move the StatefulSet pod blk-web-0 to {second}: it keeps its address, now borrowed")
        before = pods.get("blk-web-0", "")
        self.label(first, f"{DEMO_WEB_LABEL}-")
        self.label(second, f"{DEMO_WEB_LABEL}=yes")
        self.delete_pod("blk-web-0")
        self.get_pods()
        pods = self.pods_of("blk-")
        moved = pods.get("blk-web-0")
        self.expect(
            moved == before and self._node_of("blk-web-0") == second,
            f"blk-web-0 runs on {second} with {before} (now {moved} on {self._node_of('blk-web-0')})",
        )
        owner = next(
            (node for cidr, node in blocks.items() if before and before in netaddr.IPNetwork(cidr)), ""
        )
        self.expect(owner == first, f"{before} lies in {first}'s block")
        self.show_block_routes(blocks, borrowed={f"{before}/32": second})
        self.fetch_all(pods)

    def show_block_routes(self, blocks: Mapping[str, str], borrowed: Mapping[str, str]) -> None:
        """The router's BGP routes of the block pool: exactly ``blocks`` and the ``borrowed`` /32s,
        each via its node (cidr or /32 -> node), and the invariants' route check over every pool."""
        problems = self.routes_converged()
        self.shell("python -m lab vtysh -c 'show ip route bgp'")
        print(self.lab.router.vtysh("show ip route bgp"), file=self.out)
        space = netaddr.IPNetwork(self.pool(BLOCK_POOL)["spec"]["subnet"])
        routes = self.lab.router.bgp_routes(("ipv4",))
        ours = {p: path.nexthop for p, path in routes.items() if netaddr.IPNetwork(p) in space}
        hops = {n: set(self.lab.node_addresses(n)) for n in self.lab.k8s_nodes}
        wanted = {**blocks, **borrowed}
        self.expect(
            set(ours) == set(wanted) and all(ours[p] in hops[n] for p, n in wanted.items()),
            f"the router's routes into {BLOCK_POOL} are the blocks and borrowed /32s {wanted}: {ours}",
        )
        self.expect(
            not problems,
            "every pod is routed to its node: by its block, or by its own /32 when borrowed"
            + (f" ({problems[0]})" if problems else ""),
        )

    def _node_of(self, name: str) -> str:
        try:
            return str((self.store.get("Pod", name, "default").get("spec") or {}).get("nodeName") or "")
        except NotFound:
            return ""

    def _auto_pool_size(self) -> int:
        """Usable IPs of the "auto" Deployment's auto pool (found by its application labels)."""
        wanted = {"ipam.spidernet.io/owner-application-name": "auto"}
        for pool in self.store.list("SpiderIPPool", labels=wanted):
            return int((pool.get("status") or {}).get("totalIPCount") or 0)
        return 0


def run_demo(*, run_dir: Path, env: Mapping[str, str], topology_file: Path, out: TextIO) -> int:
    """Build the lab if none is up in ``run_dir``, run the seed; the lab stays up for exploring."""
    if (run_dir / STATE_FILE).exists():
        lab = Lab.load(run_dir, env)
    else:
        print(f"==> python -m lab up  (topology {topology_file})", file=out, flush=True)
        lab = Lab.create(run_dir=run_dir, env=env, topology_file=topology_file)
        try:
            lab.up()
        except BaseException:
            lab.down()
            raise
    store = SqliteStore(lab.store_path)
    demo = Demo(lab, store, out)
    try:
        demo.run()
    except (NotFound, IpamError) as exc:
        demo.expect(False, str(exc))
    finally:
        store.close()
    print(file=out)
    if demo.failures:
        print(
            f"demo: {len(demo.failures)} check(s) failed; the lab is still up (python -m lab down)", file=out
        )
        return 1
    print("demo: every step and invariant held; the lab is still up (python -m lab down)", file=out)
    return 0
