"""The operator's only door to the Mélange planner (`lmaas.placement`).

Turns a ModelService, its Model and the GPUTypes into the planner's inputs, calls
`plan_service`, and returns the plan in the shape the ModelService status shows. An
explicit GPU choice bypasses the planner (and is priced here). Live re-planning
(`lmaas_operator.replanning`) builds its `Replanner` from the same inputs.
"""

from __future__ import annotations

from typing import Any

from lmaas_operator.naming import canonical_hash
from lmaas_operator.resources import GPUTypeSpec, ModelServiceSpec, ModelSpec, PlanStatus

try:  # the planner is a library part written alongside; the operator works without it
    from lmaas import placement as _placement
except ImportError:  # pragma: no cover - depends on what is installed
    _placement = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_BUCKET",
    "PlanningError",
    "compute_plan",
    "plan_hash",
    "planner_available",
    "planner_gpu_types",
    "planner_model",
    "planner_slo",
    "status_from_plan",
]

DEFAULT_BUCKET = {"input_tokens": (1, 512), "output_tokens": (1, 256), "share": 1.0}


class PlanningError(Exception):
    """No plan can be made from these inputs (e.g. no GPU meets the SLO): fix the spec."""


def planner_available() -> bool:
    return _placement is not None and hasattr(_placement, "plan_service")


def plan_hash(
    service: ModelServiceSpec, model: ModelSpec, gpu_types: dict[str, GPUTypeSpec]
) -> str:
    """Hash of everything the plan depends on: unchanged inputs → the same plan."""
    return canonical_hash(
        {
            "service": service.model_dump(
                mode="json", include={"slo", "workload", "scaling", "gpu"}
            ),
            "model": model.model_dump(mode="json"),
            "gpus": {k: v.model_dump(mode="json") for k, v in sorted(gpu_types.items())},
        }
    )


def _candidates(service: ModelServiceSpec, gpu_types: dict[str, GPUTypeSpec]):
    if not service.gpu.types:
        return dict(gpu_types)
    missing = sorted(set(service.gpu.types) - set(gpu_types))
    if missing:
        raise PlanningError(f"GPUType(s) {', '.join(missing)} do not exist: create them first")
    return {k: gpu_types[k] for k in service.gpu.types}


def _explicit(service: ModelServiceSpec, gpu_types: dict[str, GPUTypeSpec]) -> PlanStatus:
    counts = {k: v for k, v in service.gpu.counts.items() if v > 0}
    if not counts:
        raise PlanningError("gpu.mode is explicit but gpu.counts names no replicas")
    missing = sorted(set(counts) - set(gpu_types))
    if missing:
        raise PlanningError(f"GPUType(s) {', '.join(missing)} do not exist: create them first")
    cost = sum(
        c * gpu_types[t].gpus_per_replica * gpu_types[t].price_per_hour for t, c in counts.items()
    )
    return PlanStatus(counts=counts, cost_per_hour=round(cost, 4), source="explicit")


def _cap(
    plan: PlanStatus, max_replicas: int | None, gpu_types: dict[str, GPUTypeSpec]
) -> PlanStatus:
    """Trim the largest groups until the total fits `max_replicas` (and re-price)."""
    total = sum(plan.counts.values()) + sum(plan.spot_counts.values())
    if max_replicas is None or total <= max_replicas:
        return plan
    groups: dict[tuple[str, bool], int] = {(t, False): c for t, c in plan.counts.items()}
    groups |= {(t, True): c for t, c in plan.spot_counts.items()}
    while sum(groups.values()) > max_replicas:
        key = max(groups, key=lambda k: (groups[k], k))
        groups[key] -= 1
    plan.counts = {t: c for (t, s), c in groups.items() if not s and c > 0}
    plan.spot_counts = {t: c for (t, s), c in groups.items() if s and c > 0}

    def price(name: str, spot: bool) -> float:
        gpu = gpu_types[name]
        each = (
            gpu.spot_price_per_hour
            if spot and gpu.spot_price_per_hour is not None
            else gpu.price_per_hour
        )
        return each * gpu.gpus_per_replica

    plan.cost_per_hour = round(
        sum(c * price(t, False) for t, c in plan.counts.items())
        + sum(c * price(t, True) for t, c in plan.spot_counts.items()),
        4,
    )
    return plan


def _planner_gpu(name: str, spec: GPUTypeSpec) -> Any:
    assert _placement is not None
    n = spec.gpus_per_replica
    return _placement.GPUType(
        name=name,
        memory_gib=spec.memory_gib * n,
        price_per_hour=spec.price_per_hour * n,
        spot_price_per_hour=None
        if spec.spot_price_per_hour is None
        else spec.spot_price_per_hour * n,
        max_count=spec.max_count,
        bf16_tflops=spec.bf16_tflops * n,
        mem_bandwidth_gbps=spec.mem_bandwidth_gbps * n,
    )


def planner_model(model_name: str, model: ModelSpec) -> Any:
    """The planner's description of a Model."""
    assert _placement is not None
    return _placement.ModelSpec(
        name=model_name,
        num_params=model.num_params,
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_kv_heads=model.num_kv_heads,
        head_dim=model.head_dim,
        bytes_per_param=model.bytes_per_param,
    )


def planner_slo(service: ModelServiceSpec) -> Any:
    assert _placement is not None
    return _placement.SLO(
        metric=service.slo.metric, statistic=service.slo.statistic, target_ms=service.slo.target_ms
    )


def planner_gpu_types(
    service: ModelServiceSpec, gpu_types: dict[str, GPUTypeSpec]
) -> tuple[dict[str, GPUTypeSpec], list[Any]]:
    """The GPUTypes the service may use, and the same as the planner's GPU types."""
    candidates = _candidates(service, gpu_types)
    if not candidates:
        raise PlanningError("no GPUType exists: create at least one GPUType")
    return candidates, [_planner_gpu(k, v) for k, v in sorted(candidates.items())]


def status_from_plan(
    plan: Any,
    service: ModelServiceSpec,
    candidates: dict[str, GPUTypeSpec],
    *,
    source: str = "planner",
) -> PlanStatus:
    """A planner `Plan` in the shape of the status (on-demand and spot apart), capped at
    ``scaling.maxReplicas``."""
    # The planner's `counts` are all replicas of a type; `spot_counts` the spot part.
    spot = {k: int(v) for k, v in (plan.spot_counts or {}).items() if v > 0}
    on_demand = {k: int(v) - spot.get(k, 0) for k, v in plan.counts.items()}
    result = PlanStatus(
        counts={k: v for k, v in on_demand.items() if v > 0},
        spot_counts=spot,
        cost_per_hour=round(float(plan.cost_per_hour), 4),
        buckets_by_type={k: list(v) for k, v in (plan.buckets_by_type or {}).items()},
        savings_vs_best_single=(
            None if plan.savings_vs_best_single is None else float(plan.savings_vs_best_single)
        ),
        source=source,
        rate=round(float(plan.rate), 6),
    )
    return _cap(result, service.scaling.max_replicas, candidates)


def compute_plan(
    service: ModelServiceSpec,
    model_name: str,
    model: ModelSpec,
    gpu_types: dict[str, GPUTypeSpec],
) -> PlanStatus:
    """The GPU mix for `service`: explicit counts, or the planner's cheapest mix."""
    if service.gpu.mode == "explicit":
        return _cap(_explicit(service, gpu_types), service.scaling.max_replicas, gpu_types)
    if not planner_available():
        raise PlanningError(
            "the GPU planner (lmaas.placement) is not installed: set gpu.mode explicit "
            "with gpu.counts, or install lmaas with the operator extra"
        )
    candidates, types = planner_gpu_types(service, gpu_types)
    p = _placement
    assert p is not None
    try:
        buckets = [
            p.Bucket(
                input_tokens=tuple(b.input_tokens),
                output_tokens=tuple(b.output_tokens),
                share=b.share,
            )
            for b in service.workload.buckets
        ] or [p.Bucket(**DEFAULT_BUCKET)]
        plan = p.plan_service(
            model=planner_model(model_name, model),
            workload=p.Workload(rate=service.workload.rate, buckets=buckets),
            slo=planner_slo(service),
            gpu_types=types,
            min_replicas=service.scaling.min_replicas,
            max_spot_share=service.scaling.max_spot_share,
        )
    except (ValueError, RuntimeError) as exc:  # PlacementInfeasible and bad inputs
        raise PlanningError(f"the planner found no GPU mix: {exc}") from exc
    return status_from_plan(plan, service, candidates)
