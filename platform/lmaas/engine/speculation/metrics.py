"""What speculation did: a plain accumulator (`SpecStats`) and its Prometheus export (`SpecMetrics`).

The engine feeds `SpecStats` from its step loop:

- `record_step(seconds, ks, num_generated)` once per step: the k chosen per decoding
  request, the tokens the step produced (accepted + one per request), and its seconds;
- `record_verification(tenant_id, num_proposed, num_accepted)` once per request that
  proposed something this step.

`SpecStats` keeps totals and per-position, per-tenant figures (`snapshot()` is plain JSON
for `EngineStats` and the benchmarks) and, when given a `SpecMetrics`, updates it as it
goes. Metrics (prefix `lmaas_spec_`, labels `model`, `proposer`; per tenant `tenant`):
proposed and accepted tokens, tokens reached/accepted per position and the acceptance per
position, the chosen k histogram, generated tokens and step seconds (goodput = their rate
ratio) and a goodput gauge (EWMA), and acceptance per tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SpecMetrics", "SpecStats"]

_K_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16)


class SpecMetrics:
    """The Prometheus side: create once per process (per `registry`) and share."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else REGISTRY
        base = ["model", "proposer"]
        self.proposed = Counter(
            "lmaas_spec_proposed_tokens", "Tokens proposed for verification.", base, registry=reg
        )
        self.accepted = Counter(
            "lmaas_spec_accepted_tokens", "Proposed tokens the target accepted.", base, registry=reg
        )
        self.position_reached = Counter(
            "lmaas_spec_position_reached_tokens",
            "Proposals at each position whose predecessors were all accepted.",
            [*base, "position"],
            registry=reg,
        )
        self.position_accepted = Counter(
            "lmaas_spec_position_accepted_tokens",
            "Accepted proposals at each position.",
            [*base, "position"],
            registry=reg,
        )
        self.position_acceptance = Gauge(
            "lmaas_spec_position_acceptance",
            "Acceptance rate at each position (accepted / reached, since start).",
            [*base, "position"],
            registry=reg,
        )
        self.chosen_k = Histogram(
            "lmaas_spec_chosen_k",
            "Speculation length chosen per request and step (0 = none).",
            base,
            buckets=_K_BUCKETS,
            registry=reg,
        )
        self.generated = Counter(
            "lmaas_spec_generated_tokens",
            "Tokens produced by decoding steps (accepted proposals + one per request).",
            base,
            registry=reg,
        )
        self.step_seconds = Counter(
            "lmaas_spec_step_seconds", "Time spent in decoding steps.", base, registry=reg
        )
        self.goodput = Gauge(
            "lmaas_spec_goodput_tokens_per_second",
            "Generated tokens per second of decoding steps (moving average).",
            base,
            registry=reg,
        )
        self.tenant_proposed = Counter(
            "lmaas_spec_tenant_proposed_tokens",
            "Tokens proposed, per tenant.",
            [*base, "tenant"],
            registry=reg,
        )
        self.tenant_accepted = Counter(
            "lmaas_spec_tenant_accepted_tokens",
            "Proposed tokens accepted, per tenant.",
            [*base, "tenant"],
            registry=reg,
        )
        self.tenant_acceptance = Gauge(
            "lmaas_spec_tenant_acceptance",
            "Fraction of proposed tokens accepted, per tenant (since start).",
            [*base, "tenant"],
            registry=reg,
        )


@dataclass
class _Tally:
    proposed: int = 0
    accepted: int = 0

    @property
    def rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@dataclass
class SpecStats:
    """Running totals of speculation for one model and proposer (see the module docstring)."""

    model: str = ""
    proposer: str = ""
    metrics: SpecMetrics | None = None
    goodput_smoothing: float = 0.05
    total: _Tally = field(default_factory=_Tally)
    reached: list[int] = field(default_factory=list)  # per position (index 0 = position 1)
    accepted_at: list[int] = field(default_factory=list)
    tenants: dict[str, _Tally] = field(default_factory=dict)
    chosen_k: dict[int, int] = field(default_factory=dict)
    num_steps: int = 0
    num_generated: int = 0
    step_seconds: float = 0.0
    goodput: float = 0.0  # EWMA of tokens per second per step

    def _labels(self) -> dict[str, str]:
        return {"model": self.model, "proposer": self.proposer}

    def record_step(self, seconds: float, ks: Sequence[int], num_generated: int) -> None:
        """One decoding step: k per request, tokens produced, seconds taken."""
        self.num_steps += 1
        self.num_generated += num_generated
        self.step_seconds += seconds
        for k in ks:
            self.chosen_k[k] = self.chosen_k.get(k, 0) + 1
        if seconds > 0:
            rate = num_generated / seconds
            a = self.goodput_smoothing
            self.goodput = rate if self.num_steps == 1 else (1 - a) * self.goodput + a * rate
        m = self.metrics
        if m is not None:
            labels = self._labels()
            for k in ks:
                m.chosen_k.labels(**labels).observe(k)
            m.generated.labels(**labels).inc(num_generated)
            m.step_seconds.labels(**labels).inc(max(seconds, 0.0))
            m.goodput.labels(**labels).set(self.goodput)

    def record_verification(self, tenant_id: str, num_proposed: int, num_accepted: int) -> None:
        """One request's verification: `num_accepted` of its `num_proposed` proposals held."""
        if num_proposed <= 0:
            return
        if not 0 <= num_accepted <= num_proposed:
            raise ValueError(f"accepted {num_accepted} of {num_proposed} proposals")
        self.total.proposed += num_proposed
        self.total.accepted += num_accepted
        tally = self.tenants.setdefault(tenant_id, _Tally())
        tally.proposed += num_proposed
        tally.accepted += num_accepted
        reached = min(num_accepted + 1, num_proposed)
        while len(self.reached) < reached:
            self.reached.append(0)
            self.accepted_at.append(0)
        for p in range(reached):
            self.reached[p] += 1
            if p < num_accepted:
                self.accepted_at[p] += 1
        m = self.metrics
        if m is not None:
            labels = self._labels()
            m.proposed.labels(**labels).inc(num_proposed)
            m.accepted.labels(**labels).inc(num_accepted)
            for p in range(reached):
                pos = {**labels, "position": str(p + 1)}
                m.position_reached.labels(**pos).inc()
                if p < num_accepted:
                    m.position_accepted.labels(**pos).inc()
                m.position_acceptance.labels(**pos).set(self.accepted_at[p] / self.reached[p])
            tenant = {**labels, "tenant": tenant_id}
            m.tenant_proposed.labels(**tenant).inc(num_proposed)
            m.tenant_accepted.labels(**tenant).inc(num_accepted)
            m.tenant_acceptance.labels(**tenant).set(tally.rate)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed tokens."""
        return self.total.rate

    def position_acceptance(self) -> list[float]:
        """Acceptance at positions 1, 2, … (accepted / reached)."""
        return [a / r if r else 0.0 for a, r in zip(self.accepted_at, self.reached, strict=True)]

    def snapshot(self) -> dict[str, Any]:
        """Plain-JSON figures for `EngineStats` and the benchmarks."""
        return {
            "proposed_tokens": self.total.proposed,
            "accepted_tokens": self.total.accepted,
            "acceptance_rate": self.acceptance_rate,
            "position_acceptance": self.position_acceptance(),
            "chosen_k": {str(k): n for k, n in sorted(self.chosen_k.items())},
            "steps": self.num_steps,
            "generated_tokens": self.num_generated,
            "step_seconds": self.step_seconds,
            "goodput_tokens_per_second": (
                self.num_generated / self.step_seconds if self.step_seconds else 0.0
            ),
            "tenant_acceptance": {t: v.rate for t, v in sorted(self.tenants.items())},
        }
