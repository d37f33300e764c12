"""Prometheus metrics of the agent's IPAM side, on a registry the agent owns (never the global one)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IpamMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class IpamMetrics:
    allocations: Counter
    releases: Counter
    errors: Counter
    conflicts: Counter
    latency: Histogram
    pool_allocated: Gauge
    pool_total: Gauge
    gc_released: Counter
    leader: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IpamMetrics:
        return cls(
            allocations=Counter(
                "spiderbgp_ipam_allocations",
                "IP allocations answered (new and repeated ADDs)",
                registry=registry,
            ),
            releases=Counter(
                "spiderbgp_ipam_releases", "IP addresses released by CNI DEL or GC", registry=registry
            ),
            errors=Counter(
                "spiderbgp_ipam_errors",
                "CNI requests that ended in an error",
                ["operation"],
                registry=registry,
            ),
            conflicts=Counter(
                "spiderbgp_ipam_store_conflicts",
                "optimistic-concurrency conflicts retried on the object store",
                registry=registry,
            ),
            latency=Histogram(
                "spiderbgp_ipam_request_seconds",
                "time to answer a CNI request, by operation",
                ["operation"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            pool_allocated=Gauge(
                "spiderbgp_ipam_pool_allocated_ips", "allocated IPs per pool", ["pool"], registry=registry
            ),
            pool_total=Gauge(
                "spiderbgp_ipam_pool_total_ips", "usable IPs per pool", ["pool"], registry=registry
            ),
            gc_released=Counter(
                "spiderbgp_ipam_gc_released",
                "IPs released by garbage collection",
                ["reason"],
                registry=registry,
            ),
            leader=Gauge(
                "spiderbgp_leader", "1 while this agent runs the leader-only controllers", registry=registry
            ),
        )
