"""Live re-planning: follow the observed traffic without flapping.

The operator keeps one `Replanner` per service and feeds it the workload it observed over
the last window (the gateway's request-size histogram and rate). `observe` answers a new
`Plan` when the instance counts should change, None to keep the current one:

- up at once: when the current instances can no longer carry the observed traffic (the
  integer program with the current counts as limits is infeasible), re-plan for the
  observed rate plus `headroom`;
- down slowly: only when the observed rate plus headroom is below what the current plan
  was made for, and a plan for it is at least `down_threshold` cheaper, and has been for
  `down_after_s` seconds without a break;
- to zero: after `zero_after_s` seconds with no traffic (to `min_replicas` if set).

Traffic that wobbles inside the headroom therefore never changes the plan.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from lmaas.placement.catalog import GPUType, default_catalog
from lmaas.placement.planner import PlacementInfeasible, Plan, plan_service
from lmaas.placement.profiles import ProfileSet
from lmaas.placement.specs import SLO, ModelSpec
from lmaas.placement.workload import Workload

__all__ = ["Replanner"]


class Replanner:
    """Re-plans one service from observed workloads, with hysteresis."""

    def __init__(
        self,
        *,
        model: ModelSpec | None,
        slo: SLO | None,
        gpu_types: Sequence[GPUType] | None = None,
        profiles: ProfileSet | None = None,
        min_replicas: int = 0,
        max_spot_share: float = 0.0,
        slice_factor: int = 4,
        headroom: float = 0.15,
        down_threshold: float = 0.1,
        down_after_s: float = 300.0,
        zero_after_s: float = 300.0,
    ) -> None:
        if headroom < 0 or not 0 <= down_threshold < 1:
            raise ValueError("headroom must be ≥ 0 and down_threshold in [0, 1)")
        self.model = model
        self.slo = slo
        self.gpu_types = list(gpu_types or default_catalog())
        self.profiles = profiles
        self.min_replicas = min_replicas
        self.max_spot_share = max_spot_share
        self.slice_factor = slice_factor
        self.headroom = headroom
        self.down_threshold = down_threshold
        self.down_after_s = down_after_s
        self.zero_after_s = zero_after_s
        self.current: Plan | None = None
        self._cheaper_since: float | None = None
        self._idle_since: float | None = None
        self._planned: Workload | None = None

    def observe(self, workload: Workload, now: float | None = None) -> Plan | None:
        """A new plan when the counts should change; None = keep `current`."""
        now = time.monotonic() if now is None else now
        if workload.rate <= 0:
            self._cheaper_since = None
            if self._idle_since is None:
                self._idle_since = now
            if self.current is not None and now - self._idle_since < self.zero_after_s:
                return None
            return self._adopt(self.plan(workload), workload)
        self._idle_since = None
        target = workload.scaled(workload.rate * (1 + self.headroom))
        if self.current is None or not self.fits(self.current, workload):
            self._cheaper_since = None
            return self._adopt(self.plan(target), target)
        if target.rate >= self.current.rate:  # not less traffic than planned for: keep
            self._cheaper_since = None
            return None
        candidate = self.plan(target)
        if candidate.cost_per_hour > self.current.cost_per_hour * (1 - self.down_threshold):
            self._cheaper_since = None
            return None
        if self._cheaper_since is None:
            self._cheaper_since = now
        if now - self._cheaper_since < self.down_after_s:
            return None
        self._cheaper_since = None
        return self._adopt(candidate, target)

    def plan(self, workload: Workload) -> Plan:
        return plan_service(
            model=self.model,
            workload=workload,
            slo=self.slo,
            gpu_types=self.gpu_types,
            profiles=self.profiles,
            min_replicas=self.min_replicas,
            max_spot_share=self.max_spot_share,
            slice_factor=self.slice_factor,
        )

    def fits(self, plan: Plan, workload: Workload) -> bool:
        """Whether `plan`'s instances can carry `workload` within the SLO."""
        if plan is self.current and self._planned is not None:
            planned = self._planned.bucket_rates()
            observed = workload.bucket_rates()
            if all(rate <= planned.get(name, -1.0) for name, rate in observed.items()):
                return True  # no bucket busier than planned for: the same routing carries it
        limited = [
            g.model_copy(update={"max_count": plan.counts.get(g.name, 0)}) for g in self.gpu_types
        ]
        try:
            plan_service(
                model=self.model,
                workload=workload,
                slo=self.slo,
                gpu_types=limited,
                profiles=self.profiles,
                slice_factor=self.slice_factor,
            )
        except PlacementInfeasible:
            return False
        return True

    def _adopt(self, plan: Plan, planned_for: Workload) -> Plan | None:
        if (
            self.current is not None
            and plan.counts == self.current.counts
            and plan.spot_counts == self.current.spot_counts
        ):
            return None
        self.current = plan
        self._planned = planned_for
        return plan
