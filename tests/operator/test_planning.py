"""Planning: explicit mixes are priced here; auto mixes come from lmaas.placement."""

from __future__ import annotations

import importlib.util

import pytest

from lmaas_operator import planning
from lmaas_operator.resources import GPUTypeSpec, ModelServiceSpec, ModelSpec

MODEL = ModelSpec(
    source="/m",
    num_params=8_000_000_000,
    num_layers=32,
    hidden_size=4096,
    num_kv_heads=8,
    head_dim=128,
)
GPUS = {
    "a100": GPUTypeSpec(
        memory_gib=80, price_per_hour=3.67, bf16_tflops=312, mem_bandwidth_gbps=2039
    ),
    "l4": GPUTypeSpec(memory_gib=24, price_per_hour=0.71, bf16_tflops=121, mem_bandwidth_gbps=300),
}
HAVE_PLANNER = (
    importlib.util.find_spec("lmaas.placement") is not None and planning.planner_available()
)
needs_planner = pytest.mark.skipif(
    not HAVE_PLANNER, reason="lmaas.placement (the planner) has not landed on this branch yet"
)


def spec(**fields) -> ModelServiceSpec:
    return ModelServiceSpec.model_validate({"model": "m", "slo": {"targetMs": 40}, **fields})


def test_explicit_mix_is_priced_and_capped() -> None:
    plan = planning.compute_plan(
        spec(gpu={"mode": "explicit", "counts": {"a100": 2, "l4": 3}}), "m", MODEL, GPUS
    )
    assert plan.counts == {"a100": 2, "l4": 3} and plan.source == "explicit"
    assert plan.cost_per_hour == pytest.approx(2 * 3.67 + 3 * 0.71)
    capped = planning.compute_plan(
        spec(gpu={"mode": "explicit", "counts": {"a100": 2, "l4": 3}}, scaling={"maxReplicas": 3}),
        "m",
        MODEL,
        GPUS,
    )
    assert sum(capped.counts.values()) == 3
    assert capped.cost_per_hour == pytest.approx(
        sum(c * GPUS[t].price_per_hour for t, c in capped.counts.items())
    )


def test_explicit_mix_of_unknown_gpu_says_what_to_create() -> None:
    with pytest.raises(planning.PlanningError, match="h100"):
        planning.compute_plan(
            spec(gpu={"mode": "explicit", "counts": {"h100": 1}}), "m", MODEL, GPUS
        )
    with pytest.raises(planning.PlanningError, match="no replicas"):
        planning.compute_plan(spec(gpu={"mode": "explicit"}), "m", MODEL, GPUS)


def test_plan_hash_changes_with_inputs_only() -> None:
    a = planning.plan_hash(spec(), MODEL, GPUS)
    assert a == planning.plan_hash(spec(), MODEL, dict(reversed(list(GPUS.items()))))
    assert a != planning.plan_hash(spec(workload={"rate": 9}), MODEL, GPUS)
    assert a == planning.plan_hash(spec(speculation={"policy": "off"}), MODEL, GPUS)
    cheaper = dict(GPUS, l4=GPUS["l4"].model_copy(update={"price_per_hour": 0.5}))
    assert a != planning.plan_hash(spec(), MODEL, cheaper)


def test_auto_without_planner_explains_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planning, "_placement", None)  # an operator image without the planner
    with pytest.raises(planning.PlanningError, match="explicit"):
        planning.compute_plan(spec(), "m", MODEL, GPUS)


@needs_planner
def test_auto_plan_meets_the_load_on_known_gpus() -> None:
    low = planning.compute_plan(spec(workload={"rate": 0.5}), "m", MODEL, GPUS)
    high = planning.compute_plan(spec(workload={"rate": 20}), "m", MODEL, GPUS)
    for plan in (low, high):
        assert plan.source == "planner"
        assert set(plan.counts) | set(plan.spot_counts) <= set(GPUS)
        assert plan.cost_per_hour > 0
    assert sum(high.counts.values()) >= sum(low.counts.values())
    assert high.cost_per_hour >= low.cost_per_hour


@needs_planner
def test_auto_plan_uses_only_the_allowed_types() -> None:
    plan = planning.compute_plan(
        spec(gpu={"types": ["l4"]}, workload={"rate": 2}, slo={"targetMs": 150}), "m", MODEL, GPUS
    )
    assert set(plan.counts) <= {"l4"}
    with pytest.raises(planning.PlanningError, match="h100"):
        planning.compute_plan(spec(gpu={"types": ["h100"]}), "m", MODEL, GPUS)


@needs_planner
def test_an_unreachable_slo_says_what_to_relax() -> None:
    with pytest.raises(planning.PlanningError, match="relax the SLO"):
        planning.compute_plan(spec(gpu={"types": ["l4"]}, slo={"targetMs": 1}), "m", MODEL, GPUS)


@needs_planner
def test_spot_replicas_are_split_from_on_demand() -> None:
    spot_gpus = {
        k: v.model_copy(update={"spot_price_per_hour": v.price_per_hour / 3})
        for k, v in GPUS.items()
    }
    plan = planning.compute_plan(
        spec(workload={"rate": 200}, scaling={"maxSpotShare": 0.5}), "m", MODEL, spot_gpus
    )
    total = sum(plan.counts.values()) + sum(plan.spot_counts.values())
    assert plan.spot_counts and sum(plan.spot_counts.values()) <= 0.5 * total + 1e-9


@needs_planner
def test_min_replicas_is_honoured() -> None:
    plan = planning.compute_plan(
        spec(scaling={"minReplicas": 3}, workload={"rate": 0.1}), "m", MODEL, GPUS
    )
    assert sum(plan.counts.values()) + sum(plan.spot_counts.values()) >= 3
