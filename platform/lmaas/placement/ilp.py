"""The Mélange integer program, extended, on plain numbers; solved with HiGHS (scipy.milp).

For each service s, bucket b (rate r_b > 0) and GPU type g with T_g[b] > 0, an integer
n_{s,b,g} ∈ {0..S_s} counts the slices of b served by g; y_{s,g} (on-demand) and z_{s,g}
(spot) count instances:

    minimize   Σ_{s,g} c_g·y_{s,g} + c^spot_g·z_{s,g}
    subject to Σ_g n_{s,b,g} = S_s                                   every slice is served
               Σ_b n_{s,b,g}·(r_b/S_s)/T_g[b] ≤ y_{s,g} + z_{s,g}     loads fit the instances
               Σ_s (y_{s,g} + z_{s,g}) ≤ max_count_g                 availability (shared)
               Σ_g (y_{s,g} + z_{s,g}) ≥ min_replicas_s              minimum replicas
               Σ_g z_{s,g} ≤ share_s · Σ_g (y_{s,g} + z_{s,g})       spot cap (instance count)
               Σ_g ρ_g·(y_{s,g} + z_{s,g}) ≥ D_s                      (valid; see _aggregate_rows)

(Internally x = y + z and z ≤ x are the variables: see `solve`.) Integer slice counts replace the paper's one binary per slice (slices of a bucket are
identical, so it is the same program without the symmetry). With `relax` the integrality
is dropped: the LP bound.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Offer", "ServiceProblem", "ServiceSolution", "Solution", "solve"]


@dataclass(frozen=True)
class Offer:
    """A GPU type as the program sees it."""

    name: str
    price: float
    spot_price: float | None = None
    max_count: int | None = None


@dataclass(frozen=True)
class ServiceProblem:
    """One service: `throughput[g][b]` over the offers × `buckets` (0 = cannot serve)."""

    name: str
    buckets: Sequence[str]
    rates: Sequence[float]
    throughput: Sequence[Sequence[float]]
    slice_factor: int = 1
    min_replicas: int = 0
    max_spot_share: float = 0.0


@dataclass
class ServiceSolution:
    on_demand: dict[str, int] = field(default_factory=dict)
    spot: dict[str, int] = field(default_factory=dict)
    slices: dict[str, dict[str, int]] = field(default_factory=dict)  # bucket → type → n
    cost: float = 0.0


@dataclass
class Solution:
    services: dict[str, ServiceSolution]
    cost: float
    optimal: bool
    solve_ms: float


def solve(
    services: Sequence[ServiceProblem],
    offers: Sequence[Offer],
    *,
    relax: bool = False,
    time_limit_s: float = 30.0,
) -> Solution | None:
    """The cheapest integer (or, with `relax`, fractional) plan; None when infeasible."""
    start = time.perf_counter()
    cost: list[float] = []
    upper: list[float] = []

    def var(c: float, ub: float) -> int:
        cost.append(c)
        upper.append(ub)
        return len(cost) - 1

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    row_lb: list[float] = []
    row_ub: list[float] = []

    def row(entries: list[tuple[int, float]], lb: float, ub: float) -> None:
        r = len(row_lb)
        for col, val in entries:
            rows.append(r)
            cols.append(col)
            vals.append(val)
        row_lb.append(lb)
        row_ub.append(ub)

    # Per service and type: x = all instances (on-demand + spot), z = the spot ones
    # (z ≤ x). Branching on the total rather than on two interchangeable counts is what
    # keeps the solver fast; y = x − z is recovered afterwards.
    layout = []
    per_type: list[list[int]] = [[] for _ in offers]
    for svc in services:
        if svc.slice_factor < 1:
            raise ValueError(f"service {svc.name}: slice factor must be ≥ 1")
        s = svc.slice_factor
        spot_ok = svc.max_spot_share > 0
        # No optimal plan needs more instances of a type than carry every bucket it can
        # serve, or than the minimum replica count: bounds that make the search smaller.
        most = [
            max(
                svc.min_replicas,
                math.ceil(
                    sum(
                        r / s_t
                        for r, s_t in zip(svc.rates, svc.throughput[g], strict=True)
                        if r > 0 and s_t > 0
                    )
                    - 1e-9
                ),
            )
            for g in range(len(offers))
        ]
        x = [var(o.price, float(most[g])) for g, o in enumerate(offers)]
        z = [
            var(o.spot_price - o.price, float(most[g]))
            if spot_ok and o.spot_price is not None and o.spot_price < o.price
            else -1
            for g, o in enumerate(offers)
        ]
        n: dict[tuple[int, int], int] = {}
        capacity: list[list[tuple[int, float]]] = [[] for _ in offers]
        for b, rate in enumerate(svc.rates):
            if rate <= 0:
                continue
            slice_cols = []
            for g in range(len(offers)):
                t = svc.throughput[g][b]
                if t > 0:
                    col = var(0.0, float(s))
                    n[(b, g)] = col
                    slice_cols.append((col, 1.0))
                    capacity[g].append((col, rate / s / t))
            row(slice_cols, s, s)
        for g in range(len(offers)):
            if capacity[g]:
                row([*capacity[g], (x[g], -1.0)], -math.inf, 0.0)
            if z[g] >= 0:
                row([(z[g], 1.0), (x[g], -1.0)], -math.inf, 0.0)
            per_type[g].append(x[g])
        if svc.min_replicas > 0:
            row([(c, 1.0) for c in x], svc.min_replicas, math.inf)
        _aggregate_rows(svc, offers, x, row)
        spot_cols = [c for c in z if c >= 0]
        if spot_cols and svc.max_spot_share < 1:
            share = svc.max_spot_share
            row([(c, -share) for c in x] + [(c, 1.0) for c in spot_cols], -math.inf, 0.0)
        layout.append((n, x, z))
    for g, offer in enumerate(offers):
        if offer.max_count is not None:
            row([(c, 1.0) for c in per_type[g]], -math.inf, offer.max_count)

    start_values = None if relax else _greedy_start(services, offers, layout, len(cost))
    values, status = _run_highs(
        cost, upper, rows, cols, vals, row_lb, row_ub, relax, time_limit_s, start_values
    )
    elapsed = (time.perf_counter() - start) * 1e3
    if values is None:
        return None
    v = values if relax else np.round(values)
    solved: dict[str, ServiceSolution] = {}
    total = 0.0
    for svc, (n, x, z) in zip(services, layout, strict=True):
        out = ServiceSolution()
        for g, offer in enumerate(offers):
            spot = _value(v[z[g]], relax) if z[g] >= 0 else 0
            out.spot[offer.name] = spot
            out.on_demand[offer.name] = _value(v[x[g]], relax) - spot
            out.cost += out.on_demand[offer.name] * offer.price
            if spot:
                out.cost += spot * (offer.spot_price or 0.0)
        for (b, g), col in n.items():
            count = _value(v[col], relax)
            if count:
                out.slices.setdefault(svc.buckets[b], {})[offers[g].name] = count
        total += out.cost
        solved[svc.name] = out
    return Solution(services=solved, cost=total, optimal=status == "optimal", solve_ms=elapsed)


def _aggregate_rows(
    svc: ServiceProblem,
    offers: Sequence[Offer],
    x: list[int],
    row: Callable[[list[tuple[int, float]], float, float], None],
) -> None:
    """Valid rows that make the solver's integer rounding cuts strong (about 2× faster).

    Measure work in units of a reference throughput T_ref[b]: one instance of g does at
    most ρ_g = max_b T_g[b]/T_ref[b] units per second, the demand is D = Σ_b r_b/T_ref[b],
    so Σ_g ρ_g·x_g ≥ D. References: the best type per bucket, and each type that serves
    every bucket. Implied by the capacity rows, but only as a sum the solver never forms.
    """
    active = [b for b, r in enumerate(svc.rates) if r > 0]
    if not active:
        return
    refs = [[max(svc.throughput[g][b] for g in range(len(offers))) for b in active]]
    for g in range(len(offers)):
        if all(svc.throughput[g][b] > 0 for b in active):
            refs.append([svc.throughput[g][b] for b in active])
    for ref in refs:
        demand = sum(svc.rates[b] / t for b, t in zip(active, ref, strict=True))
        weights = [
            max(svc.throughput[g][b] / t for b, t in zip(active, ref, strict=True))
            for g in range(len(offers))
        ]
        row([(x[g], w) for g, w in enumerate(weights) if w > 0], demand - 1e-9, math.inf)


def _greedy_start(
    services: Sequence[ServiceProblem],
    offers: Sequence[Offer],
    layout: list,
    num_cols: int,
) -> np.ndarray | None:
    """A feasible starting point: every bucket on its cheapest type per request, rounded up.

    Saves the solver most of its search for a first good solution; None when the greedy
    plan breaks an availability limit.
    """
    values = np.zeros(num_cols)
    used = [0] * len(offers)
    for svc, (n, x, z) in zip(services, layout, strict=True):
        load = [0.0] * len(offers)
        for b, rate in enumerate(svc.rates):
            if rate <= 0:
                continue
            options = [g for g in range(len(offers)) if (b, g) in n]
            if not options:
                return None
            g = min(options, key=lambda g: offers[g].price / svc.throughput[g][b])
            values[n[(b, g)]] = svc.slice_factor
            load[g] += rate / svc.throughput[g][b]
        counts = [math.ceil(v - 1e-9) for v in load]
        missing = svc.min_replicas - sum(counts)
        if missing > 0:
            cheapest = min(range(len(offers)), key=lambda g: offers[g].price)
            counts[cheapest] += missing
        spots = math.floor(svc.max_spot_share * sum(counts) + 1e-9)
        for g in sorted(
            (g for g in range(len(offers)) if z[g] >= 0),
            key=lambda g: offers[g].price - (offers[g].spot_price or 0.0),
            reverse=True,
        ):
            take = min(spots, counts[g])
            values[z[g]] = take
            spots -= take
        for g in range(len(offers)):
            values[x[g]] = counts[g]
            used[g] += counts[g]
    for g, offer in enumerate(offers):
        if offer.max_count is not None and used[g] > offer.max_count:
            return None
    return values


def _new_highs():
    """A quiet HiGHS instance (its constructor prints a banner to fd 1 once per process)."""
    import highspy

    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return highspy.Highs()
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            highs = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SHOWN = True
    return highs


_BANNER_SHOWN = False


def _run_highs(
    cost: list[float],
    upper: list[float],
    rows: list[int],
    cols: list[int],
    vals: list[float],
    row_lb: list[float],
    row_ub: list[float],
    relax: bool,
    time_limit_s: float,
    start_values: np.ndarray | None = None,
) -> tuple[np.ndarray | None, str]:
    import highspy
    from scipy.sparse import coo_array

    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_ = len(cost)
    lp.num_row_ = len(row_lb)
    lp.col_cost_ = np.array(cost)
    # spot columns may be negative in cost, never in value
    lp.col_lower_ = np.zeros(len(cost))
    lp.col_upper_ = np.array([inf if math.isinf(u) else u for u in upper])
    lp.row_lower_ = np.array([-inf if math.isinf(b) else b for b in row_lb])
    lp.row_upper_ = np.array([inf if math.isinf(b) else b for b in row_ub])
    matrix = coo_array((vals, (rows, cols)), shape=(len(row_lb), len(cost))).tocsc()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = matrix.indptr
    lp.a_matrix_.index_ = matrix.indices
    lp.a_matrix_.value_ = matrix.data
    if not relax:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * len(cost)
    highs = _new_highs()
    for option, value in (
        ("output_flag", False),
        ("time_limit", float(time_limit_s)),
        ("mip_rel_gap", 1e-9),
        # restarts after root presolve cost more than they save on these small programs
        ("mip_allow_restart", False),
    ):
        highs.setOptionValue(option, value)
    highs.passModel(lp)
    if start_values is not None:
        start = highspy.HighsSolution()
        start.col_value = list(start_values)
        start.value_valid = True
        highs.setSolution(start)
    highs.run()
    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kOptimal:
        return np.array(highs.getSolution().col_value), "optimal"
    if status in (
        highspy.HighsModelStatus.kInfeasible,
        highspy.HighsModelStatus.kUnboundedOrInfeasible,
    ):
        return None, "infeasible"
    if highs.getInfo().primal_solution_status == 2:  # feasible, not proven optimal
        return np.array(highs.getSolution().col_value), "feasible"
    raise RuntimeError(f"the placement solver failed: {highs.modelStatusToString(status)}")


def _value(v: float, relax: bool):
    return float(v) if relax else round(v)
