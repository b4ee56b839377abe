"""Reconciling a Tenant: its namespace and guard rails, its database row and first API key.

The key is made crash-safe by writing the Secret first and registering its hash second:
a retry finds the Secret and registers the same key, so a tenant never gets a second
key from the operator and no key exists that nobody holds.
"""

from __future__ import annotations

import base64
from typing import Any

from lmaas_operator import naming as n
from lmaas_operator import platform_db
from lmaas_operator import tenant_manifests as tm
from lmaas_operator.deps import Deps
from lmaas_operator.errors import InvalidSpec
from lmaas_operator.kube import AlreadyExists
from lmaas_operator.resources import TenantSpec

__all__ = ["delete_tenant", "reconcile_tenant", "tenant_of_namespace"]


def _check_namespace(deps: Deps, tenant: str, namespace: str) -> None:
    live = deps.kube.get("v1", "Namespace", namespace)
    if live is None:
        return
    owner = (live["metadata"].get("labels") or {}).get(n.LABEL_TENANT)
    if owner != tenant:
        whose = f"tenant {owner!r}" if owner else "no lmaas tenant (it existed before)"
        raise InvalidSpec(
            f"namespace {namespace!r} belongs to {whose}: set spec.namespace to a free name",
            reason="NamespaceTaken",
        )


def _read_key(secret: dict[str, Any]) -> str | None:
    data = secret.get("data") or {}
    if "api-key" in data:
        return base64.b64decode(data["api-key"]).decode()
    return (secret.get("stringData") or {}).get("api-key")


def reconcile_tenant(deps: Deps, *, name: str, spec: TenantSpec, owner: dict[str, Any]):
    """Bring the tenant's objects and rows to the spec; returns the status fields."""
    namespace = n.tenant_namespace(name, spec.namespace)
    if len(namespace) > 63:
        raise InvalidSpec(f"namespace {namespace!r} is longer than 63 characters")
    _check_namespace(deps, name, namespace)
    kube = deps.kube
    kube.ensure(tm.tenant_namespace_manifest(name, namespace, owner))
    tenant_id = platform_db.ensure_tenant(deps.db, name, spec, deps.settings)
    kube.ensure(tm.service_account(name, namespace, owner))
    kube.ensure(tm.resource_quota(name, namespace, spec, owner))
    kube.ensure(
        tm.network_policy(
            name, namespace, spec, owner, platform_namespace=deps.operator.platform_namespace
        )
    )
    secret = kube.get("v1", "Secret", n.API_KEY_SECRET, namespace)
    key = None if secret is None else _read_key(secret)
    if key is None:
        candidate = platform_db.new_api_key()
        try:
            kube.create(tm.api_key_secret(name, namespace, candidate, owner))
            key = candidate
        except AlreadyExists:  # another attempt won the race: use its key
            secret = kube.get("v1", "Secret", n.API_KEY_SECRET, namespace)
            key = None if secret is None else _read_key(secret)
            if key is None:
                raise
    platform_db.ensure_api_key(deps.db, tenant_id, key)
    return {"namespace": namespace, "tenantId": tenant_id, "apiKeySecret": n.API_KEY_SECRET}


def delete_tenant(deps: Deps, *, name: str, spec: TenantSpec) -> None:
    """Remove the tenant's database rows and keys, then its namespace (and all in it)."""
    platform_db.delete_tenant(deps.db, name)
    namespace = n.tenant_namespace(name, spec.namespace)
    live = deps.kube.get("v1", "Namespace", namespace)
    if live is not None and (live["metadata"].get("labels") or {}).get(n.LABEL_TENANT) == name:
        deps.kube.delete("v1", "Namespace", namespace)


def tenant_of_namespace(deps: Deps, namespace: str) -> str | None:
    """The tenant owning `namespace` (its label), or None for a shared namespace."""
    live = deps.kube.get("v1", "Namespace", namespace)
    if live is None:
        return None
    return (live["metadata"].get("labels") or {}).get(n.LABEL_TENANT)
