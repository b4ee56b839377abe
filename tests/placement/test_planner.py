"""The planner: the paper's toy result, its invariants, and the constraints beyond the paper."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lmaas.cli import app
from lmaas.placement import (
    SLO,
    Bucket,
    GPUType,
    PlacementInfeasible,
    ProfileSet,
    ServiceSpec,
    Workload,
    default_catalog,
    model_by_name,
    plan_service,
    plan_services,
)
from lmaas.placement.profiles import parse_melange

# The paper's toy solver input (Mélange, arXiv 2404.14527): melange/config/example.json of
# github.com/tyler-griggs/melange-release @ d46ab43, as kept in ../shared/reference/melange/.
# Its numbers are restated here so that the tests run from any checkout; where the reference
# copy is beside the repository, a test checks that the two agree.
TOY_INPUT = {
    "gpu_info": {
        "A10G": {"cost": 1.01, "tputs": [[2, 1], [5, 2]]},
        "A100-80GB": {"cost": 3.67, "tputs": [[20, 20], [40, 20]]},
    },
    "workload_distribution": [[0.2, 0.1], [0.5, 0.2]],
    "total_request_rate": 30.0,
    "slice_factor": 1,
}
REFERENCE_COPY = Path(__file__).resolve().parents[3] / "shared/reference/melange/example.json"


@pytest.fixture
def example_file(tmp_path: Path) -> Path:
    path = tmp_path / "example.json"
    path.write_text(json.dumps(TOY_INPUT))
    return path


@pytest.mark.skipif(
    not REFERENCE_COPY.exists(), reason="no ../shared/reference beside the checkout"
)
def test_toy_input_matches_the_reference_copy() -> None:
    assert json.loads(REFERENCE_COPY.read_text()) == TOY_INPUT


LLAMA = model_by_name("llama-2-7b")
SLO_120 = SLO(metric="tpot", statistic="mean", target_ms=120)


def _toy(slice_factor: int | None = None):
    toy = parse_melange(TOY_INPUT)
    return plan_service(
        model=None,
        workload=toy.workload,
        slo=None,
        gpu_types=toy.gpu_types,
        profiles=toy.profiles,
        slice_factor=slice_factor or toy.slice_factor,
    )


def test_the_papers_toy_input_gives_three_a10g_and_one_a100() -> None:
    plan = _toy()
    assert plan.counts == {"A10G": 3, "A100-80GB": 1}
    assert plan.cost_per_hour == pytest.approx(6.70)
    assert plan.slice_factor == 1
    # every bucket is routed somewhere, and only to a type that runs
    routed = {b for served in plan.buckets_by_type.values() for b in served}
    assert len(routed) == 4
    assert plan.single_type_costs == {
        "A10G": pytest.approx(12.12),
        "A100-80GB": pytest.approx(7.34),
    }
    assert plan.savings_vs_best_single == pytest.approx(1 - 6.70 / 7.34, abs=1e-6)


def test_finer_slicing_of_the_toy_input_costs_less() -> None:
    costs = {s: _toy(s).cost_per_hour for s in (1, 2, 4, 8)}
    assert costs[2] < costs[1]
    assert costs[8] <= costs[4] <= costs[2]


def test_plan_json_on_the_papers_file(example_file: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--profile", str(example_file), "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    plan = json.loads(lines[0])
    assert plan["counts"] == {"A10G": 3, "A100-80GB": 1}
    assert plan["cost_per_hour"] == pytest.approx(6.70)
    finer = json.loads(
        runner.invoke(
            app, ["plan", "--profile", str(example_file), "--json", "--slice-factor", "4"]
        ).stdout
    )
    assert finer["cost_per_hour"] < 6.70


def test_plan_prints_a_table_for_people() -> None:
    result = CliRunner().invoke(app, ["plan", "--rate", "20"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "GPU plan" in result.output and "savings vs best single type" in result.output


# --- invariants over random inputs -------------------------------------------------------


@st.composite
def _random_problem(draw):
    num_types = draw(st.integers(1, 4))
    num_buckets = draw(st.integers(1, 5))
    buckets = [
        Bucket(input_tokens=(10 * i, 10 * i + 10), output_tokens=(0, 10), share=1.0)
        for i in range(num_buckets)
    ]
    weights = [draw(st.floats(0.0, 1.0)) for _ in buckets]
    if sum(weights) == 0:
        weights[0] = 1.0
    buckets = [
        b.model_copy(update={"share": w / sum(weights)})
        for b, w in zip(buckets, weights, strict=True)
    ]
    rate = draw(st.floats(0.1, 60.0))
    types = [
        GPUType(name=f"g{k}", price_per_hour=draw(st.floats(0.2, 10.0)), memory_gib=80)
        for k in range(num_types)
    ]
    profiles = ProfileSet()
    for k, gpu in enumerate(types):
        for b in buckets:
            # the last type serves everything, so every input is feasible
            zero = k < num_types - 1 and draw(st.booleans()) and draw(st.booleans())
            profiles.set(gpu.name, b, 0.0 if zero else draw(st.floats(0.2, 40.0)), "imported")
    return Workload(rate=rate, buckets=buckets), types, profiles


def _lp_formula(workload: Workload, types: list[GPUType], profiles: ProfileSet) -> float:
    """PAPERS.md: Σ_b r_b · min_g c_g / T_g[b]."""
    total = 0.0
    for b in workload.buckets:
        total += (
            workload.rate
            * b.share
            * min(
                g.price_per_hour / t
                for g in types
                if (t := profiles.get(g.name, b.name) or 0.0) > 0
            )
        )
    return total


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=_random_problem(), base=st.integers(1, 3), multiple=st.integers(2, 3))
def test_invariants_hold_on_random_inputs(problem, base, multiple) -> None:
    workload, types, profiles = problem

    def cost(slices: int):
        return plan_service(
            model=None,
            workload=workload,
            slo=None,
            gpu_types=types,
            profiles=profiles,
            slice_factor=slices,
        )

    coarse, fine = cost(base), cost(base * multiple)
    singles = [c for c in coarse.single_type_costs.values() if c is not None]
    assert singles, "the last type serves everything"
    # never above any single type, where ⌈Σ_b r_b/T_g[b]⌉·c_g is computed independently
    for g in types:
        tputs = [profiles.get(g.name, b.name) or 0.0 for b in workload.buckets]
        if all(t > 0 or b.share == 0 for t, b in zip(tputs, workload.buckets, strict=True)):
            load = sum(
                workload.rate * b.share / t
                for t, b in zip(tputs, workload.buckets, strict=True)
                if b.share
            )
            assert coarse.cost_per_hour <= math.ceil(load - 1e-9) * g.price_per_hour + 1e-6
    # never below the LP bound, the paper's formula or the solved relaxation
    assert coarse.cost_per_hour >= _lp_formula(workload, types, profiles) - 1e-6
    assert coarse.lp_bound is not None and coarse.cost_per_hour >= coarse.lp_bound - 1e-6
    # a slice factor that is a multiple of another never costs more
    assert fine.cost_per_hour <= coarse.cost_per_hour + 1e-6
    # the instances carry the load that the routing puts on them
    for g in types:
        load = sum(
            workload.rate
            * b.share
            * coarse.bucket_slices.get(b.name, {}).get(g.name, 0)
            / coarse.slice_factor
            / profiles.get(g.name, b.name)
            for b in workload.buckets
            if coarse.bucket_slices.get(b.name, {}).get(g.name)
        )
        assert load <= coarse.counts[g.name] + 1e-6


# --- constraints beyond the paper -------------------------------------------------------


def test_types_that_cannot_hold_the_model_are_excluded() -> None:
    plan = plan_service(
        model=model_by_name("llama-2-13b"), workload=Workload.short_chat(8), slo=SLO_120
    )
    # 26 GB of weights: T4 (16 GiB), L4 and A10G (24 GiB) cannot hold it
    for small in ("T4", "L4", "A10G"):
        assert plan.counts[small] == 0
        assert plan.single_type_costs[small] is None
        assert small not in plan.buckets_by_type
    assert plan.num_instances > 0


def test_a_model_no_type_can_hold_is_explained() -> None:
    small = [g for g in default_catalog() if g.name in ("T4", "L4", "A10G")]
    with pytest.raises(PlacementInfeasible, match="no GPU type can hold llama-2-13b") as err:
        plan_service(
            model=model_by_name("llama-2-13b"),
            workload=Workload.short_chat(1),
            slo=SLO_120,
            gpu_types=small,
        )
    assert err.value.constraint == "memory"


def test_availability_limits_are_honoured() -> None:
    free = plan_service(model=LLAMA, workload=Workload.short_chat(64), slo=SLO_120)
    busiest = max(free.counts, key=lambda k: free.counts[k])
    limit = free.counts[busiest] - 1
    catalog = [
        g.model_copy(update={"max_count": limit}) if g.name == busiest else g
        for g in default_catalog()
    ]
    limited = plan_service(
        model=LLAMA, workload=Workload.short_chat(64), slo=SLO_120, gpu_types=catalog
    )
    assert limited.counts[busiest] <= limit
    assert limited.cost_per_hour >= free.cost_per_hour - 1e-9


def test_availability_too_small_for_the_load_is_explained() -> None:
    catalog = [
        g.model_copy(update={"max_count": 1}) for g in default_catalog() if g.name in ("A10G", "L4")
    ]
    with pytest.raises(PlacementInfeasible, match="availability limits") as err:
        plan_service(model=LLAMA, workload=Workload.short_chat(64), slo=SLO_120, gpu_types=catalog)
    assert err.value.constraint == "availability"
    assert err.value.gpu_type in ("A10G", "L4")
    assert "limit 1" in str(err.value)


def test_a_bucket_that_cannot_meet_the_slo_anywhere_is_named() -> None:
    workload = Workload(
        rate=2,
        buckets=[
            Bucket(input_tokens=(0, 100), output_tokens=(0, 100), share=0.5),
            Bucket(input_tokens=(3000, 3900), output_tokens=(100, 190), share=0.5),
        ],
    )
    # an A10G reads Llama-2-7B's weights in ~31 ms: short requests keep 34 ms, 3000-token
    # contexts (another 2 GB of KV cache per step) do not
    a10g = [g for g in default_catalog() if g.name == "A10G"]
    with pytest.raises(PlacementInfeasible, match="bucket i3000-3900/o100-190") as err:
        plan_service(
            model=LLAMA, workload=workload, slo=SLO(metric="tpot", target_ms=34), gpu_types=a10g
        )
    assert err.value.constraint == "slo"
    assert err.value.bucket == "i3000-3900/o100-190"
    assert "mean TPOT ≤ 34 ms" in str(err.value)


def test_min_replicas_more_than_available_is_explained() -> None:
    catalog = [g.model_copy(update={"max_count": 1}) for g in default_catalog()]
    with pytest.raises(PlacementInfeasible, match="min_replicas=9") as err:
        plan_service(
            model=LLAMA,
            workload=Workload.short_chat(1),
            slo=SLO_120,
            gpu_types=catalog,
            min_replicas=9,
        )
    assert err.value.constraint == "min_replicas"


def test_min_replicas_are_kept_even_without_traffic() -> None:
    plan = plan_service(model=LLAMA, workload=Workload.short_chat(0.5), slo=SLO_120, min_replicas=3)
    assert plan.num_instances == 3
    idle = plan_service(model=LLAMA, workload=Workload.short_chat(0), slo=SLO_120, min_replicas=2)
    assert idle.num_instances == 2
    assert idle.counts["T4"] == 2  # the cheapest type that holds the model
    assert idle.buckets_by_type["T4"]  # every bucket still has somewhere to go


@pytest.mark.parametrize("rate", [0.0, 0.5, 8.0])
def test_min_replicas_are_never_met_by_a_type_that_cannot_hold_the_model(rate: float) -> None:
    # llama-2-13b does not fit a T4, L4 or A10G: the cheap T4 must not pad the replica count
    plan = plan_service(
        model=model_by_name("llama-2-13b"),
        workload=Workload.short_chat(rate),
        slo=SLO_120,
        min_replicas=3,
    )
    assert plan.num_instances >= 3
    assert all(plan.counts[small] == 0 for small in ("T4", "L4", "A10G"))


def test_no_traffic_plans_zero_instances() -> None:
    plan = plan_service(model=LLAMA, workload=Workload.short_chat(0), slo=SLO_120)
    assert plan.num_instances == 0
    assert plan.cost_per_hour == 0
    assert plan.buckets_by_type == {}


def test_spot_share_is_capped() -> None:
    workload = Workload.short_chat(64)
    none = plan_service(model=LLAMA, workload=workload, slo=SLO_120)
    assert sum(none.spot_counts.values()) == 0
    for cap in (0.25, 0.5):
        plan = plan_service(model=LLAMA, workload=workload, slo=SLO_120, max_spot_share=cap)
        spot = sum(plan.spot_counts.values())
        assert spot > 0
        assert spot <= cap * plan.num_instances + 1e-9
        assert plan.cost_per_hour < none.cost_per_hour
        for name, count in plan.spot_counts.items():
            assert count <= plan.counts[name]
    everything = plan_service(model=LLAMA, workload=workload, slo=SLO_120, max_spot_share=1.0)
    assert sum(everything.spot_counts.values()) == everything.num_instances


def test_services_planned_jointly_share_the_availability_limits() -> None:
    def spec(name: str, workload: Workload) -> ServiceSpec:
        return ServiceSpec(name=name, model=LLAMA, workload=workload, slo=SLO_120, slice_factor=4)

    services = [
        spec("chat", Workload.short_chat(40)),
        spec("docs", Workload.long_document(6)),
        spec("chat-b", Workload.short_chat(20)),
    ]
    alone = {s.name: plan_services([s])[s.name] for s in services}
    together = plan_services(services)
    for s in services:  # without limits, joint = separate
        assert together[s.name].cost_per_hour == pytest.approx(alone[s.name].cost_per_hour)
    used = {g: sum(p.counts[g] for p in together.values()) for g in together["chat"].counts}
    busiest = max(used, key=lambda g: used[g])
    limit = used[busiest] - 1
    catalog = [
        g.model_copy(update={"max_count": limit}) if g.name == busiest else g
        for g in default_catalog()
    ]
    limited = plan_services(services, catalog)
    assert sum(p.counts[busiest] for p in limited.values()) <= limit
    assert (
        sum(p.cost_per_hour for p in limited.values())
        >= sum(p.cost_per_hour for p in together.values()) - 1e-9
    )


def test_profiles_of_another_slo_are_refused() -> None:
    profiles = ProfileSet(slo=SLO(metric="tpot", target_ms=40))
    with pytest.raises(ValueError, match="measured under the SLO mean TPOT ≤ 40 ms"):
        plan_service(model=LLAMA, workload=Workload.short_chat(1), slo=SLO_120, profiles=profiles)


def test_measured_profiles_win_over_the_model() -> None:
    workload = Workload.short_chat(10)
    a10g = next(g for g in default_catalog() if g.name == "A10G")
    profiles = ProfileSet(slo=SLO_120)
    for b in workload.buckets:
        profiles.set("A10G", b, 1000.0, "measured")  # a very fast A10G
    plan = plan_service(
        model=LLAMA, workload=workload, slo=SLO_120, gpu_types=[a10g], profiles=profiles
    )
    assert plan.counts == {"A10G": 1}


def test_a_type_with_neither_profile_nor_figures_is_named_in_the_error() -> None:
    mystery = GPUType(name="mystery", price_per_hour=1.0, memory_gib=80)
    with pytest.raises(PlacementInfeasible, match="mystery: no profile for it and no hardware"):
        plan_service(model=LLAMA, workload=Workload.short_chat(1), slo=SLO_120, gpu_types=[mystery])


def _plan_on_types(
    shares: list[float], tputs: dict[str, tuple[float, ...]], prices: list[float], rate: float
):
    """One service, slice factor 1, on types g0, g1… with these prices and T_g[b]."""
    buckets = [
        Bucket(input_tokens=(10 * i, 10 * i + 10), output_tokens=(0, 10), share=share)
        for i, share in enumerate(shares)
    ]
    types = [
        GPUType(name=f"g{k}", price_per_hour=price, memory_gib=80) for k, price in enumerate(prices)
    ]
    profiles = ProfileSet()
    for name, row in tputs.items():
        for bucket, t in zip(buckets, row, strict=True):
            profiles.set(name, bucket, float(t), "imported")
    return plan_service(
        model=None,
        workload=Workload(rate=rate, buckets=buckets),
        slo=None,
        gpu_types=types,
        profiles=profiles,
        slice_factor=1,
    )


def test_a_bucket_with_a_vanishing_share_costs_nothing() -> None:
    """Found by the property test above: a share of 1e-38 made the solver pick a $2 type
    where a $1 type carries the whole load alone."""
    plan = _plan_on_types(
        [0.0, 1.1754943508222875e-38, 1.0],
        {"g0": (1, 1, 4), "g1": (1, 1, 1), "g2": (1, 1, 2)},
        [2.0, 1.0, 1.0],
        rate=2.0,
    )
    assert plan.cost_per_hour == pytest.approx(1.0)
    assert plan.counts["g2"] == 1


def test_the_plan_is_the_one_the_solver_proved_optimal() -> None:
    """Found by the property test above: HiGHS's presolve (probing) handed back a plan of
    $11 (one g1, nine g2) for a program it had solved at $10 (ten g2). The planner checks
    the plan against the proven bound and solves again without presolve when they differ."""
    plan = _plan_on_types(
        [1 / 9, 8 / 9], {"g0": (1, 0), "g1": (3, 0), "g2": (1, 1)}, [1.0, 2.0, 1.0], rate=10.0
    )
    assert plan.cost_per_hour == pytest.approx(10.0)
    assert plan.counts == {"g0": 0, "g1": 0, "g2": 10}
    assert plan.optimal


def test_planning_works_where_highs_already_runs_with_more_threads() -> None:
    """HiGHS keeps one scheduler per thread and refuses a solve that asks for another
    thread count; the planner asks for one thread and must cope with a thread where
    other code started HiGHS with two (a thread of its own here, not to touch the rest)."""
    import threading

    import highspy
    import numpy as np

    outcome: dict[str, object] = {}

    def work() -> None:
        other = highspy.Highs()
        other.setOptionValue("output_flag", False)
        other.setOptionValue("threads", 2)
        other.addVar(0.0, 1.0)
        other.changeColsIntegrality(1, np.array([0]), np.array([highspy.HighsVarType.kInteger]))
        other.run()
        outcome["other"] = other.getModelStatus()
        try:
            outcome["plan"] = _toy()
        except Exception as exc:  # reported below, in the test thread
            outcome["plan"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert outcome["other"] == highspy.HighsModelStatus.kOptimal
    plan = outcome["plan"]
    assert not isinstance(plan, Exception), plan
    assert plan.counts == {"A10G": 3, "A100-80GB": 1}
    assert plan.cost_per_hour == pytest.approx(6.70)
