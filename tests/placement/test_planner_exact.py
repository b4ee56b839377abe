"""The fast planner against the integer program as PAPERS.md writes it.

`plan_services` solves a strengthened program (spot cap on integer totals, aggregate rows,
bounds on instance counts), plans services alone before jointly, and starts the joint
program from known plans with the separate optima as lower bounds. None of that may change
the optimum: here a plain, independent statement of the program (on-demand and spot counts,
no extra rows, no bounds beyond the limits), solved by scipy's HiGHS without presolve, must
reach the same cost on random inputs with spot caps, minimum replicas and shared limits.

One rule of the program is easy to miss: a service runs no more instances of a type than
carry all the traffic that type can serve (or its minimum replicas). Without it, a spot cap
on instance counts pays for idle on-demand instances — of any type, even one that cannot
hold the model — just to raise the number of spot ones allowed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, milp

from lmaas.placement import (
    Bucket,
    GPUType,
    PlacementInfeasible,
    ProfileSet,
    ServiceSpec,
    Workload,
    plan_services,
)
from lmaas.placement.planner import NEGLIGIBLE_RATE


def _reference_cost(services: list[ServiceSpec], types: list[GPUType]) -> float | None:
    """min Σ c_g·y + c^spot_g·z over n, y, z integer, straight from the program's rows."""

    cost: list[float] = []
    rows: list[dict[int, float]] = []
    lower: list[float] = []
    upper: list[float] = []

    def var(c: float) -> int:
        cost.append(c)
        return len(cost) - 1

    def row(entries: dict[int, float], lo: float, hi: float) -> None:
        rows.append(entries)
        lower.append(lo)
        upper.append(hi)

    slice_cols = []
    per_type: list[list[int]] = [[] for _ in types]
    for svc in services:
        assert svc.profiles is not None
        s = svc.slice_factor
        y = [var(g.price_per_hour) for g in types]
        z = [
            var(g.spot_price_per_hour)
            if svc.max_spot_share > 0
            and g.spot_price_per_hour is not None
            and g.spot_price_per_hour < g.price_per_hour
            else None
            for g in types
        ]
        load: list[dict[int, float]] = [{} for _ in types]
        for b in svc.workload.buckets:
            rate = svc.workload.rate * b.share
            if rate < NEGLIGIBLE_RATE:
                continue
            served = {}
            for k, g in enumerate(types):
                t = svc.profiles.get(g.name, b.name) or 0.0
                if t > 0:
                    col = var(0.0)
                    slice_cols.append((col, s))
                    served[col] = 1.0
                    load[k][col] = rate / s / t
            row(served, s, s)
        instances = []
        for k, g in enumerate(types):
            mine = {y[k]: -1.0} | ({z[k]: -1.0} if z[k] is not None else {})
            row(load[k] | mine, -np.inf, 0.0)
            # the rule above: no more instances than carry everything this type can serve
            carry = s * sum(load[k].values())
            holds = any((svc.profiles.get(g.name, b.name) or 0.0) > 0 for b in svc.workload.buckets)
            most = max(svc.min_replicas if holds else 0, math.ceil(carry - 1e-9))
            row(dict.fromkeys(mine, 1.0), -np.inf, most)
            instances += [y[k]] + ([z[k]] if z[k] is not None else [])
            per_type[k] += [y[k]] + ([z[k]] if z[k] is not None else [])
        if svc.min_replicas:
            row(dict.fromkeys(instances, 1.0), svc.min_replicas, np.inf)
        spot = [c for c in z if c is not None]
        if spot:
            share = svc.max_spot_share
            row({c: -share for c in instances} | {c: 1.0 - share for c in spot}, -np.inf, 0.0)
    for k, g in enumerate(types):
        if g.max_count is not None:
            row(dict.fromkeys(per_type[k], 1.0), -np.inf, g.max_count)
    matrix = np.zeros((len(rows), len(cost)))
    for r, entries in enumerate(rows):
        for c, v in entries.items():
            matrix[r, c] = v
    ub = np.full(len(cost), np.inf)
    for col, s in slice_cols:
        ub[col] = s
    result = milp(
        np.array(cost),
        constraints=LinearConstraint(matrix, lower, upper),
        integrality=np.ones(len(cost)),
        bounds=Bounds(np.zeros(len(cost)), ub),
        options={"presolve": False, "mip_rel_gap": 1e-9},
    )
    if result.status == 2:  # infeasible
        return None
    assert result.status == 0, result.message
    return float(result.fun)


@st.composite
def _random_services(draw):
    num_types = draw(st.integers(1, 4))
    types = []
    for k in range(num_types):
        price = draw(st.sampled_from([0.5, 0.7, 1.0, 2.0, 3.7, 7.0]))
        spot = draw(st.sampled_from([None, 0.3, 0.4, 0.6, 1.0])) if draw(st.booleans()) else None
        types.append(
            GPUType(
                name=f"g{k}",
                price_per_hour=price,
                spot_price_per_hour=None if spot is None else round(price * spot, 4),
                memory_gib=80,
                max_count=draw(st.sampled_from([None, None, 1, 2, 4])),
            )
        )
    services = []
    for s in range(draw(st.integers(1, 3))):
        num_buckets = draw(st.integers(1, 4))
        weights = [draw(st.sampled_from([0.0, 0.1, 0.3, 1.0])) for _ in range(num_buckets)]
        if sum(weights) == 0:
            weights[0] = 1.0
        buckets = [
            Bucket(
                input_tokens=(10 * i, 10 * i + 10), output_tokens=(0, 10), share=w / sum(weights)
            )
            for i, w in enumerate(weights)
        ]
        profiles = ProfileSet()
        for k, gpu in enumerate(types):
            for b in buckets:
                # the last type serves everything; others now and then cannot serve a bucket
                zero = k < num_types - 1 and draw(st.integers(0, 3)) == 0
                profiles.set(gpu.name, b, 0.0 if zero else draw(st.floats(0.5, 20.0)), "imported")
        services.append(
            ServiceSpec(
                name=f"s{s}",
                workload=Workload(rate=draw(st.floats(0.2, 40.0)), buckets=buckets),
                profiles=profiles,
                min_replicas=draw(st.sampled_from([0, 0, 1, 2])),
                max_spot_share=draw(st.sampled_from([0.0, 0.25, 0.3, 0.5, 1.0])),
                slice_factor=draw(st.integers(1, 4)),
            )
        )
    return services, types


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_random_services())
def test_the_planner_reaches_the_optimum_of_the_plain_program(case) -> None:
    services, types = case
    expected = _reference_cost(services, types)
    try:
        plans = plan_services(services, types)
    except PlacementInfeasible:
        assert expected is None, f"the plain program has a plan costing {expected}"
        return
    assert expected is not None, "the planner found a plan the plain program rules out"
    assert all(p.optimal for p in plans.values())
    assert sum(p.cost_per_hour for p in plans.values()) == pytest.approx(expected, abs=1e-6)
    for g in types:  # the shared limits hold
        if g.max_count is not None:
            assert sum(p.counts[g.name] for p in plans.values()) <= g.max_count
    for svc in services:  # the spot caps hold
        plan = plans[svc.name]
        assert sum(plan.spot_counts.values()) <= svc.max_spot_share * plan.num_instances + 1e-9
