"""Prometheus metrics of a runtime (prefix ``lmaas_runtime_``), on a per-app registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lmaas.engine.interface import InferenceEngine

__all__ = ["RuntimeMetrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _EngineCollector(Collector):
    """Reads the engine's live figures at scrape time."""

    def __init__(self, engine: Callable[[], InferenceEngine | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self._engine()
        stats = engine.stats() if engine is not None else {}
        adapters = engine.adapters() if engine is not None else []
        yield GaugeMetricFamily(
            "lmaas_runtime_ready", "1 once the model is loaded", value=int(engine is not None)
        )
        yield GaugeMetricFamily(
            "lmaas_runtime_queue_depth",
            "requests waiting for the engine",
            value=stats.get("num_waiting", 0),
        )
        yield GaugeMetricFamily(
            "lmaas_runtime_running_requests",
            "requests the engine is decoding",
            value=stats.get("num_running", 0),
        )
        loaded = GaugeMetricFamily(
            "lmaas_runtime_loaded_adapters", "adapters loaded, by location", labels=["location"]
        )
        for location in ("device", "host"):
            loaded.add_metric([location], sum(1 for a in adapters if a.location == location))
        yield loaded


class RuntimeMetrics:
    """Counters and histograms of one runtime app."""

    def __init__(self, engine: Callable[[], InferenceEngine | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lmaas_runtime_requests",
            "generate requests by outcome (ok, rejected, error, cancelled)",
            ["outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "lmaas_runtime_tokens",
            "tokens processed, by kind (prompt, completion)",
            ["kind"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "lmaas_runtime_request_seconds",
            "time from request to last token",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "lmaas_runtime_time_to_first_token_seconds",
            "time from request to first token",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))
