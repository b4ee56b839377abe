"""ModelService handlers: plan and reconcile on change; on a timer, re-plan from live
traffic when due (`lmaas_operator.replanning`) and reconcile (drift, GPU changes). One
timer does both, so a re-plan and a resync never race on the same service."""

from __future__ import annotations

from typing import Any

import kopf

from lmaas_operator.crds import GROUP, VERSION
from lmaas_operator.handlers.common import RESYNC_S, parse, reconcile
from lmaas_operator.handlers.lifecycle import deps
from lmaas_operator.resources import ModelServiceSpec
from lmaas_operator.services import reconcile_service
from lmaas_operator.tenant_manifests import owner_reference

__all__ = ["service_reconcile", "service_resync"]


def _ready(fields: dict[str, Any]) -> tuple[bool, str, str]:
    if fields["serverless"] and fields["totalReplicas"] == 0:
        return True, "ScaledToZero", "serverless: the gateway scales it up on the first request"
    ready = sum(r["ready"] for r in fields["replicas"])
    return True, "Reconciled", f"{ready}/{fields['totalReplicas']} replicas ready"


def _work(name: str, namespace: str, spec: Any, body: Any, status: Any, *, replan: bool = False):
    parsed = parse(ModelServiceSpec, spec)
    return lambda: reconcile_service(
        deps(),
        name=name,
        namespace=namespace,
        spec=parsed,
        owner=owner_reference(body),
        status=dict(status or {}),
        replan=replan,
    )


@kopf.on.resume(GROUP, VERSION, "modelservices")
@kopf.on.create(GROUP, VERSION, "modelservices")
@kopf.on.update(GROUP, VERSION, "modelservices")
def service_reconcile(name: str, namespace: str, spec, body, status, meta, patch, **_: Any) -> None:
    reconcile(patch, status, meta, _work(name, namespace, spec, body, status), ready_reason=_ready)


@kopf.timer(GROUP, VERSION, "modelservices", interval=RESYNC_S, initial_delay=RESYNC_S)
def service_resync(name: str, namespace: str, spec, body, status, meta, patch, **_: Any) -> None:
    reconcile(
        patch,
        status,
        meta,
        _work(name, namespace, spec, body, status, replan=True),
        ready_reason=_ready,
        timer=True,
    )
