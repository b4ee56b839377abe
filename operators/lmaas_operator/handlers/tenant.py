"""Tenant handlers: reconcile on create/update/resume and on a timer; clean up on delete."""

from __future__ import annotations

from typing import Any

import kopf

from lmaas_operator.crds import GROUP, VERSION
from lmaas_operator.handlers.common import RESYNC_S, parse, reconcile
from lmaas_operator.handlers.lifecycle import deps
from lmaas_operator.resources import TenantSpec
from lmaas_operator.tenant_manifests import owner_reference
from lmaas_operator.tenants import delete_tenant, reconcile_tenant

__all__ = ["tenant_delete", "tenant_reconcile", "tenant_resync"]


def _work(name: str, spec: Any, body: Any):
    parsed = parse(TenantSpec, spec)
    return lambda: reconcile_tenant(deps(), name=name, spec=parsed, owner=owner_reference(body))


@kopf.on.resume(GROUP, VERSION, "tenants")
@kopf.on.create(GROUP, VERSION, "tenants")
@kopf.on.update(GROUP, VERSION, "tenants")
def tenant_reconcile(name: str, spec, body, status, meta, patch, **_: Any) -> None:
    reconcile(patch, status, meta, _work(name, spec, body))


@kopf.timer(GROUP, VERSION, "tenants", interval=RESYNC_S, initial_delay=RESYNC_S)
def tenant_resync(name: str, spec, body, status, meta, patch, **_: Any) -> None:
    reconcile(patch, status, meta, _work(name, spec, body), timer=True)


@kopf.on.delete(GROUP, VERSION, "tenants")
def tenant_delete(name: str, spec, **_: Any) -> None:
    delete_tenant(deps(), name=name, spec=parse(TenantSpec, spec))
