"""Mélange: the cheapest mix of GPU types that serves a workload under a latency SLO.

The library parts: `catalog` (GPU types and prices), `workload` (request-size buckets),
`profiles` (T_g[b] tables, Mélange JSON import), `roofline` (a performance model that fills
unmeasured buckets), `ilp` (the integer program, HiGHS), `planner` (`plan_service`,
`plan_services`), `replan` (live re-planning with hysteresis), `metrics` (workloads from the
gateway's Prometheus metrics) and `profiler` (`lmaas profile`: measuring T_g[b] for real).
"""

from lmaas.placement.catalog import GPUType, default_catalog, load_catalog, merge_catalog
from lmaas.placement.planner import (
    PlacementInfeasible,
    Plan,
    ServiceSpec,
    plan_service,
    plan_services,
)
from lmaas.placement.profiles import ProfileSet, complete_profiles, load_profile_file
from lmaas.placement.replan import Replanner
from lmaas.placement.roofline import Efficiency, RooflineModel
from lmaas.placement.specs import SLO, ModelSpec, known_models, model_by_name
from lmaas.placement.workload import Bucket, Workload

__all__ = [
    "SLO",
    "Bucket",
    "Efficiency",
    "GPUType",
    "ModelSpec",
    "PlacementInfeasible",
    "Plan",
    "ProfileSet",
    "Replanner",
    "RooflineModel",
    "ServiceSpec",
    "Workload",
    "complete_profiles",
    "default_catalog",
    "known_models",
    "load_catalog",
    "load_profile_file",
    "merge_catalog",
    "model_by_name",
    "plan_service",
    "plan_services",
]
