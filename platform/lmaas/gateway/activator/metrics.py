"""Prometheus metrics of the activator (prefix ``lmaas_activator_``), on the gateway's registry.

Every series is labelled by service (the backend's key: the model name embedded,
``namespace/model-service`` on Kubernetes), a bounded set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ActivatorMetrics"]

_COLD_START_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class ActivatorMetrics:
    """Held requests, cold starts and their duration, timeouts, scale events, replicas."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.held = Gauge(
            "lmaas_activator_held_requests",
            "requests waiting for a ready replica of their service",
            ["service"],
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "lmaas_activator_cold_starts",
            "scale-ups of a service from zero replicas",
            ["service"],
            registry=self.registry,
        )
        self.cold_start_seconds = Histogram(
            "lmaas_activator_cold_start_seconds",
            "time from a scale-up from zero to the first ready replica",
            ["service"],
            buckets=_COLD_START_BUCKETS,
            registry=self.registry,
        )
        self.timeouts = Counter(
            "lmaas_activator_timeouts",
            "requests answered 503 because no replica became ready in time",
            ["service"],
            registry=self.registry,
        )
        self.failures = Counter(
            "lmaas_activator_activation_failures",
            "activations that failed because the runtime could not load its model",
            ["service"],
            registry=self.registry,
        )
        self.scale_events = Counter(
            "lmaas_activator_scale_events",
            "scale operations asked of the backend, by direction (up, down)",
            ["service", "direction"],
            registry=self.registry,
        )
        self.ready_replicas = Gauge(
            "lmaas_activator_ready_replicas",
            "replicas of a service known ready",
            ["service"],
            registry=self.registry,
        )
