"""Live re-planning: each planner-sized ModelService follows the traffic it really gets.

The operator keeps one `lmaas.placement.Replanner` per ModelService whose GPU mix the
planner chooses (gpu.mode auto). Every ``LMAAS_OPERATOR_REPLAN_INTERVAL_S`` (on the
service's resync timer, so at most once per resync interval, and never racing a resync)
it reads the workload the gateways routed to the service since the previous time (`LiveTraffic`:
request-size histograms and rate, labelled with the service), calls ``observe``, and when
that answers a new plan the service is reconciled to it (Deployments, status ``plan`` with
source ``live``, cost, replicas). The hysteresis is the Replanner's: more traffic than the
plan carries is followed at once (planned with headroom), less only once a plan at least
10% cheaper has held for ``LMAAS_OPERATOR_REPLAN_DOWN_AFTER_S``, so traffic wobbling inside
the headroom never changes the plan. A Replanner is made again (and seeded with the plan in
force) when the service's planning inputs change, or after an operator restart; unknown
traffic (no gateway answered) never re-plans. The plan is capped at
``scaling.maxReplicas`` like a planned one.

Who writes what (the rule that keeps the operator and the gateway's activator from
fighting over a Deployment's size):

- minReplicas ≥ 1: the operator owns ``spec.replicas``. A new plan sets the Deployments'
  replicas and their ``lmaas.io/planned-replicas``; the planner never goes below
  minReplicas, so such a service never reaches zero.
- minReplicas 0 (serverless): the activator owns ``spec.replicas``. A new plan changes
  only the set of Deployments (one per GPU type of the plan; new ones are created at 0)
  and their ``lmaas.io/planned-replicas``; the activator brings a running service to those
  numbers (and a new Deployment up to its size) and a cold start scales to them. Scaling
  to zero is the activator's alone (after the service's idle timeout, with nothing held or
  in flight on any gateway): when the Replanner decides on zero after
  ``scaling.idleTimeoutSeconds`` without traffic, the operator keeps the last plan with
  replicas on the Deployments, which is what the next cold start scales to.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from lmaas_operator.live_traffic import LiveTraffic, Snapshot
from lmaas_operator.planning import (
    PlanningError,
    planner_available,
    planner_gpu_types,
    planner_model,
    planner_slo,
    status_from_plan,
)
from lmaas_operator.resources import GPUTypeSpec, ModelServiceSpec, ModelSpec, PlanStatus
from lmaas_operator.settings import OperatorSettings

try:
    from lmaas import placement as _placement
except ImportError:  # pragma: no cover - depends on what is installed
    _placement = None  # type: ignore[assignment]

__all__ = ["LiveResult", "ReplanRegistry", "seed_plan"]

log = logging.getLogger(__name__)

_FORGET_AFTER_S = 3600.0


@dataclass(frozen=True)
class LiveResult:
    """What one re-planning pass found: the observed rate, and a plan to apply (or None)."""

    observed_rate: float
    plan: PlanStatus | None = None


@dataclass
class _Entry:
    inputs: str
    replanner: Any
    candidates: dict[str, GPUTypeSpec]
    snapshot: Snapshot | None = None
    ran_at: float = float("-inf")
    used_at: float = 0.0


def seed_plan(plan: PlanStatus, service: ModelServiceSpec) -> Any:
    """The planner's `Plan` for a plan in force (status), to start a Replanner from."""
    assert _placement is not None
    names = set(plan.counts) | set(plan.spot_counts)
    counts = {t: plan.counts.get(t, 0) + plan.spot_counts.get(t, 0) for t in names}
    return _placement.Plan(
        counts=counts,
        spot_counts=dict(plan.spot_counts),
        cost_per_hour=plan.cost_per_hour,
        buckets_by_type=dict(plan.buckets_by_type),
        savings_vs_best_single=plan.savings_vs_best_single,
        lp_bound=None,
        rate=plan.rate if plan.rate is not None else service.workload.rate,
    )


class ReplanRegistry:
    """The operator's Replanners, one per ModelService (key ``namespace/name``)."""

    def __init__(self, traffic: LiveTraffic, settings: OperatorSettings) -> None:
        self.traffic = traffic
        self.settings = settings
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def _entry(
        self,
        key: str,
        inputs: str,
        spec: ModelServiceSpec,
        model_name: str,
        model: ModelSpec,
        gpu_types: dict[str, GPUTypeSpec],
        in_force: PlanStatus,
    ) -> _Entry:
        now = time.monotonic()
        with self._lock:
            for stale in [k for k, e in self._entries.items() if now - e.used_at > _FORGET_AFTER_S]:
                del self._entries[stale]  # a deleted ModelService
            entry = self._entries.get(key)
            if entry is not None and entry.inputs == inputs:
                entry.used_at = now
                return entry
        assert _placement is not None
        candidates, types = planner_gpu_types(spec, gpu_types)
        replanner = _placement.Replanner(
            model=planner_model(model_name, model),
            slo=planner_slo(spec),
            gpu_types=types,
            min_replicas=spec.scaling.min_replicas,
            max_spot_share=spec.scaling.max_spot_share,
            headroom=self.settings.replan_headroom,
            down_after_s=self.settings.replan_down_after_s,
            zero_after_s=float(spec.scaling.idle_timeout_seconds),
        )
        replanner.current = seed_plan(in_force, spec)
        fresh = _Entry(inputs=inputs, replanner=replanner, candidates=candidates, used_at=now)
        with self._lock:
            self._entries[key] = fresh
        return fresh

    def due(self, key: str) -> bool:
        """Whether the service's re-planning interval has passed (or it never ran)."""
        interval = self.settings.replan_interval_s
        if interval <= 0 or not planner_available():
            return False
        entry = self._entries.get(key)
        return entry is None or time.monotonic() - entry.ran_at >= interval

    def replan(
        self,
        *,
        key: str,
        inputs: str,
        spec: ModelServiceSpec,
        model_name: str,
        model: ModelSpec,
        gpu_types: dict[str, GPUTypeSpec],
        in_force: PlanStatus,
    ) -> LiveResult | None:
        """One pass for service `key`; None when the traffic is not known yet.

        `inputs` is the hash of the planning inputs (`plan_hash`) and `in_force` the plan
        the service runs (a new Replanner starts from it).
        """
        try:
            entry = self._entry(key, inputs, spec, model_name, model, gpu_types, in_force)
        except PlanningError as exc:
            log.warning("%s: not re-planned: %s", key, exc)
            return None
        entry.ran_at = time.monotonic()
        snapshot = self.traffic.snapshot()
        if snapshot is None:
            return None  # no gateway answered: the traffic is unknown, not zero
        previous, entry.snapshot = entry.snapshot, snapshot
        if previous is None or previous is snapshot:
            return None
        workload = LiveTraffic.workload(previous, snapshot, {"service": key})
        if workload is None:
            return None
        try:
            new = entry.replanner.observe(workload)
        except ValueError as exc:  # PlacementInfeasible: keep what runs, say why
            log.warning(
                "%s: no GPU mix carries the observed %.3g req/s: %s", key, workload.rate, exc
            )
            return LiveResult(observed_rate=workload.rate)
        if new is None:
            return LiveResult(observed_rate=workload.rate)
        if sum(new.counts.values()) == 0 and spec.scaling.min_replicas == 0:
            # Serverless and idle: the activator scales it to zero; the plan with replicas
            # stays on the Deployments for the next cold start (see the module).
            log.info("%s: no traffic; leaving scale-to-zero to the gateway", key)
            return LiveResult(observed_rate=workload.rate)
        plan = status_from_plan(new, spec, entry.candidates, source="live")
        log.info(
            "%s: re-planned for %.3g req/s observed: %s ($%.2f/h)",
            key,
            workload.rate,
            plan.counts | {f"{k} (spot)": v for k, v in plan.spot_counts.items()},
            plan.cost_per_hour,
        )
        return LiveResult(observed_rate=workload.rate, plan=plan)
