"""Adapter handlers: register and place on change (spec or request-rate annotation) and on
a timer (pods come and go); unload and unregister on delete."""

from __future__ import annotations

from typing import Any

import kopf

from lmaas_operator.adapters import delete_adapter, reconcile_adapter
from lmaas_operator.crds import GROUP, VERSION
from lmaas_operator.handlers.common import RESYNC_S, parse, reconcile
from lmaas_operator.handlers.lifecycle import deps
from lmaas_operator.resources import AdapterSpec

__all__ = ["adapter_delete", "adapter_reconcile", "adapter_resync"]


def _ready(fields: dict[str, Any]) -> tuple[bool, str, str]:
    if fields["_failures"]:
        return False, "LoadFailed", "; ".join(fields["_failures"])[:1000]
    if fields["_pods"] == 0:
        return True, "NoReplicas", "no runtime replica runs: it is loaded on demand"
    return True, "Placed", f"loaded on {len(fields['loadedOn'])} of {fields['_pods']} replicas"


def _work(name: str, namespace: str, spec: Any, meta: Any, status: Any):
    parsed = parse(AdapterSpec, spec)
    return lambda: reconcile_adapter(
        deps(),
        name=name,
        namespace=namespace,
        spec=parsed,
        annotations=dict(meta.get("annotations") or {}),
        status=dict(status or {}),
    )


@kopf.on.resume(GROUP, VERSION, "adapters")
@kopf.on.create(GROUP, VERSION, "adapters")
@kopf.on.update(GROUP, VERSION, "adapters")
def adapter_reconcile(name: str, namespace: str, spec, status, meta, patch, **_: Any) -> None:
    reconcile(patch, status, meta, _work(name, namespace, spec, meta, status), ready_reason=_ready)


@kopf.timer(GROUP, VERSION, "adapters", interval=RESYNC_S, initial_delay=RESYNC_S)
def adapter_resync(name: str, namespace: str, spec, status, meta, patch, **_: Any) -> None:
    reconcile(
        patch,
        status,
        meta,
        _work(name, namespace, spec, meta, status),
        ready_reason=_ready,
        timer=True,
    )


@kopf.on.delete(GROUP, VERSION, "adapters")
def adapter_delete(name: str, namespace: str, spec, status, **_: Any) -> None:
    delete_adapter(
        deps(),
        name=name,
        namespace=namespace,
        spec=parse(AdapterSpec, spec),
        status=dict(status or {}),
    )
