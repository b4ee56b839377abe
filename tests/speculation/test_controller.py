"""The SmartSpec controller on synthetic acceptance and step-time curves."""

from __future__ import annotations

from collections import Counter

import pytest

from lmaas.engine.speculation import (
    SmartSpecController,
    SpecRequest,
    StepFeatures,
    parse_policy,
)
from tests.speculation.simulator import (
    SimRequest,
    TrueCost,
    best_fixed_k,
    goodput_gain,
    simulate,
)


def _late_ks(result, fraction: float = 0.5) -> Counter:
    """How often each k was chosen in the last `fraction` of the steps (all requests)."""
    start = int(len(result.chosen) * (1 - fraction))
    return Counter(k for ks in result.chosen[start:] for k in ks)


@pytest.mark.parametrize(
    ("alpha", "batch", "cost"),
    [
        (0.9, 1, TrueCost(c0=0.010, c_tok=0.0001, c_dstep=0.001)),  # cheap draft: long k
        (0.8, 2, TrueCost(c0=0.010, c_tok=0.0001, c_dstep=0.002)),
        (0.6, 4, TrueCost(c0=0.010, c_tok=0.0005, c_dstep=0.002)),
        (0.85, 8, TrueCost(c0=0.010, c_tok=0.0004, c_dstep=0.002)),
    ],
)
def test_converges_to_the_best_k(alpha: float, batch: int, cost: TrueCost) -> None:
    reqs = [SimRequest(i, alpha, remaining=1000) for i in range(batch)]
    result = simulate(reqs, cost, max_k=8)
    best = best_fixed_k(alpha, batch, cost, max_k=8)
    # (Scenarios where speculating gains more than the ×1.1 margin demands.)
    assert goodput_gain(alpha, batch, cost, best) > 1.15
    late = _late_ks(result)
    mode, _ = late.most_common(1)[0]
    assert abs(mode - best) <= 1, (late, best)
    # And the time it takes is within 5% of running the best fixed k from the start.
    fixed = simulate(
        [SimRequest(i, alpha, remaining=1000, policy=f"fixed:{best}") for i in range(batch)],
        cost,
        max_k=8,
    )
    assert result.total_seconds <= 1.05 * fixed.total_seconds


def test_chooses_zero_when_acceptance_is_low() -> None:
    reqs = [SimRequest(i, 0.1, remaining=200) for i in range(2)]
    result = simulate(reqs, TrueCost(), max_k=6)
    late = _late_ks(result)
    assert late[0] / sum(late.values()) > 0.95


def test_chooses_zero_when_the_batch_is_large_and_compute_bound() -> None:
    # 128 requests, a token costs as much as a tenth of the fixed overhead: compute bound.
    cost = TrueCost(c0=0.010, c_tok=0.001, c_dstep=0.002, c_dtok=0.0002)
    reqs = [SimRequest(i, 0.7, remaining=60) for i in range(128)]
    result = simulate(reqs, cost, max_k=6)
    late = _late_ks(result)
    assert late[0] / sum(late.values()) > 0.95
    # Same acceptance, one request: speculation pays, and is used.
    alone = simulate([SimRequest(0, 0.7, remaining=300)], cost, max_k=6)
    assert _late_ks(alone).most_common(1)[0][0] >= 1
    off = simulate([SimRequest(0, 0.7, remaining=300, policy="off")], cost, max_k=6)
    assert alone.total_seconds < 0.9 * off.total_seconds


SCENARIOS = [
    (alpha, batch, cost)
    for alpha in (0.05, 0.3, 0.6, 0.9)
    for batch in (1, 8, 64)
    for cost in (
        TrueCost(c0=0.010, c_tok=0.0001, c_dstep=0.002),  # memory bound, cheap draft
        TrueCost(c0=0.005, c_tok=0.0010, c_dstep=0.004, c_dtok=0.0001),  # compute bound
        TrueCost(c0=0.010, c_tok=0.0002, c_ctx=0.000001, c_dstep=0.008),  # costly draft
    )
]


@pytest.mark.parametrize(("alpha", "batch", "cost"), SCENARIOS)
def test_never_worse_than_off(alpha: float, batch: int, cost: TrueCost) -> None:
    reqs = [SimRequest(i, alpha, remaining=500, ctx=200) for i in range(batch)]
    smart = simulate(reqs, cost, seed=1)
    off = simulate([SimRequest(**{**r.__dict__, "policy": "off"}) for r in reqs], cost, seed=1)
    assert smart.total_seconds <= 1.03 * off.total_seconds


def test_prompt_lookup_verifies_only_what_pays() -> None:
    # n-gram proposals cost nothing to make: only the verification tokens are paid.
    cost = TrueCost(c0=0.010, c_tok=0.0001, c_dstep=0.0, c_dtok=0.0)
    reqs = [SimRequest(i, 0.8, remaining=300) for i in range(2)]
    result = simulate(reqs, cost, max_k=8, proposer="ngram")
    assert _late_ks(result).most_common(1)[0][0] >= 6


def _fitted(cost: TrueCost, *, proposer: str, max_k: int = 5, steps: int = 300):
    """A controller whose step-time model saw `steps` steps of varied batches and k."""
    import random

    rng = random.Random(5)
    ctl = SmartSpecController(max_k=max_k, proposer=proposer, redecide_every=1)  # type: ignore[arg-type]
    for _ in range(steps):
        n = rng.randint(1, 10)
        ks = [rng.randint(0, max_k) for _ in range(n)]
        batch = [SpecRequest(i, 200) for i in range(n)]
        f = ctl.features(batch, ks)
        ctl.observe_step(f, cost.seconds(f, rng))
    return ctl


def _choice(ctl: SmartSpecController, alpha: float, n: int, max_k: int = 5) -> list[int]:
    """k per request once each of `n` requests has a record of acceptance `alpha`."""
    batch = [SpecRequest(f"r{i}", 200, tenant_id="t") for i in range(n)]
    ctl.plan(batch)
    for i in range(n):  # 40 verifications at max k, accepted like i.i.d. trials at alpha
        for m in range(40):
            accepted = 0
            while accepted < max_k and (m * 7 + accepted * 13 + i) % 100 < alpha * 100:
                accepted += 1
            ctl.observe_verification(f"r{i}", max_k, accepted)
    return ctl.plan(batch).ks


# The machine SmartSpec under-speculated on: a CPU where a step costs ≈ 25 ms, a request
# ≈ 4 ms more and a verified proposal ≈ 0.3 ms (per-layer and per-sequence overheads).
FLAT = TrueCost(c0=0.020, c_seq=0.004, c_tok=0.0003, c_dstep=0.0, c_dtok=0.0, noise=0.05)
STEEP = TrueCost(c0=0.005, c_seq=0.0, c_tok=0.004, c_dstep=0.004, c_dtok=0.001, noise=0.05)


def test_flat_step_time_and_high_acceptance_propose_the_most() -> None:
    ctl = _fitted(FLAT, proposer="ngram")
    assert ctl.step_model.coefficients["proposed_tokens"] < 0.001  # not a request's cost
    assert _choice(ctl, 0.8, n=6) == [5] * 6


def test_flat_step_time_proposes_even_at_modest_acceptance() -> None:
    # A proposal at position 1 accepted 35% of the time is worth ~0.35 tokens for 0.3 ms
    # of a ≈ 45 ms step: verifying it pays, and so do the next ones.
    ctl = _fitted(FLAT, proposer="ngram")
    ks = _choice(ctl, 0.35, n=4)
    assert min(ks) >= 3, ks


def test_steep_step_time_and_low_acceptance_propose_nothing() -> None:
    ctl = _fitted(STEEP, proposer="draft")
    assert _choice(ctl, 0.1, n=8) == [0] * 8


def test_a_long_draft_catch_up_is_worth_it_only_for_good_acceptance() -> None:
    """A draft pass costs ~4 ms and catching a request's draft cache up ~0.1 ms a token
    (it has not seen the request's 300-token prompt yet): at 25% acceptance that is not
    worth it, once caught up it is, and at 90% it is worth it either way."""
    cost = TrueCost(c0=0.024, c_seq=0.001, c_tok=0.0003, c_dstep=0.004, noise=0.02)
    ctl = SmartSpecController(max_k=5, proposer="draft", redecide_every=1)
    import random

    rng = random.Random(2)
    for _ in range(300):
        n = rng.randint(1, 6)
        ks = [rng.randint(0, 5) for _ in range(n)]
        lags = [rng.choice([0, 0, 0, rng.randint(1, 400)]) for _ in range(n)]
        batch = [SpecRequest(i, 200, draft_catch_up=lag) for i, lag in enumerate(lags)]
        f = ctl.features(batch, ks)
        ctl.observe_step(f, cost.seconds(f, rng) + 0.0001 * f.draft_catch_up_tokens)
    assert ctl.step_model.coefficients["draft_catch_up_tokens"] == pytest.approx(1e-4, rel=0.3)

    def choice(alpha: float, lag: int) -> list[int]:
        rid = f"{alpha}-{lag}"
        batch = [SpecRequest(rid, 200, tenant_id=f"{alpha}", draft_catch_up=lag)]
        ctl.plan(batch)
        for m in range(40):
            accepted = 0
            while accepted < 5 and (m * 7 + accepted * 13) % 100 < alpha * 100:
                accepted += 1
            ctl.observe_verification(rid, 5, accepted)
        return ctl.plan(batch).ks

    assert choice(0.25, lag=300) == [0]
    assert choice(0.25, lag=0)[0] >= 1
    assert choice(0.9, lag=300)[0] >= 3


def test_lumping_requests_and_proposals_would_under_speculate() -> None:
    """The simulated CPU: SmartSpec's steady-state k is fixed:5's, and its time too."""
    assert best_fixed_k(0.7, 6, FLAT, max_k=5) == 5
    reqs = [SimRequest(i, 0.7, remaining=400) for i in range(6)]
    smart = simulate(reqs, FLAT, max_k=5, proposer="ngram", seed=3)
    assert _late_ks(smart).most_common(1)[0][0] == 5
    fixed = simulate(
        [SimRequest(i, 0.7, remaining=400, policy="fixed:5") for i in range(6)],
        FLAT,
        max_k=5,
        proposer="ngram",
        seed=3,
    )
    assert smart.total_seconds <= 1.05 * fixed.total_seconds


def test_per_request_k_follows_each_requests_acceptance() -> None:
    cost = TrueCost(c0=0.010, c_tok=0.0003, c_dstep=0.001)
    reqs = [SimRequest(i, 0.9, tenant="good", remaining=400) for i in range(4)]
    reqs += [SimRequest(10 + i, 0.05, tenant="bad", remaining=400) for i in range(4)]
    result = simulate(reqs, cost, max_k=6)
    together = [ks for ks in result.chosen if len(ks) == 8]  # before the good ones finish
    late = together[len(together) // 2 :]
    good = Counter(k for ks in late for k in ks[:4])
    bad = Counter(k for ks in late for k in ks[4:])
    assert good.most_common(1)[0][0] >= 3
    assert bad.most_common(1)[0][0] == 0


def test_fixed_k_is_honoured_and_capped_by_what_was_proposed() -> None:
    ctl = SmartSpecController(max_k=5)
    batch = [
        SpecRequest("a", 10, parse_policy("fixed:3")),
        SpecRequest("b", 10, parse_policy("fixed:9")),  # capped at max_k
        SpecRequest("c", 10, parse_policy("fixed:4"), max_proposals=2),  # proposer had 2
        SpecRequest("d", 10, parse_policy("off")),
    ]
    for _ in range(20):
        plan = ctl.plan(batch)
        assert plan.ks == [3, 5, 2, 0]
        ctl.observe_step(ctl.features(batch, plan.ks), 0.01)
        for r, k in zip(batch, plan.ks, strict=True):
            ctl.observe_verification(r.request_id, k, 0)  # nothing ever accepted


def test_token_budget_caps_verification_tokens() -> None:
    ctl = SmartSpecController(max_k=4)
    batch = [SpecRequest(i, 10, parse_policy("fixed:4")) for i in range(4)]
    plan = ctl.plan(batch, token_budget=10)
    assert sum(plan.ks) + len(plan.ks) <= 10


def test_tenant_prior_gives_new_requests_a_head_start() -> None:
    ctl = SmartSpecController(max_k=4)
    for n in range(30):
        ctl.plan([SpecRequest(n, 10, tenant_id="acme")])
        ctl.observe_verification(n, 4, 4)
        ctl.release(n)
    ctl.plan([SpecRequest("new", 10, tenant_id="acme"), SpecRequest("other", 10, tenant_id="zeta")])
    acme = ctl.acceptance("new").rates(2)
    assert acme[0] > 0.9
    # An unseen tenant falls back on all traffic, which so far is all acme's.
    assert ctl.acceptance("other").rate(0) > 0.8


def test_controller_ignores_warmup_outliers() -> None:
    cost = TrueCost(c0=0.010, c_tok=0.0001, c_dstep=0.001, noise=0.0)
    ctl = SmartSpecController(max_k=6)
    # The first steps of a fresh engine are 100x slower (allocations, compilation).
    for n in range(3):
        f = StepFeatures(sequences=1, proposed_tokens=0, context_tokens=10)
        ctl.observe_step(f, 1.0 + n)
    result = simulate([SimRequest(0, 0.9, remaining=300)], cost, controller=ctl, max_k=6)
    best = best_fixed_k(0.9, 1, cost, 6)
    assert abs(_late_ks(result).most_common(1)[0][0] - best) <= 1


def test_requests_take_policy_strings_and_refuse_bad_ones() -> None:
    from lmaas.engine.speculation import SpecPolicyError

    ctl = SmartSpecController(max_k=4)
    assert ctl.plan([SpecRequest("a", 5, "fixed:2"), SpecRequest("b", 5, None)]).ks[0] == 2
    with pytest.raises(SpecPolicyError, match="fixed:K"):
        SpecRequest("c", 5, "fixed:two")
    assert ctl.plan([]).ks == []
