"""Mélange: the cheapest mix of GPU types that serves a workload under a latency SLO.

The library parts: `catalog` (GPU types and prices), `workload` (request-size buckets),
`profiles` (T_g[b] tables, Mélange JSON import), `roofline` (a performance model that fills
unmeasured buckets), `ilp` (the integer program, HiGHS), `joint` (several services: alone
in parallel, jointly where shared limits bind), `planner` (`plan_service`,
`plan_services`), `replan` (live re-planning with hysteresis), `metrics` (workloads from the
gateway's Prometheus metrics) and `profiler` (`lmaas profile`: measuring T_g[b] for real).

The names below are imported on first use, so that `lmaas --help` does not load numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_EXPORTS = {
    "GPUType": "catalog",
    "default_catalog": "catalog",
    "load_catalog": "catalog",
    "merge_catalog": "catalog",
    "PlacementInfeasible": "planner",
    "Plan": "planner",
    "ServiceSpec": "planner",
    "plan_service": "planner",
    "plan_services": "planner",
    "ProfileSet": "profiles",
    "complete_profiles": "profiles",
    "load_profile_file": "profiles",
    "Replanner": "replan",
    "Efficiency": "roofline",
    "RooflineModel": "roofline",
    "SLO": "specs",
    "ModelSpec": "specs",
    "known_models": "specs",
    "model_by_name": "specs",
    "Bucket": "workload",
    "Workload": "workload",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmaas.placement' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmaas.placement.{module}"), name)
    globals()[name] = value
    return value
