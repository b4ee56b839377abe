"""A small speculative-decoding simulator: true acceptance and step-time curves, a policy, a clock.

Requests arrive all at once (or in waves), each must emit `num_tokens`; every step the
policy picks k per request, proposals are accepted position by position with the request's
true rate, and the clock advances by the true step time. The controller under test only
sees what an engine would report.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from lmaas.engine.speculation import SmartSpecController, SpecRequest, StepFeatures, parse_policy


@dataclass
class TrueCost:
    """The machine: seconds = c0 + c_seq·requests + c_tok·tokens + c_ctx·ctx + c_dstep·max k
    + c_dtok·Σk (+ noise). `c_seq` is a per-request overhead (sampling, kernel launches per
    sequence: what dominates a small model on a CPU); `tokens` are all query tokens."""

    c0: float = 0.010
    c_seq: float = 0.0
    c_tok: float = 0.0001
    c_ctx: float = 0.0
    c_dstep: float = 0.002
    c_dtok: float = 0.00002
    noise: float = 0.02  # relative

    def seconds(self, f: StepFeatures, rng: random.Random) -> float:
        t = (
            self.c0
            + self.c_seq * f.sequences
            + self.c_tok * (f.batched_tokens + f.prefill_tokens)
            + self.c_ctx * f.context_tokens
            + self.c_dstep * f.draft_steps
            + (self.c_dtok * f.proposed_tokens if f.draft_steps else 0.0)
        )
        return t * (1.0 + self.noise * rng.uniform(-1, 1))


@dataclass
class SimRequest:
    rid: int
    alpha: float
    tenant: str = "t"
    remaining: int = 64
    ctx: int = 100
    policy: str = "smartspec"


@dataclass
class SimResult:
    total_seconds: float
    steps: int
    chosen: list[list[int]] = field(default_factory=list)  # ks per step
    finish_times: dict[int, float] = field(default_factory=dict)

    @property
    def mean_latency(self) -> float:
        return sum(self.finish_times.values()) / len(self.finish_times)


def simulate(
    requests: list[SimRequest],
    cost: TrueCost,
    *,
    max_k: int = 6,
    proposer: str = "draft",
    controller: SmartSpecController | None = None,
    seed: int = 0,
    max_steps: int = 100_000,
    on_step: Callable[[int, SmartSpecController], None] | None = None,
) -> SimResult:
    """Run all `requests` to completion (everyone in one batch); returns the clock."""
    rng = random.Random(seed)
    ctl = controller or SmartSpecController(max_k=max_k, proposer=proposer)  # type: ignore[arg-type]
    live = {r.rid: SimRequest(**r.__dict__) for r in requests}
    clock, steps = 0.0, 0
    result = SimResult(0.0, 0)
    while live and steps < max_steps:
        batch = [
            SpecRequest(r.rid, r.ctx, parse_policy(r.policy), tenant_id=r.tenant)
            for r in live.values()
        ]
        plan = ctl.plan(batch)
        features = ctl.features(batch, plan.ks)
        step = cost.seconds(features, rng)
        clock += step
        steps += 1
        result.chosen.append(list(plan.ks))
        for sr, k in zip(batch, plan.ks, strict=True):
            r = live[sr.request_id]
            accepted = 0
            while accepted < k and rng.random() < r.alpha:
                accepted += 1
            if k:
                ctl.observe_verification(r.rid, k, accepted)
            r.remaining -= accepted + 1
            r.ctx += accepted + 1
            if r.remaining <= 0:
                result.finish_times[r.rid] = clock
                ctl.release(r.rid)
                del live[r.rid]
        ctl.observe_step(features, step)
        if on_step is not None:
            on_step(steps, ctl)
    result.total_seconds = clock
    result.steps = steps
    return result


def expected_tokens_iid(alpha: float, k: int) -> float:
    return (1 - alpha ** (k + 1)) / (1 - alpha) if alpha < 1 else k + 1.0


def true_goodput(alpha: float, batch: int, cost: TrueCost, k: int, ctx: int = 100) -> float:
    """Expected tokens per second of a uniform batch all proposing k."""
    t = (
        cost.c0
        + cost.c_seq * batch
        + cost.c_tok * batch * (k + 1)
        + cost.c_ctx * batch * ctx
        + cost.c_dstep * k
        + cost.c_dtok * batch * k
    )
    return batch * expected_tokens_iid(alpha, k) / t


def best_fixed_k(alpha: float, batch: int, cost: TrueCost, max_k: int, ctx: int = 100) -> int:
    """The k (same for all) that maximises true expected goodput for a uniform batch."""
    return max(range(max_k + 1), key=lambda k: true_goodput(alpha, batch, cost, k, ctx))


def goodput_gain(alpha: float, batch: int, cost: TrueCost, k: int, ctx: int = 100) -> float:
    """Goodput of k over goodput of no speculation."""
    return true_goodput(alpha, batch, cost, k, ctx) / true_goodput(alpha, batch, cost, 0, ctx)
