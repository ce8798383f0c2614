"""The allocator's Prometheus metrics, under the names of CONTRACTS.md section 5.

The UI helper's dashboard and alert rules read exactly these names; change them there too.
Ratios are 0-1 (Prometheus convention), durations in seconds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OUTCOMES = ("placed", "dry_run", "nofit", "refused", "error")
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class ServiceMetrics:
    """One registry per service (not the process-global one: tests build many services)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.decisions = Counter(
            "keti_allocator_decisions",
            "Allocation decisions by outcome (placed, dry_run, nofit, refused, error)",
            ["policy", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "keti_allocator_decision_duration_seconds",
            "Time to decide one pod, every outcome included",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.releases = Counter("keti_allocator_releases", "Released bookings", registry=r)
        self.store_errors = Counter(
            "keti_allocator_store_errors",
            "Booking-store writes that failed (nothing booked)",
            ["op"],
            registry=r,
        )
        self.telemetry_dropped = Counter(
            "keti_allocator_telemetry_dropped",
            "Telemetry events dropped because the writer's queue was full",
            registry=r,
        )
        self.set_aside = Gauge(
            "keti_allocator_set_aside_bookings",
            "Bookings set aside (their node or GPU is gone, or they no longer fit)",
            registry=r,
        )
        self.unallocated = Gauge(
            "keti_cluster_unallocated_gpu_ratio", "GPU capacity no pod holds (0-1)", registry=r
        )
        self.fragmentation = Gauge(
            "keti_cluster_fragmentation_ratio",
            "FGD fragmentation as a share of GPU capacity (0-1)",
            registry=r,
        )
        self.pods_placed = Gauge("keti_cluster_pods_placed", "Pods booked now", registry=r)
        self.info = Gauge(
            "keti_allocator_info", "The serving policy (value 1)", ["policy"], registry=r
        )
        self._policy: str | None = None
        self._children: dict[tuple[str, str], Counter] = {}

    def decided(self, policy: str, outcome: str, seconds: float) -> None:
        child = self._children.get((policy, outcome))
        if child is None:  # `labels()` costs a lock and a lookup: resolve each pair once
            child = self._children[(policy, outcome)] = self.decisions.labels(policy, outcome)
        child.inc()
        self.duration.observe(seconds)

    def serving(self, policy: str) -> None:
        """keti_allocator_info{policy} is 1 for the serving policy only."""
        if policy == self._policy:
            return
        if self._policy is not None:
            self.info.remove(self._policy)
        self.info.labels(policy).set(1)
        self._policy = policy

    def text(self) -> bytes:
        return generate_latest(self.registry)
