"""The seed, step by step, on the namespace lab; ends with the invariants (exit 1 if any fails).

Each step prints what the seed shows (``kubectl get sp``, ``kubectl get po -o wide``, the router's
``show bgp summary`` / ``show bgp ipv4 unicast``, the client's page fetches) and checks it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

import netaddr

from ipam.errors import NotFound
from ipam.store import Obj, Store
from lab.build import REPO_ROOT, STATE_FILE, Lab
from lab.cli import format_pods, open_kubelet, run_spiderbgp
from lab.invariants import check_invariants, fetch_pages, pod_views, route_problems
from lab.kubelet import Kubelet

__all__ = ["Demo", "run_demo"]

CONFIGS = REPO_ROOT / "configs"
SEED_POOL = "nginx-ippool-v4"
SEED_RANGE = netaddr.IPRange("10.244.100.0", "10.244.200.1")


class Demo:
    def __init__(self, lab: Lab, kubelet: Kubelet, store: Store, out: TextIO) -> None:
        self.lab, self.kubelet, self.store, self.out = lab, kubelet, store, out
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

    def get_sp(self) -> None:
        self.shell("spiderbgp get sp")
        run_spiderbgp(self.lab, ["get", "sp"], self.out)

    def get_pods(self) -> None:
        self.shell("python -m lab get pods")
        pods = self.store.list("Pod", namespace=self.kubelet.namespace)
        print(format_pods(pods, now=time.time()), file=self.out)

    def pool(self, name: str) -> Obj:
        return self.store.get("SpiderIPPool", name)

    def allocated(self, name: str) -> int:
        return int((self.pool(name).get("status") or {}).get("allocatedIPCount") or 0)

    def pods_of(self, prefix: str) -> dict[str, str]:
        """name -> IP of the running pods whose name starts with ``prefix``."""
        return {
            key.split("/", 1)[1]: rt.ip
            for key, rt in sorted(self.kubelet.pods.items())
            if key.split("/", 1)[1].startswith(prefix)
        }

    def wait(self, probe: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.3)
        return True

    def routes_converged(self, timeout: float = 20.0) -> list[str]:
        views = pod_views(self.lab, self.kubelet)
        problems: list[str] = []

        def probe() -> bool:
            problems[:] = route_problems(self.lab.router.bgp_routes(), views)
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
        self.shell(f"spiderbgp apply -f {CONFIGS / 'nginx-ippool-v4.yaml'}")
        run_spiderbgp(lab, ["apply", "-f", str(CONFIGS / "nginx-ippool-v4.yaml")], self.out)
        self.get_sp()
        pool = self.pool(SEED_POOL)
        status = pool.get("status") or {}
        self.expect(
            int(status.get("allocatedIPCount") or 0) == 0 and status.get("totalIPCount") == 25602,
            "nginx-ippool-v4: 0 of 25602 IPs allocated",
        )

        self.say("The router's BGP sessions with both nodes (calicoctl node status in the seed)")
        lab.router.wait_established(
            {a for n in lab.k8s_nodes for a in [lab._bgp_address(n)] if a}, timeout=60
        )
        self.shell("python -m lab vtysh -c 'show bgp summary'")
        print(lab.router.vtysh("show bgp summary"), file=self.out)
        self.expect(len(lab.router.established()) == len(lab.k8s_nodes), "both sessions Established")

        self.say("Create the seed's nginx Deployment (2 replicas, ippool annotation)")
        self.shell(f"python -m lab apply -f {CONFIGS / 'nginx-deployment.yaml'}")
        run_spiderbgp(lab, ["apply", "-f", str(CONFIGS / "nginx-deployment.yaml")], self.out)
        self.kubelet.reconcile()
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
        self.shell("python -m lab scale nginx 3")
        print(self.kubelet.scale("nginx", 3), file=self.out)
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
        self.shell(f"python -m lab delete-pod {victim}")
        self.kubelet.delete_pod(victim)
        self.get_pods()
        after = self.pods_of("nginx-")
        self.expect(victim not in after and len(after) == 3, f"{victim} replaced, 3 pods again")
        self.show_bgp()
        self.fetch_all(after)

        self.say("A StatefulSet pod deleted and recreated keeps its IP")
        self.shell(f"python -m lab apply -f {CONFIGS / 'web-statefulset.yaml'}")
        run_spiderbgp(lab, ["apply", "-f", str(CONFIGS / "web-statefulset.yaml")], self.out)
        self.kubelet.reconcile()
        web = self.pods_of("web-")
        self.get_pods()
        before = web.get("web-1")
        self.shell("python -m lab delete-pod web-1")
        self.kubelet.delete_pod("web-1")
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
        self.shell(f"python -m lab apply -f {CONFIGS / 'demo-subnet-v4.yaml'}")
        run_spiderbgp(lab, ["apply", "-f", str(CONFIGS / "demo-subnet-v4.yaml")], self.out)
        self.kubelet.reconcile()
        self.get_sp()
        for replicas in (4, 1):
            self.shell(f"python -m lab scale auto {replicas}")
            print(self.kubelet.scale("auto", replicas), file=self.out)
            grown = self.wait(lambda r=replicas: self._auto_pool_size() == r + 1, timeout=30)  # type: ignore[misc]
            self.get_sp()
            self.expect(
                grown, f"the auto-pool holds replicas+1 = {replicas + 1} IPs (has {self._auto_pool_size()})"
            )
        self.fetch_all(self.pods_of("auto-"))

        self.say("Invariants")
        problems = check_invariants(lab, self.kubelet, self.store)
        for line in problems:
            self.expect(False, line)
        self.expect(
            not problems,
            "no IP twice; every allocation on a live pod; counts match; routes exact; every pod answers",
        )

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
    kubelet, store = open_kubelet(lab, out)
    try:
        kubelet.ensure_cluster_objects()
        demo = Demo(lab, kubelet, store, out)
        try:
            demo.run()
        except NotFound as exc:
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
