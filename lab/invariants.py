"""The invariants checked after every lab scenario, over every namespace.

1. No IP is allocated twice (across every pool).
2. Every allocation belongs to a running pod (same UID) that has that IP on its interface.
3. Every pool's ``status.allocatedIPCount`` equals its records.
4. The router's BGP table holds exactly the running pods' /32s (/128s), each with the next hop of the
   pod's node; with allocation blocks (``advertise: block``), each claimed SpiderIPBlock's prefix with
   the next hop of its node instead of the /32s of that node's pods inside it (a pod held elsewhere, a
   *borrowed* address, keeps its /32 via its own node, and no /32 is announced for an address inside
   its holder's own block).
5. Every running pod answers the client with its name (``namespace/name`` outside ``default``).

The running pods are the store's Pods in phase Running (what the controller wrote), each looked at
in its own network namespace.

The comparisons are pure functions over plain values; ``check_invariants`` gathers the values from the
store, the namespaces, the router and the client (waiting a bounded time for BGP to converge).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import netaddr

from ipam.blocks import BLOCK_KIND, parse_block
from ipam.records import IPRecord
from ipam.store.protocol import Store
from lab.build import REPO_ROOT, Lab
from lab.frr import BgpPath
from lab.kubelet import POD_IFNAME, pod_netns, served_name
from lab.netns import Netns, addresses, run

__all__ = [
    "BlockView",
    "PodView",
    "allocation_problems",
    "answer_problems",
    "block_views",
    "check_invariants",
    "count_problems",
    "fetch_pages",
    "route_problems",
]


@dataclass(frozen=True)
class PodView:
    """A running pod as the checks see it."""

    key: str  # namespace/name
    uid: str
    ips: tuple[str, ...]
    node_addresses: frozenset[str]
    iface_addresses: frozenset[str]  # bare IPs on the pod's interface
    node: str = ""


@dataclass(frozen=True)
class BlockView:
    """A claimed allocation block (SpiderIPBlock) as the checks see it."""

    cidr: str  # as the router prints it
    node: str
    node_addresses: frozenset[str]


def allocation_problems(records: Sequence[IPRecord], pods: Mapping[str, PodView]) -> list[str]:
    """Invariants 1 and 2."""
    problems: list[str] = []
    for ip, n in sorted(Counter(r.ip for r in records).items()):
        if n > 1:
            holders = ", ".join(f"{r.pool}:{r.pod}" for r in records if r.ip == ip)
            problems.append(f"IP {ip} is allocated {n} times ({holders})")
    for r in records:
        pod = pods.get(r.pod)
        if pod is None:
            problems.append(
                f"SpiderIPPool {r.pool!r}: {r.ip} is allocated to {r.pod}, which has no running pod"
            )
        elif pod.uid != r.pod_uid:
            problems.append(
                f"SpiderIPPool {r.pool!r}: {r.ip} is held by UID {r.pod_uid}, pod {r.pod} is {pod.uid}"
            )
        elif r.ip not in pod.iface_addresses:
            problems.append(f"SpiderIPPool {r.pool!r}: {r.ip} of pod {r.pod} is not on its {POD_IFNAME}")
    return problems


def count_problems(counts: Mapping[str, int | None], records: Sequence[IPRecord]) -> list[str]:
    """Invariant 3: ``counts`` is status.allocatedIPCount per pool."""
    per_pool = Counter(r.pool for r in records)
    return [
        f"SpiderIPPool {pool!r}: status.allocatedIPCount is {count}, records say {per_pool.get(pool, 0)}"
        for pool, count in sorted(counts.items())
        if (count or 0) != per_pool.get(pool, 0)
    ]


def route_problems(
    routes: Mapping[str, BgpPath], pods: Mapping[str, PodView], blocks: Sequence[BlockView] = ()
) -> list[str]:
    """Invariant 4: the router's best paths are exactly the blocks via their nodes and the pods' /32s
    (/128s) via theirs, except those inside a block of their own node."""
    problems: list[str] = []
    nets = [(netaddr.IPNetwork(b.cidr), b) for b in blocks]
    wanted: dict[str, tuple[str, frozenset[str]]] = {
        b.cidr: (f"block of {b.node}", b.node_addresses) for b in blocks
    }
    in_own_block: dict[str, str] = {}
    for p in pods.values():
        for ip in p.ips:
            prefix = f"{ip}/{128 if ':' in ip else 32}"
            addr = netaddr.IPAddress(ip)
            own = next((b for net, b in nets if addr in net and b.node == p.node), None)
            if own is not None:
                in_own_block[prefix] = f"pod {p.key}, inside {own.node}'s block {own.cidr}"
            else:
                wanted[prefix] = (f"pod {p.key}", p.node_addresses)
    for prefix, (what, hops) in sorted(wanted.items()):
        path = routes.get(prefix)
        if path is None:
            problems.append(f"router: no BGP route for {prefix} ({what})")
        elif path.nexthop not in hops:
            problems.append(
                f"router: {prefix} ({what}) has next hop {path.nexthop}, its node is {sorted(hops)}"
            )
    for prefix in sorted(set(routes) - set(wanted)):
        why = in_own_block.get(prefix)
        problems.append(
            f"router: BGP route {prefix} via {routes[prefix].nexthop} "
            + (
                f"is a /32 announced for an address inside its holder's block ({why})"
                if why
                else "belongs to no running pod"
            )
        )
    return problems


def answer_problems(answers: Mapping[str, str | None], pods: Mapping[str, PodView]) -> list[str]:
    """Invariant 5: each pod's page, fetched by the client, names the pod."""
    problems: list[str] = []
    for pod in sorted(pods.values(), key=lambda p: p.key):
        name = served_name(pod.key)
        for ip in pod.ips:
            got = answers.get(ip)
            if got != name:
                problems.append(f"client: {_url(ip)} (pod {pod.key}) answered {got!r}, wanted {name!r}")
    return problems


def _url(ip: str) -> str:
    return f"http://[{ip}]/" if ":" in ip else f"http://{ip}/"


def fetch_pages(lab: Lab, ips: Sequence[str], *, timeout: float = 2.0) -> dict[str, str | None]:
    """One ``lab.probe`` run inside the client namespace."""
    if not ips:
        return {}
    res = run(
        Netns(lab.sandbox.name(lab.client)),
        [sys.executable, "-m", "lab.probe", "--timeout", str(timeout), *ips],
        env={**lab.env, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
        timeout=30 + timeout,
    )
    data = json.loads(res.stdout)
    return {str(k): (None if v is None else str(v)) for k, v in data.items()}


def pod_views(lab: Lab, store: Store) -> dict[str, PodView]:
    """Every Running pod of every namespace, with the addresses on its interface."""
    views: dict[str, PodView] = {}
    node_addrs = {n: frozenset(lab.node_addresses(n)) | _v6(lab, n) for n in lab.k8s_nodes}
    for pod in store.list("Pod"):
        meta, status = pod["metadata"], pod.get("status") or {}
        if status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        namespace, name = str(meta.get("namespace") or "default"), str(meta["name"])
        ips = tuple(str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip"))
        try:
            on_iface = frozenset(
                a.split("/")[0] for a in addresses(pod_netns(lab, namespace, name), POD_IFNAME)
            )
        except (LookupError, OSError):
            on_iface = frozenset()
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        views[f"{namespace}/{name}"] = PodView(
            f"{namespace}/{name}",
            str(meta.get("uid") or ""),
            ips,
            node_addrs.get(node, frozenset()),
            on_iface,
            node,
        )
    return views


def block_views(lab: Lab, store: Store) -> list[BlockView]:
    """Every claimed SpiderIPBlock, with the addresses of its node (the next hops it may have)."""
    node_addrs = {n: frozenset(lab.node_addresses(n)) | _v6(lab, n) for n in lab.k8s_nodes}
    views: list[BlockView] = []
    for obj in store.list(BLOCK_KIND):
        block = parse_block(obj)
        cidr = str(netaddr.IPNetwork(block.cidr).cidr)
        views.append(BlockView(cidr, block.node, node_addrs.get(block.node, frozenset())))
    return views


def _v6(lab: Lab, node: str) -> frozenset[str]:
    """The node's global IPv6 addresses (next hops of IPv6 pod routes)."""
    try:
        found = addresses(Netns(lab.sandbox.name(node)))
    except (LookupError, OSError):
        return frozenset()
    return frozenset(a.split("/")[0] for a in found if ":" in a and not a.lower().startswith("fe80"))


def _wait_for_empty(probe: Callable[[], list[str]], timeout: float, interval: float = 0.5) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        problems = probe()
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(interval)


def check_invariants(lab: Lab, store: Store, *, timeout: float = 20.0) -> list[str]:
    """Every invariant; returns the problems (empty = all hold).  BGP and the client check are
    retried for up to ``timeout`` seconds, since announcements converge asynchronously."""
    pods = pod_views(lab, store)
    pools = store.list("SpiderIPPool")
    records = [r for pool in pools for r in store.records(pool["metadata"]["name"])]
    counts = {p["metadata"]["name"]: (p.get("status") or {}).get("allocatedIPCount") for p in pools}
    problems = allocation_problems(records, pods) + count_problems(counts, records)
    problems += _wait_for_empty(
        lambda: route_problems(lab.router.bgp_routes(), pods, block_views(lab, store)), timeout
    )
    ips = sorted(ip for p in pods.values() for ip in p.ips)
    problems += _wait_for_empty(lambda: answer_problems(fetch_pages(lab, ips), pods), timeout / 2)
    return problems
