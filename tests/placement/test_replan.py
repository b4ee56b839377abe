"""Live re-planning: wobbling traffic keeps the plan, a real change re-plans, none scales to zero."""

from __future__ import annotations

import random

from lmaas.placement import SLO, Replanner, Workload, model_by_name

LLAMA = model_by_name("llama-2-7b")
SLO_120 = SLO(target_ms=120)
MINUTE = 60.0


def _replanner(**kwargs) -> Replanner:
    return Replanner(model=LLAMA, slo=SLO_120, slice_factor=4, **kwargs)


def test_the_first_observation_plans_with_headroom() -> None:
    replanner = _replanner(headroom=0.2)
    plan = replanner.observe(Workload.short_chat(30), now=0)
    assert plan is not None and plan.num_instances > 0
    assert plan.rate == 30 * 1.2
    assert replanner.current is plan


def test_wobbling_traffic_does_not_flap() -> None:
    replanner = _replanner(headroom=0.15, down_after_s=10 * MINUTE)
    rng = random.Random(7)
    changes = 0
    for minute in range(120):
        rate = 30 * (1 + rng.uniform(-0.07, 0.07))
        if replanner.observe(Workload.short_chat(rate), now=minute * MINUTE) is not None:
            changes += 1
    assert changes == 1  # the first plan, then nothing


def test_a_real_rise_re_plans_at_once() -> None:
    replanner = _replanner()
    first = replanner.observe(Workload.short_chat(10), now=0)
    assert first is not None
    assert replanner.observe(Workload.short_chat(10.5), now=MINUTE) is None
    bigger = replanner.observe(Workload.short_chat(40), now=2 * MINUTE)
    assert bigger is not None
    assert bigger.cost_per_hour > first.cost_per_hour


def test_a_real_fall_re_plans_only_once_it_has_lasted() -> None:
    replanner = _replanner(down_after_s=5 * MINUTE)
    high = replanner.observe(Workload.short_chat(60), now=0)
    assert high is not None
    for minute in range(1, 6):  # lower for under 5 minutes: keep the plan
        assert replanner.observe(Workload.short_chat(15), now=minute * MINUTE) is None
    low = replanner.observe(Workload.short_chat(15), now=6 * MINUTE)
    assert low is not None
    assert low.cost_per_hour < high.cost_per_hour


def test_a_brief_dip_resets_the_scale_down_clock() -> None:
    replanner = _replanner(down_after_s=5 * MINUTE)
    replanner.observe(Workload.short_chat(60), now=0)
    for minute in range(1, 5):
        assert replanner.observe(Workload.short_chat(15), now=minute * MINUTE) is None
    assert replanner.observe(Workload.short_chat(60), now=5 * MINUTE) is None  # back up
    for minute in range(6, 10):  # the clock starts again at minute 6
        assert replanner.observe(Workload.short_chat(15), now=minute * MINUTE) is None
    assert replanner.observe(Workload.short_chat(15), now=11 * MINUTE) is not None


def test_no_traffic_scales_to_zero_after_the_grace_period() -> None:
    replanner = _replanner(zero_after_s=5 * MINUTE)
    assert replanner.observe(Workload.short_chat(20), now=0) is not None
    for minute in range(1, 5):
        assert replanner.observe(Workload.short_chat(0), now=minute * MINUTE) is None
    zero = replanner.observe(Workload.short_chat(0), now=7 * MINUTE)
    assert zero is not None
    assert zero.num_instances == 0 and zero.cost_per_hour == 0
    assert replanner.observe(Workload.short_chat(0), now=8 * MINUTE) is None
    # traffic again: instances at once
    back = replanner.observe(Workload.short_chat(5), now=9 * MINUTE)
    assert back is not None and back.num_instances > 0


def test_scale_to_zero_stops_at_min_replicas() -> None:
    replanner = _replanner(zero_after_s=0, min_replicas=1)
    replanner.observe(Workload.short_chat(20), now=0)
    idle = replanner.observe(Workload.short_chat(0), now=MINUTE)
    assert idle is not None and idle.num_instances == 1


def test_a_service_that_starts_idle_gets_an_empty_plan() -> None:
    plan = _replanner().observe(Workload.short_chat(0), now=0)
    assert plan is not None and plan.num_instances == 0
