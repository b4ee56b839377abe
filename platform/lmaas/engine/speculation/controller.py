"""The SmartSpec controller: how many tokens each request proposes this step (0 = none).

Each step the engine asks `plan()` for k_i per decoding request, runs the proposer and
one verifying target pass, then reports back what happened: `observe_verification()` per
request (proposed, accepted) and `observe_step()` with the step's measured seconds. From
that the controller keeps

- per-position acceptance rates per request, over (tenant, adapter) priors
  (`acceptance.py`), giving E_i(k) = 1 + a_1 + a_1·a_2 + … tokens per verification;
- a step-time model T(k_1..k_n) fitted online (`step_time.py`), linear in the number of
  decoding requests, the proposed tokens Σk_i, prefill and context tokens, the draft's
  sequential passes max k_i and the tokens its first pass catches up on.

and chooses k to maximise the predicted goodput ΣE_i(k_i) / T(k). Per request, under a
shared maximum: for each level m = 0..max_k of the shared draft depth (the draft model
runs max k_i sequential passes whoever asked for them), the increments "request i
proposes its j-th token" (j ≤ m) all cost the same, so they are taken greedily by
marginal gain a_i1⋯a_ij while that gain per cost beats the current goodput (which is
exactly when adding it raises the ratio) and fits the step's token budget; the best level
wins. A draft model must first catch up on every token a request's draft cache has not
seen (`SpecRequest.draft_catch_up`: the whole prompt the first time, every step it did not
propose at since), a cost per request rather than per proposal: after the greedy pass,
each request whose catch-up costs more than its proposals gain is dropped (most
expensive first). Speculation must beat k = 0 for everyone by `margin` (×1.02: a hedge against the
models' errors, not a second objective), else nobody speculates.
Decisions are kept for `redecide_every` steps while the batch (and what the proposer can
offer) stays the same. `fixed:K` requests always get K (capped by what was proposed);
`off` requests 0. Until the step-time model has a few steps, one or two requests at a
time propose 1 or 2 tokens, to measure what speculating costs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from lmaas.engine.speculation.acceptance import (
    AcceptanceEstimator,
    AcceptancePriors,
    expected_tokens,
)
from lmaas.engine.speculation.policy import DEFAULT_POLICY, SpecPolicy, parse_policy
from lmaas.engine.speculation.step_time import StepFeatures, StepTimeModel

__all__ = ["SmartSpecController", "SpecPlan", "SpecRequest"]

# Cold start: (how many requests speculate — None = all —, with what k), one entry per
# step until the step-time model is fitted: Σk and max k vary independently of each other
# and of the batch, so that the cost of a proposal and of a draft pass are both measured.
_EXPLORE: tuple[tuple[int | None, int], ...] = (
    (1, 1),
    (None, 1),
    (1, 2),
    (0, 0),
    (None, 2),
    (2, 1),
)


@dataclass(frozen=True)
class SpecRequest:
    """A decoding request of this step, as the controller sees it."""

    request_id: Hashable
    context_len: int  # tokens in its KV cache before this step
    policy: SpecPolicy | str | None = DEFAULT_POLICY  # a string is parsed (`SpecPolicyError`)
    tenant_id: str = ""
    adapter_id: str | None = None
    max_proposals: int | None = None  # what the proposer has for it (prompt lookup); None = any
    draft_catch_up: int = 0  # tokens the draft must feed before proposing, beyond the usual 1

    def __post_init__(self) -> None:
        if not isinstance(self.policy, SpecPolicy):
            object.__setattr__(self, "policy", parse_policy(self.policy))


@dataclass
class SpecPlan:
    """The decision of one step: `ks[i]` for `requests[i]`, and what the model predicts."""

    ks: list[int]
    predicted_tokens: float = 0.0
    predicted_seconds: float = 0.0
    exploring: bool = False
    features: StepFeatures | None = field(default=None, repr=False)

    @property
    def predicted_goodput(self) -> float:
        return self.predicted_tokens / self.predicted_seconds if self.predicted_seconds else 0.0


class SmartSpecController:
    """Chooses k per request each step to maximise predicted goodput (module docstring)."""

    def __init__(
        self,
        *,
        max_k: int,
        proposer: Literal["draft", "ngram"] = "draft",
        margin: float = 1.02,
        redecide_every: int = 4,
        step_model: StepTimeModel | None = None,
        priors: AcceptancePriors | None = None,
        request_strength: float = 4.0,
        request_decay: float = 0.97,
    ) -> None:
        if max_k < 0:
            raise ValueError(f"max_k must be >= 0, got {max_k}")
        if proposer not in ("draft", "ngram"):
            raise ValueError(f"proposer must be 'draft' or 'ngram', got {proposer!r}")
        if margin < 1.0:
            raise ValueError(f"margin must be >= 1, got {margin}")
        self.max_k = max_k
        self.proposer = proposer
        self.margin = margin
        self.redecide_every = max(1, redecide_every)
        self.step_model = step_model or StepTimeModel()
        self.priors = priors or AcceptancePriors()
        self._request_strength = request_strength
        self._request_decay = request_decay
        self._estimators: dict[Hashable, AcceptanceEstimator] = {}
        self._num_plans = 0
        self._cached_signature: tuple[object, ...] | None = None
        self._cached_ks: dict[Hashable, int] = {}
        self._cached_age = 0

    # What the engine reports ---------------------------------------------------------

    def observe_verification(
        self, request_id: Hashable, num_proposed: int, num_accepted: int
    ) -> None:
        """After verification: `num_accepted` of the `num_proposed` proposals of a request held."""
        estimator = self._estimators.get(request_id)
        if estimator is not None:
            estimator.observe(num_proposed, num_accepted)

    def observe_step(self, features: StepFeatures, seconds: float) -> None:
        """After each step (speculating or not): what it computed and how long it took."""
        self.step_model.observe(features, seconds)

    def release(self, request_id: Hashable) -> None:
        """Forget a finished request (its record stays in its tenant's prior)."""
        self._estimators.pop(request_id, None)
        self._cached_ks.pop(request_id, None)

    def acceptance(self, request_id: Hashable) -> AcceptanceEstimator | None:
        return self._estimators.get(request_id)

    # The decision -----------------------------------------------------------------------

    def features(
        self, requests: Sequence[SpecRequest], ks: Sequence[int], prefill_tokens: int = 0
    ) -> StepFeatures:
        """The step-time features of running `requests` with proposals `ks`."""
        draft = self.proposer == "draft"
        return StepFeatures(
            sequences=len(ks),
            proposed_tokens=sum(ks),
            context_tokens=sum(r.context_len for r in requests),
            prefill_tokens=prefill_tokens,
            draft_steps=max(ks, default=0) if draft else 0,
            draft_catch_up_tokens=(
                sum(r.draft_catch_up for r, k in zip(requests, ks, strict=True) if k)
                if draft
                else 0
            ),
        )

    def plan(
        self,
        requests: Sequence[SpecRequest],
        *,
        prefill_tokens: int = 0,
        token_budget: int | None = None,
    ) -> SpecPlan:
        """k per request for this step (same order as `requests`).

        `token_budget` caps the verification tokens Σ(k_i+1) (the scheduler's room left in
        the step after prefill); `None` = no cap.
        """
        self._num_plans += 1
        self.priors.advance()
        caps = [self._cap(r) for r in requests]
        for r in requests:
            if r.request_id not in self._estimators:
                self._estimators[r.request_id] = AcceptanceEstimator(
                    self.priors,
                    (r.tenant_id, r.adapter_id),
                    strength=self._request_strength,
                    decay=self._request_decay,
                )
        smart = [i for i, r in enumerate(requests) if r.policy.mode == "smartspec" and caps[i] > 0]
        ks = [caps[i] if r.policy.mode == "fixed" else 0 for i, r in enumerate(requests)]
        exploring = False
        if smart and not self.step_model.ready:
            exploring = True
            model = self.step_model
            if model.num_seen >= model.warmup:  # warm-up steps are not measured: k = 0
                count, level = _EXPLORE[model.num_measured % len(_EXPLORE)]
                count = len(smart) if count is None else min(count, len(smart))
                for n in range(count):
                    i = smart[(self._num_plans + n) % len(smart)]
                    ks[i] = min(level, caps[i])
        elif smart:
            signature = tuple((requests[i].request_id, caps[i]) for i in smart)
            if signature == self._cached_signature and self._cached_age < self.redecide_every:
                self._cached_age += 1
                for i in smart:
                    ks[i] = self._cached_ks.get(requests[i].request_id, 0)
            else:
                chosen = self._choose(requests, smart, caps, ks, prefill_tokens, token_budget)
                for i, k in zip(smart, chosen, strict=True):
                    ks[i] = k
                self._cached_signature = signature
                self._cached_ks = {requests[i].request_id: ks[i] for i in smart}
                self._cached_age = 1
        if token_budget is not None:
            ks = _fit_budget(ks, token_budget)
        features = self.features(requests, ks, prefill_tokens)
        tokens = float(len(requests)) + sum(
            self._estimators[r.request_id].expected_tokens(k) - 1.0
            for r, k in zip(requests, ks, strict=True)
            if k
        )
        return SpecPlan(
            ks=ks,
            predicted_tokens=tokens,
            predicted_seconds=self.step_model.predict(features),
            exploring=exploring,
            features=features,
        )

    def _cap(self, request: SpecRequest) -> int:
        cap = self.max_k
        if request.max_proposals is not None:
            cap = min(cap, max(request.max_proposals, 0))
        if request.policy.mode == "off":
            return 0
        if request.policy.mode == "fixed":
            return min(cap, request.policy.k)
        return cap

    def _choose(
        self,
        requests: Sequence[SpecRequest],
        smart: list[int],
        caps: list[int],
        fixed_ks: list[int],
        prefill_tokens: int,
        token_budget: int | None,
    ) -> list[int]:
        """Greedy marginal-gain allocation per shared level; the best level, or all zeros."""
        c0, c_seq, c_prop, c_pre, c_ctx, c_dstep, c_catch = (
            float(v) for v in self.step_model.theta()
        )
        if self.proposer != "draft":
            c_dstep = c_catch = 0.0
        fixed_sum = sum(fixed_ks)
        fixed_max = max(fixed_ks, default=0)
        base_time = (
            c0
            + c_seq * len(requests)
            + c_prop * fixed_sum
            + c_pre * prefill_tokens
            + c_ctx * sum(r.context_len for r in requests)
            + c_catch * sum(r.draft_catch_up for r, k in zip(requests, fixed_ks, strict=True) if k)
        )
        smart_set = set(smart)
        base_tokens = float(len(requests)) + sum(
            self._estimators[r.request_id].expected_tokens(fixed_ks[i]) - 1.0
            for i, r in enumerate(requests)
            if i not in smart_set and fixed_ks[i]
        )
        room = None if token_budget is None else token_budget - len(requests) - fixed_sum
        increment_cost = c_prop
        rates = {i: self._estimators[requests[i].request_id].rates(caps[i]) for i in smart}

        def tokens_of(i: int):
            return lambda k: expected_tokens(rates[i], k)

        expected = {i: tokens_of(i) for i in smart}
        # Marginal gain of request i's j-th proposal: a_i1⋯a_ij (non-increasing in j).
        gains: list[tuple[float, int, int]] = []
        for i in smart:
            run = 1.0
            for j in range(caps[i]):
                run *= rates[i][j]
                gains.append((run, j + 1, i))
        gains.sort(key=lambda g: (-g[0], g[1]))

        def evaluate(level: int) -> tuple[float, dict[int, int]]:
            alloc: dict[int, int] = {}
            tokens = base_tokens
            time = base_time + c_dstep * max(level, fixed_max)
            used = 0
            for gain, j, i in gains:
                if j > level or alloc.get(i, 0) != j - 1:
                    continue
                if room is not None and used >= room:
                    break
                if gain * time <= tokens * increment_cost:  # would not raise tokens/time
                    break
                alloc[i] = j
                tokens += gain
                time += increment_cost
                used += 1
            depth = max(max(alloc.values(), default=0), fixed_max)
            time += c_dstep * (depth - max(level, fixed_max))
            # Catch-up: a cost per proposing request, dropped where it outweighs the gain.
            catch = {i: c_catch * requests[i].draft_catch_up for i in alloc}
            time += sum(catch.values())
            for i in sorted(alloc, key=catch.__getitem__, reverse=True):
                gain = expected[i](alloc[i]) - 1.0
                cost = catch[i] + increment_cost * alloc[i]
                if catch[i] > 0 and gain * time <= tokens * cost:  # dropping i raises the ratio
                    tokens -= gain
                    time -= cost
                    del alloc[i]
            return tokens / max(time, 1e-12), alloc

        best_goodput, best_alloc = evaluate(0)
        off_goodput = best_goodput
        for level in range(1, max(caps[i] for i in smart) + 1):
            goodput, alloc = evaluate(level)
            if goodput > best_goodput:
                best_goodput, best_alloc = goodput, alloc
        if best_goodput < self.margin * off_goodput:
            return [0] * len(smart)
        return [best_alloc.get(i, 0) for i in smart]


def _fit_budget(ks: list[int], budget: int) -> list[int]:
    """Shrink the largest k's until Σ(k_i+1) fits `budget` (fixed requests included)."""
    ks = list(ks)
    excess = sum(ks) + len(ks) - budget
    while excess > 0 and any(ks):
        i = max(range(len(ks)), key=ks.__getitem__)
        ks[i] -= 1
        excess -= 1
    return ks
