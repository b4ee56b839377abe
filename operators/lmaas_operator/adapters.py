"""Reconciling an Adapter: register it for its tenant, load it on k replicas by traffic.

The request rate comes from the annotation `lmaas.io/request-rate` (requests/s), which
the gateway keeps up to date. Every pass asks each chosen pod which adapters it holds
and loads this one where it is missing (a restarted pod forgets), and unloads it from
pods that no longer should hold it.
"""

from __future__ import annotations

import logging
from typing import Any

from lmaas.protocol import LoadAdapterRequest
from lmaas_operator import naming as n
from lmaas_operator import platform_db
from lmaas_operator.adapter_placement import (
    RuntimeCallError,
    choose_replicas,
    pod_base_url,
    ready_pods,
    rendezvous,
)
from lmaas_operator.crds import API_VERSION
from lmaas_operator.deps import Deps
from lmaas_operator.errors import NotReady
from lmaas_operator.resources import AdapterSpec
from lmaas_operator.tenants import tenant_of_namespace

__all__ = ["delete_adapter", "reconcile_adapter", "request_rate"]

log = logging.getLogger(__name__)


def request_rate(annotations: dict[str, str]) -> float:
    try:
        return max(0.0, float(annotations.get(n.ANNOTATION_REQUEST_RATE, "0") or 0))
    except ValueError:
        return 0.0


def _tenant_id(deps: Deps, namespace: str) -> str:
    tenant = tenant_of_namespace(deps, namespace)
    if tenant is None:
        raise NotReady(
            f"namespace {namespace!r} is not a tenant's namespace (no {n.LABEL_TENANT} label): "
            "create Adapters in the namespace of their Tenant",
            reason="NoTenant",
            delay=60,
        )
    tenant_id = platform_db.tenant_id(deps.db, tenant)
    if tenant_id is None:
        raise NotReady(f"tenant {tenant!r} is not registered yet", reason="TenantPending")
    return tenant_id


def _holds(deps: Deps, base_url: str, adapter_id: str) -> bool:
    try:
        response = deps.runtime.http.get(f"{base_url}/internal/adapters")
        return response.is_success and any(
            a.get("adapter_id") == adapter_id for a in response.json()
        )
    except Exception:  # unknown: load again, loading is idempotent
        return False


def reconcile_adapter(
    deps: Deps,
    *,
    name: str,
    namespace: str,
    spec: AdapterSpec,
    annotations: dict[str, str],
    status: dict[str, Any],
) -> dict[str, Any]:
    """Register and place the adapter; returns the status fields."""
    tenant_id = _tenant_id(deps, namespace)
    service = deps.kube.get(API_VERSION, "ModelService", spec.service, namespace)
    if service is None:
        raise NotReady(f"ModelService {spec.service!r} does not exist", reason="ServiceMissing")
    base_model = (service.get("spec") or {}).get("model", "")
    adapter_id = platform_db.ensure_adapter(
        deps.db, tenant_id, spec.adapter_name or name, base_model, spec
    )

    pods = ready_pods(
        deps.kube.list(
            "v1",
            "Pod",
            namespace,
            labels={n.LABEL_MODEL_SERVICE: spec.service, n.LABEL_COMPONENT: "runtime"},
        )
    )
    by_name = {p["metadata"]["name"]: p for p in pods}
    rate = request_rate(annotations)
    k = choose_replicas(rate, spec.placement, deps.operator.adapter_requests_per_replica, len(pods))
    chosen = rendezvous(adapter_id, by_name, k)
    port = deps.operator.runtime_port
    loaded, failures = [], []
    request = LoadAdapterRequest(adapter_id=adapter_id, uri=spec.source)
    for pod_name in chosen:
        url = pod_base_url(by_name[pod_name], port)
        try:
            if not _holds(deps, url, adapter_id):
                deps.runtime.load(url, request)
            loaded.append(pod_name)
        except RuntimeCallError as exc:
            failures.append(f"{pod_name}: {exc}")
    for pod_name in set(status.get("loadedOn") or []) - set(chosen):
        pod = by_name.get(pod_name)
        if pod is None:
            continue  # gone with its memory
        try:
            deps.runtime.unload(pod_base_url(pod, port), adapter_id)
        except RuntimeCallError as exc:
            log.warning("could not unload adapter %s from %s: %s", adapter_id, pod_name, exc)
    return {
        "adapterId": adapter_id,
        "tenantId": tenant_id,
        "requestRate": rate,
        "replicas": k,
        "loadedOn": sorted(loaded),
        "_failures": failures,
        "_pods": len(pods),
    }


def delete_adapter(
    deps: Deps, *, name: str, namespace: str, spec: AdapterSpec, status: dict[str, Any]
) -> None:
    """Unload from the pods holding it (best effort) and remove its database row."""
    adapter_id = status.get("adapterId")
    if adapter_id:
        pods = {
            p["metadata"]["name"]: p
            for p in deps.kube.list("v1", "Pod", namespace, labels={n.LABEL_COMPONENT: "runtime"})
        }
        for pod_name in status.get("loadedOn") or []:
            if pod_name in pods and (pods[pod_name].get("status") or {}).get("podIP"):
                try:
                    deps.runtime.unload(
                        pod_base_url(pods[pod_name], deps.operator.runtime_port), adapter_id
                    )
                except RuntimeCallError as exc:
                    log.warning(
                        "could not unload adapter %s from %s: %s", adapter_id, pod_name, exc
                    )
    tenant = tenant_of_namespace(deps, namespace)
    tenant_id = None if tenant is None else platform_db.tenant_id(deps.db, tenant)
    if tenant_id is not None:
        platform_db.delete_adapter(deps.db, tenant_id, spec.adapter_name or name)
