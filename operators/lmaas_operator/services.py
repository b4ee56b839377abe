"""Reconciling a ModelService: plan the GPU mix, then one Deployment per GPU type.

The plan is recomputed only when its inputs change (a hash of their canonical JSON is
kept in status), or re-planned from live traffic on the resync timer (`replanning`: a
plan with source ``live`` is kept while the inputs stay the same). Deployments of GPU
types the plan dropped are deleted. A serverless service's Deployments are created at
zero replicas and their `spec.replicas` is left to the gateway's activator afterwards; the
plan's count is on the `planned-replicas` annotation.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lmaas_operator import naming as n
from lmaas_operator import service_manifests as sm
from lmaas_operator.crds import API_VERSION
from lmaas_operator.deps import Deps
from lmaas_operator.errors import InvalidSpec, NotReady
from lmaas_operator.planning import PlanningError, compute_plan, plan_hash
from lmaas_operator.replanning import LiveResult
from lmaas_operator.resources import GPUTypeSpec, ModelServiceSpec, ModelSpec, PlanStatus
from lmaas_operator.tenants import tenant_of_namespace

__all__ = ["load_gpu_types", "load_model", "reconcile_service"]


def load_model(deps: Deps, name: str) -> ModelSpec:
    body = deps.kube.get(API_VERSION, "Model", name)
    if body is None:
        raise NotReady(f"Model {name!r} does not exist yet: create it", reason="ModelMissing")
    try:
        return ModelSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise NotReady(f"Model {name!r} has an invalid spec: {exc}", reason="ModelInvalid") from exc


def load_gpu_types(deps: Deps) -> dict[str, GPUTypeSpec]:
    result = {}
    for body in deps.kube.list(API_VERSION, "GPUType"):
        try:
            result[body["metadata"]["name"]] = GPUTypeSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            continue  # its own status says why; the planner does without it
    return result


def _check_tenant_may_use(deps: Deps, tenant: str | None, model: str) -> None:
    if tenant is None:
        return
    body = deps.kube.get(API_VERSION, "Tenant", tenant)
    allowed = ((body or {}).get("spec") or {}).get("allowedModels") or []
    if allowed and model not in allowed:
        raise InvalidSpec(
            f"tenant {tenant!r} may not use model {model!r} (allowed: {', '.join(allowed)})",
            reason="ModelNotAllowed",
        )


def _price(gpu: GPUTypeSpec, spot: bool) -> float:
    price = (
        gpu.spot_price_per_hour
        if spot and gpu.spot_price_per_hour is not None
        else gpu.price_per_hour
    )
    return price * gpu.gpus_per_replica


def reconcile_service(
    deps: Deps,
    *,
    name: str,
    namespace: str,
    spec: ModelServiceSpec,
    owner: dict[str, Any],
    status: dict[str, Any],
    replan: bool = False,
) -> dict[str, Any]:
    """Bring the service's children to its plan; returns the status fields.

    `replan`: first re-plan a planner-sized service from its live traffic (when due).
    """
    kube, op = deps.kube, deps.operator
    tenant = tenant_of_namespace(deps, namespace)
    _check_tenant_may_use(deps, tenant, spec.model)
    model = load_model(deps, spec.model)
    gpu_types = load_gpu_types(deps)

    inputs_hash = plan_hash(spec, model, gpu_types)
    previous = status.get("plan")
    if previous and status.get("planHash") == inputs_hash:
        plan = PlanStatus.model_validate(previous)  # for the spec, or live (re-planned)
    else:
        try:
            plan = compute_plan(spec, spec.model, model, gpu_types)
        except PlanningError as exc:
            raise InvalidSpec(str(exc), reason="NoPlan") from exc
    traffic: LiveResult | None = None
    key = f"{namespace}/{name}"
    if replan and spec.gpu.mode == "auto" and deps.replans is not None and deps.replans.due(key):
        traffic = deps.replans.replan(
            key=key,
            inputs=inputs_hash,
            spec=spec,
            model_name=spec.model,
            model=model,
            gpu_types=gpu_types,
            in_force=plan,
        )
        if traffic is not None and traffic.plan is not None:
            plan = traffic.plan

    groups = sm.replica_groups(plan.counts, plan.spot_counts)
    missing = sorted({g.gpu_type for g in groups} - set(gpu_types))
    if missing:
        raise NotReady(f"GPUType(s) {', '.join(missing)} vanished", reason="GPUTypeMissing")
    serverless = spec.scaling.min_replicas == 0
    wanted = set()
    for group in groups:
        body = sm.deployment(
            service=name,
            namespace=namespace,
            tenant=tenant,
            spec=spec,
            model_name=spec.model,
            model=model,
            gpu=gpu_types[group.gpu_type],
            group=group,
            settings=op,
            owner=owner,
        )
        wanted.add(body["metadata"]["name"])
        kube.ensure(body, ignore=("spec.replicas",) if serverless else ())

    live = kube.list("apps/v1", "Deployment", namespace, labels={n.LABEL_MODEL_SERVICE: name})
    for deployment in live:
        if deployment["metadata"]["name"] not in wanted:
            kube.delete("apps/v1", "Deployment", deployment["metadata"]["name"], namespace)
    kube.ensure(
        sm.runtime_service(
            service=name, namespace=namespace, tenant=tenant, port=op.runtime_port, owner=owner
        )
    )
    kube.ensure(
        sm.pod_disruption_budget(service=name, namespace=namespace, tenant=tenant, owner=owner)
    )

    by_name = {d["metadata"]["name"]: d for d in live}
    replicas, total, cost = [], 0, 0.0
    for group in groups:
        dep = by_name.get(group.name(name)) or {}
        desired = (
            int((dep.get("spec") or {}).get("replicas") or 0)
            if dep
            else (0 if serverless else group.planned)
        )
        ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
        total += desired
        cost += desired * _price(gpu_types[group.gpu_type], group.spot)
        replicas.append(
            {
                "deployment": group.name(name),
                "gpuType": group.gpu_type,
                "spot": group.spot,
                "planned": group.planned,
                "desired": desired,
                "ready": ready,
            }
        )
    return {
        "plan": plan.model_dump(mode="json", by_alias=True),
        "planHash": inputs_hash,
        "replicas": replicas,
        "totalReplicas": total,
        "costPerHour": round(cost, 4),
        "endpoint": sm.service_endpoint(name, namespace, op.runtime_port),
        "serverless": serverless,
        "observedRate": (
            status.get("observedRate") if traffic is None else float(f"{traffic.observed_rate:.3g}")
        ),
    }
