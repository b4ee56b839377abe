"""Several services planned at once: alone in parallel first, jointly only where needed.

The joint program of `lmaas.placement.ilp` couples services only through the shared
availability limits. So each service is solved alone (on the calling thread and kept worker
threads: HiGHS frees the GIL), and when those plans fit the limits together they are the
joint optimum. Otherwise the services whose plans use a limited type are solved together,
with what the separate solves proved (lower bounds) and a starting plan that fits.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from lmaas.placement.ilp import (
    Offer,
    ServiceProblem,
    ServiceSolution,
    Solution,
    greedy_plan,
    single_type_plan,
    solve,
)

__all__ = ["solve_jointly"]


def solve_jointly(problems: Sequence[ServiceProblem], offers: Sequence[Offer]) -> Solution | None:
    """The joint optimum. Each service is solved alone first (in parallel threads: HiGHS
    frees the GIL); when their plans fit the shared limits together that is exact, since
    the joint program only adds those limits. Otherwise the joint program over the services
    whose plans alone use a limited type — one that uses none keeps its plan alone (it is
    no dearer than its share of any joint plan, and leaves the others more room) — told
    what the separate solves proved (each service's cost alone bounds its cost in the joint
    plan from below) and started from the cheapest combination of known plans that fits."""
    if len(problems) == 1:
        return solve(problems, offers)
    began = time.perf_counter()
    alone = _solve_each(problems, offers)
    if any(a is None for a in alone):
        return None
    parts = [a for a in alone if a is not None]
    plans = [a.services[p.name] for a, p in zip(parts, problems, strict=True)]
    if not _fits(plans, offers):
        limited = [o.name for o in offers if o.max_count is not None]
        joint = [
            i
            for i, (a, plan) in enumerate(zip(parts, plans, strict=True))
            if not a.optimal or any(plan.on_demand[g] + plan.spot[g] for g in limited)
        ]
        chosen = [problems[i] for i in joint]
        together = solve(
            chosen,
            offers,
            lower_bounds=[parts[i].cost if parts[i].optimal else None for i in joint],
            start=_cheapest_fitting_combination(chosen, [plans[i] for i in joint], offers),
        )
        if together is None:
            return None
        for i, problem in zip(joint, chosen, strict=True):
            plans[i] = together.services[problem.name]
            parts[i] = together
    return Solution(
        services={p.name: plan for p, plan in zip(problems, plans, strict=True)},
        cost=sum(plan.cost for plan in plans),
        optimal=all(a.optimal for a in parts),
        solve_ms=(time.perf_counter() - began) * 1e3,
    )


def _solve_each(problems: Sequence[ServiceProblem], offers: Sequence[Offer]) -> list:
    """Each service alone: the biggest programs first, one here and the rest on the worker
    threads (HiGHS frees the GIL), so that the two finish about together."""
    order = sorted(range(len(problems)), key=lambda i: -_size(problems[i]))
    pool = _pool()
    futures = {i: pool.submit(solve, [problems[i]], offers) for i in order[1:]}
    alone = {order[0]: solve([problems[order[0]]], offers)}
    alone.update({i: f.result() for i, f in futures.items()})
    return [alone[i] for i in range(len(problems))]


def _size(problem: ServiceProblem) -> int:
    """The number of slice columns: a rough measure of a program's solve time."""
    active = [b for b, r in enumerate(problem.rates) if r > 0]
    return sum(1 for row in problem.throughput for b in active if row[b] > 0)


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Worker threads kept for the process (a new thread costs each HiGHS solve ~4 ms to set
    up its scheduler); made again in a forked child, where the parent's threads are gone."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            workers = max(1, (os.cpu_count() or 1) - 1)
            _POOL = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="placement"))
        return _POOL[1]


def _fits(plans: Sequence[ServiceSolution], offers: Sequence[Offer]) -> bool:
    return all(
        o.max_count is None
        or sum(p.on_demand[o.name] + p.spot[o.name] for p in plans) <= o.max_count
        for o in offers
    )


def _cheapest_fitting_combination(
    problems: Sequence[ServiceProblem],
    alone: Sequence[ServiceSolution],
    offers: Sequence[Offer],
    max_nodes: int = 20_000,
) -> list[ServiceSolution] | None:
    """One plan per service — its plan alone, its greedy plan, or one type alone — that
    together fit the limits, the cheapest found (a depth-first search, cut off after
    `max_nodes`); None when none fits."""
    options = []
    for problem, own in zip(problems, alone, strict=True):
        known = [own, greedy_plan(problem, offers)]
        known += [single_type_plan(problem, offers, g) for g in range(len(offers))]
        options.append(sorted((k for k in known if k is not None), key=lambda k: k.cost))
    limited = [g for g, o in enumerate(offers) if o.max_count is not None]
    usage = [
        [[k.on_demand[offers[g].name] + k.spot[offers[g].name] for g in limited] for k in opts]
        for opts in options
    ]
    cheapest_rest = [sum(opts[0].cost for opts in options[i:]) for i in range(len(options) + 1)]
    best: list[ServiceSolution] | None = None
    best_cost = math.inf
    chosen: list[int] = []
    left = [offers[g].max_count or 0 for g in limited]
    nodes = 0

    def search(i: int, cost: float) -> None:
        nonlocal best, best_cost, nodes
        if i == len(options):
            best, best_cost = [options[s][k] for s, k in enumerate(chosen)], cost
            return
        for k, option in enumerate(options[i]):
            nodes += 1
            if nodes > max_nodes or cost + option.cost + cheapest_rest[i + 1] >= best_cost:
                return  # options are sorted by cost: the rest are no better
            need = usage[i][k]
            if any(n > room for n, room in zip(need, left, strict=True)):
                continue
            for j, n in enumerate(need):
                left[j] -= n
            chosen.append(k)
            search(i + 1, cost + option.cost)
            chosen.pop()
            for j, n in enumerate(need):
                left[j] += n

    search(0, 0.0)
    return best
