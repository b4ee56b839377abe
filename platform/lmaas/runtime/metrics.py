"""Prometheus metrics of a runtime (prefix ``lmaas_runtime_``), on a per-app registry.

Speculative decoding figures (prefix ``lmaas_spec_``, labels `model` and `proposer`, the
names of `lmaas.engine.speculation.metrics.SpecMetrics`) are read from the engine's stats
at scrape time: proposed and accepted tokens, acceptance per draft position, the chosen
k histogram, generated tokens and decoding seconds (goodput = their rates' ratio), the
goodput gauge, acceptance per tenant and the draft model's version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
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
        spec = stats.get("speculation")
        if spec:
            yield from _speculation(spec)


_K_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16)


def _speculation(spec: dict) -> Iterator[GaugeMetricFamily]:
    """The engine's `SpecStats.snapshot()` (plus `model`, `proposer`) as metric families."""
    names = ["model", "proposer"]
    base = [str(spec.get("model", "")), str(spec.get("proposer", ""))]

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=names)
        family.add_metric(base, value)
        return family

    yield counter(
        "lmaas_spec_proposed_tokens", "Tokens proposed for verification.", spec["proposed_tokens"]
    )
    yield counter(
        "lmaas_spec_accepted_tokens",
        "Proposed tokens the target accepted.",
        spec["accepted_tokens"],
    )
    yield counter(
        "lmaas_spec_generated_tokens",
        "Tokens produced by decoding steps (accepted proposals + one per request).",
        spec["generated_tokens"],
    )
    yield counter("lmaas_spec_step_seconds", "Time spent in decoding steps.", spec["step_seconds"])
    goodput = GaugeMetricFamily(
        "lmaas_spec_goodput_tokens_per_second",
        "Generated tokens per second of decoding steps (since start).",
        labels=names,
    )
    goodput.add_metric(base, spec["goodput_tokens_per_second"])
    yield goodput
    if spec.get("draft_version") is not None:
        version = GaugeMetricFamily(
            "lmaas_spec_draft_version", "Version of the draft model in use.", labels=names
        )
        version.add_metric(base, spec["draft_version"])
        yield version
    position = GaugeMetricFamily(
        "lmaas_spec_position_acceptance",
        "Acceptance rate at each draft position (accepted / reached, since start).",
        labels=[*names, "position"],
    )
    for i, rate in enumerate(spec["position_acceptance"]):
        position.add_metric([*base, str(i + 1)], rate)
    yield position
    tenants = GaugeMetricFamily(
        "lmaas_spec_tenant_acceptance",
        "Fraction of proposed tokens accepted, per tenant (since start).",
        labels=[*names, "tenant"],
    )
    for tenant, rate in spec["tenant_acceptance"].items():
        tenants.add_metric([*base, tenant], rate)
    yield tenants
    counts = {int(k): n for k, n in spec["chosen_k"].items()}
    buckets = []
    for bound in _K_BUCKETS:
        seen = sum(n for k, n in counts.items() if k <= bound)
        buckets.append((str(float(bound)), seen))
    buckets.append(("+Inf", sum(counts.values())))
    chosen = HistogramMetricFamily(
        "lmaas_spec_chosen_k",
        "Speculation length chosen per request and step (0 = none).",
        labels=names,
    )
    chosen.add_metric(base, buckets, sum_value=float(sum(k * n for k, n in counts.items())))
    yield chosen


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
