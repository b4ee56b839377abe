"""The planner: the cheapest GPU mix for one service, or several jointly, under their SLOs.

`plan_service` turns a model, a workload and an SLO into T_g[b] tables (profiles, filled by
the calibrated roofline), checks what can be checked by hand — does any type hold the
model, can each bucket meet the SLO somewhere, are there enough instances for the minimum
— then solves the integer program of `lmaas.placement.ilp`. When the program itself is
infeasible it is solved again without availability limits to say which limits are short.
Every failure is a `PlacementInfeasible` naming the constraint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from lmaas.placement.catalog import GPUType, default_catalog, fits_model
from lmaas.placement.ilp import Offer, ServiceProblem, solve
from lmaas.placement.joint import solve_jointly
from lmaas.placement.profiles import ProfileSet, complete_profiles
from lmaas.placement.specs import GIB, SLO, ModelSpec
from lmaas.placement.workload import Workload

__all__ = [
    "PlacementInfeasible",
    "Plan",
    "ServiceSpec",
    "plan_service",
    "plan_services",
]

NEGLIGIBLE_RATE = 1e-9
"""Requests per second below which a bucket's traffic is taken as none."""


class PlacementInfeasible(ValueError):
    """No plan meets the constraints; `constraint` says which one cannot be met."""

    def __init__(
        self,
        message: str,
        *,
        constraint: str,
        service: str | None = None,
        bucket: str | None = None,
        gpu_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.constraint = constraint
        self.service = service
        self.bucket = bucket
        self.gpu_type = gpu_type


class Plan(BaseModel):
    """How many instances of each type to run, and which buckets each type serves.

    `counts` are all instances of a type, `spot_counts` how many of them are spot.
    `bucket_slices[bucket][type]` = slices (of `slice_factor`) of the bucket's traffic the
    type carries: route that fraction of the bucket's requests to it.
    """

    counts: dict[str, int]
    spot_counts: dict[str, int]
    cost_per_hour: float
    buckets_by_type: dict[str, list[str]]
    savings_vs_best_single: float | None
    lp_bound: float | None
    bucket_slices: dict[str, dict[str, int]] = Field(default_factory=dict)
    cost_by_type: dict[str, float] = Field(default_factory=dict)
    slice_factor: int = 1
    single_type_costs: dict[str, float | None] = Field(default_factory=dict)
    rate: float = 0.0
    optimal: bool = True
    solve_ms: float = 0.0

    @property
    def num_instances(self) -> int:
        return sum(self.counts.values())


class ServiceSpec(BaseModel):
    """One service of a joint plan (the arguments of `plan_service`, with a name)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    model: ModelSpec | None = None
    workload: Workload
    slo: SLO | None = None
    profiles: ProfileSet | None = None
    min_replicas: int = Field(default=0, ge=0)
    max_spot_share: float = Field(default=0.0, ge=0.0, le=1.0)
    slice_factor: int = Field(default=4, ge=1)


def plan_service(
    *,
    model: ModelSpec | None,
    workload: Workload,
    slo: SLO | None,
    gpu_types: Sequence[GPUType] | None = None,
    profiles: ProfileSet | None = None,
    min_replicas: int = 0,
    max_spot_share: float = 0.0,
    slice_factor: int = 4,
) -> Plan:
    """The cheapest mix of `gpu_types` (default: the default catalog) serving `workload`.

    `model` None or `slo` None: `profiles` must then give every T_g[b] (e.g. an imported
    Mélange file). Raises `PlacementInfeasible` naming the constraint that cannot be met.
    """
    spec = ServiceSpec(
        name="",
        model=model,
        workload=workload,
        slo=slo,
        profiles=profiles,
        min_replicas=min_replicas,
        max_spot_share=max_spot_share,
        slice_factor=slice_factor,
    )
    return plan_services([spec], gpu_types)[""]


def plan_services(
    services: Sequence[ServiceSpec], gpu_types: Sequence[GPUType] | None = None
) -> dict[str, Plan]:
    """Plan several services at once: they share the types' availability limits."""
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ValueError(f"service names repeat: {names}")
    catalog = [g.with_defaults() for g in (gpu_types or default_catalog())]
    if len({g.name for g in catalog}) != len(catalog):
        raise ValueError("GPU type names repeat in the catalog")
    offers = [Offer(g.name, g.price_per_hour, g.spot_price_per_hour, g.max_count) for g in catalog]
    problems = [_problem(svc, catalog) for svc in services]
    for svc in services:
        _check_min_replicas(svc, offers)
    solution = solve_jointly(problems, offers)
    if solution is None:
        raise _explain_infeasible(services, problems, offers)
    plans = {}
    for svc, problem in zip(services, problems, strict=True):
        part = solution.services[svc.name]
        relaxed = solve([problem], offers, relax=True)
        single = _single_type_costs(svc, problem, offers)
        feasible = [c for c in single.values() if c is not None]
        cost = round(part.cost, 6)
        savings = None
        if feasible:
            best = min(feasible)
            savings = 0.0 if best <= 0 else round((best - cost) / best, 6)
        counts = {o.name: part.on_demand[o.name] + part.spot[o.name] for o in offers}
        plans[svc.name] = Plan(
            counts=counts,
            spot_counts=dict(part.spot),
            cost_per_hour=cost,
            buckets_by_type=_routing(problem, part.slices, counts, offers),
            savings_vs_best_single=savings,
            lp_bound=round(relaxed.cost, 6) if relaxed is not None else None,
            bucket_slices=part.slices,
            cost_by_type={
                o.name: round(
                    part.on_demand[o.name] * o.price + part.spot[o.name] * (o.spot_price or 0.0), 6
                )
                for o in offers
                if counts[o.name]
            },
            slice_factor=svc.slice_factor,
            single_type_costs=single,
            rate=svc.workload.rate,
            optimal=solution.optimal,
            solve_ms=round(solution.solve_ms, 3),
        )
    return plans


def _problem(svc: ServiceSpec, catalog: Sequence[GPUType]) -> ServiceProblem:
    """The T_g[b] table of a service over the whole catalog (0 where a type cannot serve)."""
    fitting = [g for g in catalog if fits_model(g, svc.model)]
    if not fitting and svc.model is not None:
        largest = max(catalog, key=lambda g: g.memory_gib or 0)
        raise PlacementInfeasible(
            f"{_who(svc)}no GPU type can hold {svc.model.name} "
            f"({svc.model.weight_bytes / GIB:.1f} GiB of weights plus KV cache); the largest, "
            f"{largest.name}, has {largest.memory_gib} GiB: add a bigger type or quantize",
            constraint="memory",
            service=svc.name,
            gpu_type=largest.name,
        )
    buckets = svc.workload.buckets
    slo = svc.slo or (svc.profiles.slo if svc.profiles else None)
    if slo is None and svc.model is not None:
        raise ValueError(f"{_who(svc)}an SLO is needed to model {svc.model.name}'s throughput")
    if slo is None:
        table = svc.profiles or ProfileSet()
    else:
        table = complete_profiles(
            model=svc.model, gpu_types=fitting, buckets=buckets, slo=slo, profiles=svc.profiles
        )
    fit_names = {g.name for g in fitting}
    throughput = [
        [(table.get(g.name, b.name) or 0.0) if g.name in fit_names else 0.0 for b in buckets]
        for g in catalog
    ]
    # A bucket under one request in ~30 years is no load: left in, its coefficients (down to
    # 1e-38 for a share that is denormal in practice) upset the solver's tolerances.
    rates = [r if (r := svc.workload.rate * b.share) >= NEGLIGIBLE_RATE else 0.0 for b in buckets]
    for j, bucket in enumerate(buckets):
        if rates[j] > 0 and all(row[j] <= 0 for row in throughput):
            what = slo.describe() if slo else "the profiled SLO"
            unknown = [g.name for g in fitting if table.get(g.name, bucket.name) is None]
            hint = (
                f" ({', '.join(unknown)}: no profile for it and no hardware figures to model it)"
                if unknown
                else ""
            )
            raise PlacementInfeasible(
                f"{_who(svc)}bucket {bucket.name} ({rates[j]:.3g} req/s) cannot meet "
                f"{what} on any GPU type ({', '.join(g.name for g in catalog)}){hint}: relax "
                "the SLO, add a faster type, or profile this bucket",
                constraint="slo",
                service=svc.name,
                bucket=bucket.name,
            )
    return ServiceProblem(
        name=svc.name,
        buckets=[b.name for b in buckets],
        rates=rates,
        throughput=throughput,
        slice_factor=svc.slice_factor,
        min_replicas=svc.min_replicas,
        max_spot_share=svc.max_spot_share,
    )


def _who(svc: ServiceSpec) -> str:
    return f"service {svc.name}: " if svc.name else ""


def _check_min_replicas(svc: ServiceSpec, offers: Sequence[Offer]) -> None:
    if svc.min_replicas and all(o.max_count is not None for o in offers):
        available = sum(o.max_count or 0 for o in offers)
        if available < svc.min_replicas:
            raise PlacementInfeasible(
                f"{_who(svc)}min_replicas={svc.min_replicas} but the availability "
                f"limits allow {available} instances in all "
                f"({', '.join(f'{o.name} ≤ {o.max_count}' for o in offers)})",
                constraint="min_replicas",
                service=svc.name,
            )


def _explain_infeasible(
    services: Sequence[ServiceSpec],
    problems: Sequence[ServiceProblem],
    offers: Sequence[Offer],
) -> PlacementInfeasible:
    unlimited = [Offer(o.name, o.price, o.spot_price, None) for o in offers]
    relaxed = solve(problems, unlimited)
    names = ", ".join(s.name for s in services if s.name) or "this service"
    if relaxed is None:
        return PlacementInfeasible(
            f"no plan serves {names}, even without availability limits", constraint="unknown"
        )
    needs = {
        o.name: sum(p.on_demand[o.name] + p.spot[o.name] for p in relaxed.services.values())
        for o in offers
    }
    short = [o for o in offers if o.max_count is not None and needs[o.name] > o.max_count]
    wanted = ", ".join(f"{o.name}: {needs[o.name]} (limit {o.max_count})" for o in short)
    limits = ", ".join(f"{o.name} ≤ {o.max_count}" for o in offers if o.max_count is not None)
    return PlacementInfeasible(
        f"the availability limits ({limits}) cannot carry the load of {names}: the cheapest "
        f"plan without limits needs {wanted or 'more instances'}; raise those limits, add "
        "GPU types, or relax the SLO",
        constraint="availability",
        service=services[0].name if len(services) == 1 else None,
        gpu_type=short[0].name if short else None,
    )


def _single_type_costs(
    svc: ServiceSpec, problem: ServiceProblem, offers: Sequence[Offer]
) -> dict[str, float | None]:
    """Cost of serving everything on one type alone (None: that type cannot)."""
    costs: dict[str, float | None] = {}
    for g, offer in enumerate(offers):
        load = 0.0
        for b, rate in enumerate(problem.rates):
            if rate <= 0:
                continue
            t = problem.throughput[g][b]
            if t <= 0:
                load = math.inf
                break
            load += rate / t
        if math.isinf(load):
            costs[offer.name] = None
            continue
        count = max(math.ceil(load - 1e-9), svc.min_replicas)
        if offer.max_count is not None and count > offer.max_count:
            costs[offer.name] = None
            continue
        spot = 0
        if offer.spot_price is not None and svc.max_spot_share > 0:
            spot = math.floor(svc.max_spot_share * count + 1e-9)
        spot_price = offer.spot_price or 0.0
        costs[offer.name] = round((count - spot) * offer.price + spot * spot_price, 6)
    return costs


def _routing(
    problem: ServiceProblem,
    slices: dict[str, dict[str, int]],
    counts: dict[str, int],
    offers: Sequence[Offer],
) -> dict[str, list[str]]:
    """Type → buckets it serves; a bucket with no traffic goes to the cheapest type running."""
    routing: dict[str, list[str]] = {o.name: [] for o in offers if counts[o.name] > 0}
    for b, name in enumerate(problem.buckets):
        if name in slices:
            for gpu in slices[name]:
                routing.setdefault(gpu, []).append(name)
            continue
        best, best_cost = None, math.inf
        for g, offer in enumerate(offers):
            t = problem.throughput[g][b]
            if counts[offer.name] > 0 and t > 0 and offer.price / t < best_cost:
                best, best_cost = offer.name, offer.price / t
        if best is not None:
            routing[best].append(name)
    return routing
