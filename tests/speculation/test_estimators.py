"""Acceptance estimation, the step-time model and policy strings."""

from __future__ import annotations

import random

import pytest

from lmaas.engine.speculation import (
    SpecPolicy,
    SpecPolicyError,
    StepFeatures,
    StepTimeModel,
    parse_policy,
    resolve_policy,
)
from lmaas.engine.speculation.acceptance import (
    AcceptanceEstimator,
    AcceptancePriors,
    expected_tokens,
)

# --- policies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("off", SpecPolicy("off")),
        ("smartspec", SpecPolicy("smartspec")),
        (" SmartSpec ", SpecPolicy("smartspec")),
        ("fixed:3", SpecPolicy("fixed", 3)),
        ("fixed:0", SpecPolicy("off")),
        (None, SpecPolicy("smartspec")),
    ],
)
def test_policy_strings_parse(text: str | None, policy: SpecPolicy) -> None:
    assert parse_policy(text) == policy
    assert parse_policy(str(policy)) == policy


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("fixed", "fixed:K"),
        ("fixed:-1", "fixed:K"),
        ("fixed:abc", "fixed:K"),
        ("fixed:99", "at most 16"),
        ("smart", "'off', 'fixed:K'"),
        ("", "invalid speculation policy ''"),
    ],
)
def test_bad_policy_strings_say_what_is_accepted(text: str, says: str) -> None:
    with pytest.raises(SpecPolicyError) as err:
        parse_policy(text)
    assert says in str(err.value)
    assert isinstance(err.value, ValueError)


def test_request_policy_wins_over_service_and_engine_caps_it() -> None:
    assert resolve_policy("off", "fixed:4", max_k=8) == SpecPolicy("fixed", 4)
    assert resolve_policy("fixed:2", None, max_k=8) == SpecPolicy("fixed", 2)
    assert resolve_policy(None, None, max_k=8) == SpecPolicy("smartspec")
    assert resolve_policy("smartspec", "fixed:12", max_k=5) == SpecPolicy("fixed", 5)
    assert resolve_policy("smartspec", "fixed:3", max_k=0) == SpecPolicy("off")
    with pytest.raises(SpecPolicyError):
        resolve_policy("smartspec", "sometimes", max_k=4)


# --- acceptance ---------------------------------------------------------------------------


def test_expected_tokens_matches_the_iid_formula() -> None:
    for k, want in zip(range(1, 5), (1.8, 2.44, 2.952, 3.3616), strict=True):
        assert expected_tokens([0.8] * k, k) == pytest.approx(want)


def test_estimator_learns_per_position_rates_with_censoring() -> None:
    rng = random.Random(0)
    true = [0.9, 0.5, 0.8]
    priors = AcceptancePriors()
    est = AcceptanceEstimator(priors, ("t", None), decay=1.0)
    for _ in range(3000):
        priors.advance()
        accepted = 0
        while accepted < 3 and rng.random() < true[accepted]:
            accepted += 1
        est.observe(3, accepted)
    got = est.rates(3)
    for g, t in zip(got, true, strict=True):
        assert g == pytest.approx(t, abs=0.05)


def test_all_or_nothing_acceptance_keeps_deep_positions_high() -> None:
    """Prompt lookup on grounded text: a verification is mostly all or nothing (conditional
    rates ≈ 0.5, 0.8, 0.9, 0.9, 0.95). A request whose first proposals keep failing gets a
    low a_1, but its deeper positions keep its tenant's (high) rates there, not its own
    pooled rate: once a proposal is accepted the next ones likely are too."""
    rng = random.Random(4)
    true = [0.5, 0.8, 0.9, 0.92, 0.96]
    priors = AcceptancePriors()
    for _request in range(40):  # the tenant's traffic so far
        other = AcceptanceEstimator(priors, "acme")
        for _ in range(10):
            priors.advance()
            accepted = 0
            while accepted < 5 and rng.random() < true[accepted]:
                accepted += 1
            other.observe(5, accepted)
    unlucky = AcceptanceEstimator(priors, "acme")
    for _ in range(4):
        priors.advance()
        unlucky.observe(5, 0)
    rates = unlucky.rates(5)
    assert rates[0] < 0.3
    assert min(rates[1:]) > 0.7
    assert rates[1] < rates[2] < rates[4]
    assert unlucky.pooled() < 0.45  # what positions 2–5 used to lean on


def test_estimator_follows_drift() -> None:
    priors = AcceptancePriors()
    est = AcceptanceEstimator(priors, "k")
    for _ in range(100):
        priors.advance()
        est.observe(2, 2)
    assert est.rate(0) > 0.9
    for _ in range(100):
        priors.advance()
        est.observe(2, 0)
    assert est.rate(0) < 0.15


def test_an_idle_request_drifts_back_to_its_tenants_prior() -> None:
    priors = AcceptancePriors()
    unlucky = AcceptanceEstimator(priors, "acme")
    others = AcceptanceEstimator(priors, "acme")
    priors.advance()
    for _ in range(3):
        unlucky.observe(2, 0)
    assert unlucky.rate(0) < 0.4
    for _ in range(200):  # others keep accepting; the unlucky one is not asked
        priors.advance()
        others.observe(2, 2)
    assert unlucky.rate(0) > 0.85


def test_priors_are_bounded_in_keys() -> None:
    priors = AcceptancePriors(max_keys=3)
    for n in range(10):
        priors.observe(f"tenant-{n}", 1, 1)
    assert priors.keys() == ["tenant-7", "tenant-8", "tenant-9"]


# --- step time ----------------------------------------------------------------------------


def _features(rng: random.Random) -> StepFeatures:
    batch = rng.randint(1, 64)
    ks = [rng.randint(0, 4) for _ in range(batch)]
    return StepFeatures(
        sequences=batch,
        proposed_tokens=sum(ks),
        context_tokens=sum(rng.randint(10, 2000) for _ in range(batch)),
        prefill_tokens=rng.choice([0, 0, 0, rng.randint(1, 512)]),
        draft_steps=max(ks),
        draft_catch_up_tokens=rng.choice([0, 0, rng.randint(1, 400)]) if any(ks) else 0,
    )


# constant, sequences, proposed tokens, prefill tokens, context tokens, draft steps, catch-up
TRUE = (0.008, 0.0002, 0.00023, 0.00005, 0.0000004, 0.0015, 0.00004)


def _true_seconds(f: StepFeatures) -> float:
    x = f.vector()
    return float(sum(c * v for c, v in zip(TRUE, x, strict=True)))


def test_step_model_recovers_the_coefficients() -> None:
    rng = random.Random(1)
    model = StepTimeModel()
    for _ in range(400):
        f = _features(rng)
        model.observe(f, _true_seconds(f) * (1 + 0.03 * rng.gauss(0, 1)))
    for f in (_features(rng) for _ in range(50)):
        assert model.predict(f) == pytest.approx(_true_seconds(f), rel=0.1)
    coef = model.coefficients
    assert coef["draft_steps"] == pytest.approx(TRUE[5], rel=0.2)
    # Σk ≈ 2n in these steps, so the data barely split the two costs: the "flat in tokens"
    # prior leans the proposals' share towards 0, never the other way.
    assert 0.5 * TRUE[2] <= coef["proposed_tokens"] <= 1.1 * TRUE[2]
    assert coef["draft_catch_up_tokens"] == pytest.approx(TRUE[6], rel=0.2)
    assert all(v >= 0 for v in coef.values())


def test_step_model_is_robust_to_slow_first_steps_and_outliers() -> None:
    rng = random.Random(2)
    model = StepTimeModel()
    for n in range(300):
        f = _features(rng)
        seconds = _true_seconds(f)
        if n < 3:
            seconds *= 200  # allocation, compilation
        elif n % 37 == 0:
            seconds += 0.5  # a GC pause, a noisy neighbour
        model.observe(f, seconds)
    errors = [
        abs(model.predict(f) / _true_seconds(f) - 1) for f in (_features(rng) for _ in range(50))
    ]
    assert sum(errors) / len(errors) < 0.08


def test_step_model_tracks_a_slower_machine() -> None:
    rng = random.Random(3)
    model = StepTimeModel()
    for _ in range(200):
        f = _features(rng)
        model.observe(f, _true_seconds(f))
    for _ in range(500):  # a neighbour now takes half the GPU
        f = _features(rng)
        model.observe(f, 2 * _true_seconds(f))
    f = _features(rng)
    assert model.predict(f) == pytest.approx(2 * _true_seconds(f), rel=0.1)
