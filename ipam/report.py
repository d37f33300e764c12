"""``spiderbgp ipam show | check | release``: views and repairs of the allocation records (like calicoctl ipam)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ipam.block_claims import block_sizes, list_blocks
from ipam.errors import AllocationError, Invalid, NotFound
from ipam.model import Endpoint, IPPool, NicAllocation, ReservedIP, reserved_set
from ipam.ranges import canonical_ip, family_of_ip, ip_to_int
from ipam.records import IPRecord, Obj
from ipam.store.protocol import Store
from ipam.workload import PodInfo, is_pod_alive

__all__ = ["check", "find_record", "release_ip", "show_blocks", "show_ip", "show_pools"]


def _table(headers: list[str], rows: Iterable[list[str]]) -> str:
    table = [headers, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in table)


def _pools(store: Store) -> list[IPPool]:
    return [IPPool.from_obj(o) for o in store.list("SpiderIPPool")]


def show_pools(store: Store) -> str:
    """Every pool: usable IPs, reserved among them, in use, free (what can still be allocated)."""
    reserved = [ReservedIP.from_obj(o) for o in store.list("SpiderReservedIP")]
    rows: list[list[str]] = []
    for pool in _pools(store):
        usable = pool.usable
        blocked = usable & reserved_set(reserved, pool.ip_version)
        allocated = store.usage(pool.name).allocated
        in_use = len(allocated)
        # an IP reserved after it was handed out is both: count it once
        free = max(usable.size - blocked.size - sum(1 for v in allocated if not blocked.contains(v)), 0)
        share = f"{100 * in_use / usable.size:.1f}%" if usable.size else "-"
        state = "terminating" if pool.terminating else ("disabled" if pool.disable else "")
        rows.append(
            [
                pool.name,
                pool.subnet,
                str(usable.size),
                str(blocked.size),
                str(in_use),
                share,
                str(free),
                state,
            ]
        )
    if not rows:
        return "No IP pools."
    out = _table(["POOL", "SUBNET", "IPS-TOTAL", "RESERVED", "IN-USE", "USED", "FREE", "STATE"], rows)
    blocks = show_blocks(store)
    return f"{out}\n\n{blocks}" if blocks else out


def show_blocks(store: Store) -> str:
    """The allocation blocks (node, addresses in use) and the borrowed addresses of block pools: held
    by a node other than the block's, or in no claimed block; empty when no block is claimed."""
    blocks = list_blocks(store)
    if not blocks:
        return ""
    node_of = {
        f"{e.namespace}/{e.name}": e.node for e in map(Endpoint.from_obj, store.list("SpiderEndpoint"))
    }
    sizes = block_sizes(store, {b.pool for b in blocks})
    block_rows: list[list[str]] = []
    borrowed: list[list[str]] = []
    for pool, (family, _) in sorted(sizes.items()):
        own = [b for b in blocks if b.pool == pool]
        counts = dict.fromkeys((b.name for b in own), 0)
        for record in store.records(pool):
            value = ip_to_int(record.ip, family)
            block = next((b for b in own if b.start <= value <= b.end), None)
            holder = node_of.get(record.pod, "")
            if block is not None:
                counts[block.name] += 1
            if block is None or holder != block.node:
                borrowed.append(
                    [pool, record.ip, record.pod, holder or "-", block.node if block else "(unclaimed)"]
                )
        block_rows += [[pool, b.cidr, b.node, str(counts[b.name])] for b in own]
    out = "Blocks:\n" + _table(["POOL", "BLOCK", "NODE", "IN-USE"], block_rows)
    if borrowed:
        out += "\n\nBorrowed:\n" + _table(["POOL", "IP", "POD", "NODE", "BLOCK-NODE"], borrowed)
    return out


def find_record(store: Store, ip: str) -> tuple[IPPool | None, IPRecord | None]:
    """The pool that holds ``ip`` and the record that allocates it, if any.

    Several pools of one subnet may list an IP in ``spec.ips`` as long as all but one exclude it, so
    the pool with a record wins, then the pool that may hand it out, then any pool listing it."""
    family = family_of_ip(ip)
    value = ip_to_int(ip, family)
    listing = [p for p in _pools(store) if p.ip_version == family and p.ips.contains(value)]
    for pool in listing:
        record = next((r for r in store.records(pool.name) if r.ip == ip), None)
        if record is not None:
            return pool, record
    usable = [p for p in listing if p.usable.contains(value)]
    return next(iter(usable or listing), None), None


def _ip_arg(ip: str) -> str:
    try:
        return canonical_ip(ip)
    except ValueError:
        raise Invalid("ip", ip, "--ip", "is not an IP address") from None


def show_ip(store: Store, ip: str) -> str:
    ip = _ip_arg(ip)
    pool, record = find_record(store, ip)
    if pool is None:
        return f"{ip} is in no pool"
    value = ip_to_int(ip, pool.ip_version)
    reserved = [ReservedIP.from_obj(o) for o in store.list("SpiderReservedIP")]
    notes: list[str] = []
    if pool.exclude_ips.contains(value):
        notes.append("excluded by the pool")
    if reserved_set(reserved, pool.ip_version).contains(value):
        notes.append("reserved by a SpiderReservedIP")
    lines = [f"IP:     {ip}", f"Pool:   {pool.name} ({pool.subnet})"]
    if record is None:
        lines.append("State:  free" + (f" ({', '.join(notes)})" if notes else ""))
        return "\n".join(lines)
    namespace, _, name = record.pod.partition("/")
    lines += ["State:  allocated", f"Pod:    {record.pod}", f"PodUID: {record.pod_uid}"]
    try:
        endpoint = Endpoint.from_obj(store.get("SpiderEndpoint", name, namespace))
        lines.append(f"Node:   {endpoint.node}")
        if endpoint.container_id:
            lines.append(f"Container: {endpoint.container_id}")
    except NotFound:
        lines.append("Node:   (no SpiderEndpoint)")
    if notes:
        lines.append(f"Note:   {', '.join(notes)}")
    return "\n".join(lines)


def _pod(store: Store, namespace: str, name: str) -> PodInfo | None:
    try:
        return PodInfo.from_obj(store.get("Pod", name, namespace))
    except NotFound:
        return None


def check(store: Store) -> tuple[str, int]:
    """Cross-check pools, records, endpoints and pods; returns (report, number of problems)."""
    problems: list[str] = []
    pools = {o["metadata"]["name"]: o for o in store.list("SpiderIPPool")}
    endpoints: dict[str, Endpoint] = {}
    for obj in store.list("SpiderEndpoint"):
        parsed = Endpoint.from_obj(obj)
        endpoints[f"{parsed.namespace}/{parsed.name}"] = parsed
    total = 0
    for name, obj in pools.items():
        pool = IPPool.from_obj(obj)
        records = store.records(name)
        total += len(records)
        count = (obj.get("status") or {}).get("allocatedIPCount")
        if count is not None and count != len(records):
            problems.append(f"pool {name}: allocatedIPCount {count} but {len(records)} records")
        for record in records:
            if not pool.ips.contains(ip_to_int(record.ip, pool.ip_version)):
                problems.append(f"pool {name}: {record.ip} is recorded but outside spec.ips")
            namespace, _, pod_name = record.pod.partition("/")
            pod = _pod(store, namespace, pod_name)
            endpoint = endpoints.get(record.pod)
            if endpoint is None:
                problems.append(f"{record.ip} ({name}): no SpiderEndpoint for {record.pod}")
            elif record.ip not in {ip for nic in endpoint.ips for ip in _nic_ips(nic)}:
                problems.append(f"{record.ip} ({name}): SpiderEndpoint {record.pod} does not list it")
            if pod is None:
                if endpoint is None or endpoint.owner_controller_type != "StatefulSet":
                    problems.append(
                        f"{record.ip} ({name}): pod {record.pod} does not exist (leaked; GC frees it)"
                    )
            elif pod.uid != record.pod_uid and (
                endpoint is None or endpoint.owner_controller_type != "StatefulSet"
            ):
                problems.append(
                    f"{record.ip} ({name}): recorded for pod UID {record.pod_uid}, pod has {pod.uid}"
                )
    for key, endpoint in endpoints.items():
        for nic in endpoint.ips:
            for pool_name, ip in ((nic.ipv4_pool, nic.ipv4), (nic.ipv6_pool, nic.ipv6)):
                if not pool_name or not ip:
                    continue
                bare = ip.partition("/")[0]
                if pool_name not in pools:
                    problems.append(f"SpiderEndpoint {key}: pool {pool_name} of {bare} does not exist")
                elif not any(r.ip == bare for r in store.records_of_pod(endpoint.namespace, endpoint.name)):
                    problems.append(f"SpiderEndpoint {key}: {bare} has no record in pool {pool_name}")
    summary = f"Checked {len(pools)} pools, {total} allocations, {len(endpoints)} endpoints: "
    summary += f"{len(problems)} problems found." if problems else "no problems found."
    return "\n".join([*problems, summary]), len(problems)


def _nic_ips(nic: NicAllocation) -> list[str]:
    return [cidr.partition("/")[0] for cidr in (nic.ipv4, nic.ipv6) if cidr]


def release_ip(store: Store, ip: str, *, force: bool = False) -> str:
    """Release one IP and drop it from its pod's SpiderEndpoint.  A live pod's IP needs ``force``."""
    ip = _ip_arg(ip)
    pool, record = find_record(store, ip)
    if pool is None or record is None:
        return f"{ip} is not allocated; nothing to release"
    namespace, _, name = record.pod.partition("/")
    pod = _pod(store, namespace, name)
    if not force and pod is not None and pod.uid == record.pod_uid and is_pod_alive(pod):
        raise AllocationError(f"{ip} is held by live pod {record.pod}; use --force to release it anyway")
    endpoint_obj: Obj | None
    try:
        endpoint_obj = store.get("SpiderEndpoint", name, namespace)
    except NotFound:
        endpoint_obj = None
    endpoint_update: Obj | None = None
    delete: tuple[str, str] | None = None
    if endpoint_obj is not None:
        endpoint = Endpoint.from_obj(endpoint_obj)
        if endpoint.uid == record.pod_uid:
            remaining = tuple(n for n in endpoint.ips if ip not in _nic_ips(n))
            if remaining:
                endpoint_update = replace(endpoint, ips=remaining).to_obj()
            else:
                delete = (namespace, name)
    store.commit(releases=[record], endpoint=endpoint_update, delete_endpoint=delete)
    return f"released {ip} from pool {pool.name} (was {record.pod})"
