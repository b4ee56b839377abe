"""The Mélange integer program, extended, on plain numbers; solved with HiGHS (highspy).

For each service s, bucket b (rate r_b > 0) and GPU type g with T_g[b] > 0, an integer
n_{s,b,g} ∈ {0..S_s} counts the slices of b served by g; y_{s,g} (on-demand) and z_{s,g}
(spot) count instances:

    minimize   Σ_{s,g} c_g·y_{s,g} + c^spot_g·z_{s,g}
    subject to Σ_g n_{s,b,g} = S_s                                   every slice is served
               Σ_b n_{s,b,g}·(r_b/S_s)/T_g[b] ≤ y_{s,g} + z_{s,g}     loads fit the instances
               Σ_s (y_{s,g} + z_{s,g}) ≤ max_count_g                 availability (shared)
               Σ_g (y_{s,g} + z_{s,g}) ≥ min_replicas_s              minimum replicas
               Σ_g z_{s,g} ≤ share_s · Σ_g (y_{s,g} + z_{s,g})       spot cap (instance count)
               y_{s,g} + z_{s,g} ≤ max(min_replicas_s, ⌈Σ_b r_b/T_g[b]⌉)   (see `solve`)
               Σ_g ρ_g·(y_{s,g} + z_{s,g}) ≥ D_s                      (valid; see _aggregate_rows)

(Internally x = y + z and z ≤ x are the variables: see `solve`.) Integer slice counts
replace the paper's one binary per slice (slices of a bucket are identical, so it is the
same program without the symmetry). With `relax` the integrality is dropped: the LP bound.

The spot cap is stated on two integer columns, N_s = Σ_g x_{s,g} and K_s = Σ_g z_{s,g}, as
K_s ≤ share_s·N_s: the same integer points, but the solver can now round and branch on the
totals (one spot instance at a 30 % cap needs four instances in all), where the cap over
fractional instance counts lets a quarter of a spot H100 ride on three quarters of an L4.
A caller that knows more passes it: `lower_bounds` (a service's cost alone, a valid bound
on its cost in any joint plan) and `start` (a feasible plan to begin from).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = [
    "Offer",
    "ServiceProblem",
    "ServiceSolution",
    "Solution",
    "greedy_plan",
    "single_type_plan",
    "solve",
]


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


class _Layout(NamedTuple):
    """A service's columns: n[(b, g)] slices, x[g] instances, z[g] spot ones (-1: none),
    `totals` = (N, K) when the spot cap is stated on them."""

    n: dict[tuple[int, int], int]
    x: list[int]
    z: list[int]
    totals: tuple[int, int] | None


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
    lower_bounds: Sequence[float | None] | None = None,
    start: Sequence[ServiceSolution | None] | None = None,
) -> Solution | None:
    """The cheapest integer (or, with `relax`, fractional) plan; None when infeasible.

    `lower_bounds[s]`: a proven lower bound on service s's own cost (e.g. its optimum when
    planned alone), added as a row. `start[s]`: a plan for service s; when every service
    has one and together they are feasible, the solver starts from them instead of each
    service's cheapest one-type or greedy plan.
    """
    if (
        len(services) == 1
        and not relax
        and lower_bounds is None
        and start is None
        and _split_on_spot(services[0], offers)
    ):
        return _solve_spot_cases(services[0], offers, time_limit_s)
    return _solve(services, offers, relax, time_limit_s, lower_bounds, start)


def _split_on_spot(svc: ServiceProblem, offers: Sequence[Offer]) -> bool:
    """Is there a spot cap that matters at this service's scale: even on the fastest type
    per bucket, is its load under the ⌈1/share⌉ instances that one spot instance needs?"""
    if svc.max_spot_share >= 1 or not any(_spot_allowed(svc, o) for o in offers):
        return False
    fastest = [max(row[b] for row in svc.throughput) for b in range(len(svc.rates))]
    load = sum(r / t for r, t in zip(svc.rates, fastest, strict=True) if r > 0 and t > 0)
    return load * svc.max_spot_share < 1


def _solve_spot_cases(svc: ServiceProblem, offers: Sequence[Offer], time_limit_s: float):
    """One small service under a spot cap, as two programs: some spot (then at least
    ⌈1/share⌉ instances in all, a bound the relaxation of the cap never sees while the
    instance counts are fractions), and none (searched only below the first's cost). Its
    optimum is the cheaper. 1.3–5× faster than the one program, which has to find this
    case split by branching; on services of many instances no faster, so not used there."""
    began = time.perf_counter()
    some = _solve([svc], offers, False, time_limit_s, None, None, spot_at_least=1)
    bound = some.cost if some is not None else None
    plain = dataclasses.replace(svc, max_spot_share=0.0)
    none = _solve([plain], offers, False, time_limit_s, None, None, cost_at_most=bound)
    best = some if none is None or (some is not None and some.cost <= none.cost) else none
    if best is None:
        return None
    best.optimal = (some is None or some.optimal) and (none is None or none.optimal)
    best.solve_ms = (time.perf_counter() - began) * 1e3
    return best


def _solve(
    services: Sequence[ServiceProblem],
    offers: Sequence[Offer],
    relax: bool,
    time_limit_s: float,
    lower_bounds: Sequence[float | None] | None,
    start: Sequence[ServiceSolution | None] | None,
    *,
    spot_at_least: int = 0,
    cost_at_most: float | None = None,
) -> Solution | None:
    """`solve`; with `spot_at_least` (one service), at least that many spot instances; with
    `cost_at_most`, only plans that cost no more (None when there is none)."""
    began = time.perf_counter()
    cost: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def var(c: float, ub: float, lb: float = 0.0) -> int:
        cost.append(c)
        lower.append(lb)
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
    layout: list[_Layout] = []
    all_cost: list[tuple[int, float]] = []
    per_type: list[list[int]] = [[] for _ in offers]
    for svc in services:
        if svc.slice_factor < 1:
            raise ValueError(f"service {svc.name}: slice factor must be ≥ 1")
        s = svc.slice_factor
        # No more instances of a type than carry every bucket it can serve, or than the
        # minimum replica count. Without spot that cuts off no optimum and only makes the
        # search smaller; with a spot cap it is a rule of the program: no idle on-demand
        # instances (of any type, even one that cannot hold the model) run just to allow
        # more spot ones.
        # A type that serves no bucket (it cannot hold the model) gets no instances: not
        # even towards the minimum replica count.
        most = [
            max(
                svc.min_replicas if any(t > 0 for t in svc.throughput[g]) else 0,
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
            var((o.spot_price or 0.0) - o.price, float(most[g])) if _spot_allowed(svc, o) else -1
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
        totals = None
        if spot_cols and svc.max_spot_share < 1:
            most_total = float(sum(most))
            least = spot_at_least
            totals = (  # N_s, K_s
                var(0.0, most_total, math.ceil(least / svc.max_spot_share - 1e-9)),
                var(0.0, most_total, least),
            )
            row([(c, 1.0) for c in x] + [(totals[0], -1.0)], 0.0, 0.0)
            row([(c, 1.0) for c in spot_cols] + [(totals[1], -1.0)], 0.0, 0.0)
            row([(totals[1], 1.0), (totals[0], -svc.max_spot_share)], -math.inf, 0.0)
        own_cost = [(x[g], o.price) for g, o in enumerate(offers)]
        own_cost += [(z[g], cost[z[g]]) for g in range(len(offers)) if z[g] >= 0]
        all_cost += own_cost
        if lower_bounds is not None and lower_bounds[len(layout)] is not None and not relax:
            bound = float(lower_bounds[len(layout)])
            row(own_cost, bound - 1e-7 * max(1.0, abs(bound)), math.inf)
        layout.append(_Layout(n, x, z, totals))
    for g, offer in enumerate(offers):
        if offer.max_count is not None:
            row([(c, 1.0) for c in per_type[g]], -math.inf, offer.max_count)
    if cost_at_most is not None:
        row(all_cost, -math.inf, cost_at_most + 1e-7 * max(1.0, abs(cost_at_most)))

    start_values = None
    if not relax:
        start_values = _start_vector(services, offers, layout, len(cost), start)
    if start_values is not None and not _meets_bounds(start_values, lower, upper):
        start_values = None  # e.g. no spot instance where `spot_at_least` asks for one
    too_dear = cost_at_most is not None and start_values is not None
    if too_dear and sum(start_values[c] * v for c, v in all_cost) > cost_at_most:
        start_values = None
    values, status = _run_highs(
        cost, lower, upper, rows, cols, vals, row_lb, row_ub, relax, time_limit_s, start_values
    )
    elapsed = (time.perf_counter() - began) * 1e3
    if values is None:
        return None
    v = values if relax else np.round(values)
    solved: dict[str, ServiceSolution] = {}
    total = 0.0
    for svc, (n, x, z, _) in zip(services, layout, strict=True):
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


def greedy_plan(svc: ServiceProblem, offers: Sequence[Offer]) -> ServiceSolution | None:
    """A feasible plan for one service alone: every bucket on its cheapest type per
    request, rounded up (None when a bucket has no type). Availability limits not checked.
    """
    load = [0.0] * len(offers)
    slices: dict[str, dict[str, int]] = {}
    for b, rate in enumerate(svc.rates):
        if rate <= 0:
            continue
        options = [g for g in range(len(offers)) if svc.throughput[g][b] > 0]
        if not options:
            return None
        g = min(options, key=lambda g: offers[g].price / svc.throughput[g][b])
        slices[svc.buckets[b]] = {offers[g].name: svc.slice_factor}
        load[g] += rate / svc.throughput[g][b]
    counts = [math.ceil(v - 1e-9) for v in load]
    missing = svc.min_replicas - sum(counts)
    if missing > 0:
        hosts = [g for g in range(len(offers)) if any(t > 0 for t in svc.throughput[g])]
        cheapest = min(hosts, key=lambda g: offers[g].price)
        counts[cheapest] += missing
    return _with_spot(svc, offers, counts, slices)


def single_type_plan(
    svc: ServiceProblem, offers: Sequence[Offer], g: int
) -> ServiceSolution | None:
    """Everything on type g alone, spot up to the cap (None: g cannot serve every bucket
    that has traffic, or not within its availability limit)."""
    load = 0.0
    slices: dict[str, dict[str, int]] = {}
    for b, rate in enumerate(svc.rates):
        if rate <= 0:
            continue
        t = svc.throughput[g][b]
        if t <= 0:
            return None
        load += rate / t
        slices[svc.buckets[b]] = {offers[g].name: svc.slice_factor}
    counts = [0] * len(offers)
    counts[g] = max(math.ceil(load - 1e-9), svc.min_replicas)
    if offers[g].max_count is not None and counts[g] > offers[g].max_count:
        return None
    return _with_spot(svc, offers, counts, slices)


def _spot_allowed(svc: ServiceProblem, offer: Offer) -> bool:
    return (
        svc.max_spot_share > 0 and offer.spot_price is not None and offer.spot_price < offer.price
    )


def _with_spot(
    svc: ServiceProblem, offers: Sequence[Offer], counts: list[int], slices: dict
) -> ServiceSolution:
    """The plan with these instance counts, as many of them spot as the cap allows (the
    types that save most per instance first)."""
    spots = math.floor(svc.max_spot_share * sum(counts) + 1e-9)
    out = ServiceSolution(slices=slices)
    for g in sorted(
        range(len(offers)),
        key=lambda g: offers[g].price - (offers[g].spot_price or offers[g].price),
        reverse=True,
    ):
        offer = offers[g]
        take = min(spots, counts[g]) if _spot_allowed(svc, offer) else 0
        spots -= take
        out.spot[offer.name] = take
        out.on_demand[offer.name] = counts[g] - take
        out.cost += (counts[g] - take) * offer.price + take * (offer.spot_price or 0.0)
    return out


def _meets_bounds(values: np.ndarray, lower: list[float], upper: list[float]) -> bool:
    return bool(
        np.all(values >= np.array(lower) - 1e-9) and np.all(values <= np.array(upper) + 1e-9)
    )


def _default_start(svc: ServiceProblem, offers: Sequence[Offer]) -> ServiceSolution | None:
    """The cheapest of the greedy plan and the one-type plans that fits the limits. The
    greedy plan rounds up the instances of every type it uses (2–16× the optimum at low
    rates); a one-type plan is mostly within 1.3×, and the solves from it are faster."""
    known = [greedy_plan(svc, offers)]
    known += [single_type_plan(svc, offers, g) for g in range(len(offers))]
    fitting = [
        k
        for k in known
        if k is not None
        and all(
            o.max_count is None or k.on_demand[o.name] + k.spot[o.name] <= o.max_count
            for o in offers
        )
    ]
    return min(fitting, key=lambda k: k.cost, default=None)


def _start_vector(
    services: Sequence[ServiceProblem],
    offers: Sequence[Offer],
    layout: list[_Layout],
    num_cols: int,
    start: Sequence[ServiceSolution | None] | None,
) -> np.ndarray | None:
    """The solver's starting point: the given plans when every service has one, else each
    service's `_default_start`; None when they break a limit or do not fit the program."""
    plans = list(start) if start is not None else []
    if len(plans) != len(services) or any(p is None for p in plans):
        plans = [_default_start(svc, offers) for svc in services]
    values = np.zeros(num_cols)
    used = [0] * len(offers)
    gpu = {o.name: g for g, o in enumerate(offers)}
    for svc, lay, plan in zip(services, layout, plans, strict=True):
        if plan is None:
            return None
        bucket = {name: b for b, name in enumerate(svc.buckets)}
        for name, by_type in plan.slices.items():
            for type_name, count in by_type.items():
                col = lay.n.get((bucket[name], gpu[type_name]))
                if col is None:
                    if count:
                        return None
                    continue
                values[col] = count
        for g, offer in enumerate(offers):
            spot = plan.spot.get(offer.name, 0)
            total = plan.on_demand.get(offer.name, 0) + spot
            if spot and lay.z[g] < 0:
                return None
            values[lay.x[g]] = total
            if lay.z[g] >= 0:
                values[lay.z[g]] = spot
            used[g] += total
        if lay.totals is not None:
            values[lay.totals[0]] = sum(values[c] for c in lay.x)
            values[lay.totals[1]] = sum(values[c] for c in lay.z if c >= 0)
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
    lower: list[float],
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
    lp.col_lower_ = np.array(lower)
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
    values, status = _highs_solve(lp, matrix, relax, time_limit_s, start_values, presolve=True)
    if status == "suspect":
        # HiGHS's presolve can hand back (postsolve) a plan other than the one it proved
        # optimal (seen on 3-type inputs: probing); solve the program as it is
        values, status = _highs_solve(lp, matrix, relax, time_limit_s, start_values, presolve=False)
        if status == "suspect":
            status = "feasible"
    return values, status


def _highs_solve(lp, matrix, relax, time_limit_s, start_values, *, presolve: bool):
    import highspy

    highs = _new_highs()
    for option, value in (
        ("output_flag", False),
        ("time_limit", float(time_limit_s)),
        ("mip_rel_gap", 1e-9),
        # restarts after root presolve cost more than they save on these small programs
        ("mip_allow_restart", False),
        # One thread per solve: on these small programs HiGHS's extra workers spin more
        # than they help (2× the time on 2 cores); the planner runs services in parallel.
        ("threads", 1),
        ("presolve", "choose" if presolve else "off"),
        # with a starting plan, the feasibility jump heuristic only costs time (2–3 ms of
        # a 10 ms solve); without one it finds the first plan
        ("mip_heuristic_run_feasibility_jump", start_values is None),
    ):
        highs.setOptionValue(option, value)
    highs.passModel(lp)
    if start_values is not None:
        start = highspy.HighsSolution()
        start.col_value = list(start_values)
        start.value_valid = True
        highs.setSolution(start)
    if highs.run() == highspy.HighsStatus.kError and highs.getModelStatus() == (
        highspy.HighsModelStatus.kNotset
    ):
        # this thread's HiGHS scheduler was started with another thread count (by other
        # code in the process): keep it
        highs.setOptionValue("threads", 0)
        highs.run()
    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kOptimal:
        values = np.array(highs.getSolution().col_value)
        if relax or _proven(lp, matrix, np.round(values), highs.getInfo().mip_dual_bound):
            return values, "optimal"
        return values, "suspect"
    if status in (
        highspy.HighsModelStatus.kInfeasible,
        highspy.HighsModelStatus.kUnboundedOrInfeasible,
    ):
        return None, "infeasible"
    if highs.getInfo().primal_solution_status == 2:  # feasible, not proven optimal
        return np.array(highs.getSolution().col_value), "feasible"
    raise RuntimeError(f"the placement solver failed: {highs.modelStatusToString(status)}")


def _proven(lp, matrix, values: np.ndarray, dual_bound: float) -> bool:
    """Does the integer plan meet every row and bound, at the cost HiGHS proved optimal?"""
    tol = 1e-6
    activity = matrix @ values
    cost = float(np.dot(lp.col_cost_, values))
    return bool(
        np.all(activity >= np.asarray(lp.row_lower_) - tol * (1 + np.abs(lp.row_lower_)))
        and np.all(activity <= np.asarray(lp.row_upper_) + tol * (1 + np.abs(lp.row_upper_)))
        and np.all(values >= -tol)
        and np.all(values <= np.asarray(lp.col_upper_) + tol)
        and cost <= dual_bound + tol * max(1.0, abs(cost))
    )


def _value(v: float, relax: bool):
    return float(v) if relax else round(v)
