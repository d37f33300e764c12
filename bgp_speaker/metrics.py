"""The speaker's Prometheus metrics, registered on a registry the caller passes (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["CONVERGENCE_STAGES", "LATENCY_BUCKETS", "SpeakerMetrics"]

# the stages of spiderbgp_bgp_convergence_seconds: an address allocated (CNI ADD answered) -> its host
# route seen; its host prefix announceable (routed, Ready, not suppressed) -> UPDATE acked by ExaBGP;
# and for withdrawals, from the cause (released, pod NotReady or terminating, host route gone) -> acked
CONVERGENCE_STAGES = (
    "allocated_to_route",
    "ready_to_announced",
    "released_to_withdrawn",
    "unready_to_withdrawn",
    "route_to_withdrawn",
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SpeakerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, prefix: str = "spiderbgp_bgp") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.session_up = Gauge(
            f"{prefix}_session_up",
            "1 while the BGP session with the peer is Established",
            ["peer"],
            registry=r,
        )
        self.announced_prefixes = Gauge(
            f"{prefix}_announced_prefixes",
            "Prefixes announced to the peer (acked by ExaBGP)",
            ["peer"],
            registry=r,
        )
        self.updates_sent = Counter(
            f"{prefix}_prefix_updates",
            "Prefixes sent to ExaBGP for the peer, by action (announce or withdraw)",
            ["peer", "action"],
            registry=r,
        )
        self.refused_prefixes = Gauge(
            f"{prefix}_refused_ips", "Pod IPs the export policy keeps out of BGP", registry=r
        )
        self.held_back_prefixes = Gauge(
            f"{prefix}_held_back_prefixes",
            "Prefixes not announced because of maxPrefixes",
            ["peer"],
            registry=r,
        )
        self.reconcile_repairs = Counter(
            f"{prefix}_reconcile_repairs",
            "Differences between ExaBGP's adj-rib-out and the desired routes, repaired",
            registry=r,
        )
        self.reconcile_runs = Counter(f"{prefix}_reconcile_runs", "Reconciliations run", registry=r)
        self.exabgp_restarts = Counter(
            f"{prefix}_exabgp_restarts", "Times ExaBGP was started again after it stopped", registry=r
        )
        self.exabgp_up = Gauge(
            f"{prefix}_exabgp_up", "1 while ExaBGP runs and its relay is connected", registry=r
        )
        self.command_errors = Counter(
            f"{prefix}_command_errors", "Commands ExaBGP answered with error", registry=r
        )
        self.announce_latency = Histogram(
            f"{prefix}_announce_latency_seconds",
            "From an IP being allocated on this node to ExaBGP accepting its announcement",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.convergence = Histogram(
            f"{prefix}_convergence_seconds",
            "Per pod address, by stage: allocated_to_route (CNI ADD answered -> host route seen), "
            "ready_to_announced (announceable -> UPDATE acked by ExaBGP), released_to_withdrawn, "
            "unready_to_withdrawn, route_to_withdrawn (cause -> withdrawal acked)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for stage in CONVERGENCE_STAGES:
            self.convergence.labels(stage=stage)
        self.suppressed_prefixes = Gauge(
            f"{prefix}_damping_suppressed_prefixes",
            "Pod prefixes flap damping holds back right now",
            registry=r,
        )
        self.damping_suppressions = Counter(
            f"{prefix}_damping_suppressions",
            "Times flap damping started holding a prefix back",
            registry=r,
        )
