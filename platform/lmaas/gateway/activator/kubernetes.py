"""The Kubernetes `ScaleBackend`: a ModelService's Deployments, scaled from and to zero.

The operator labels each Deployment of a ModelService with ``lmaas.io/model-service`` and
annotates it with the plan (`lmaas.kube_names`). Here:

- a model's services are the ModelServices whose Deployments serve it (label
  ``lmaas.io/model``, else the runtime container's ``LMAAS_MODEL_NAME``). For a tenant, its
  own one (Deployments labelled ``lmaas.io/tenant=<its name>``, made in its namespace) comes
  first, else a shared one (no ``lmaas.io/tenant`` label); another tenant's service is never
  used. Among equals, the first by ``namespace/name``;
- scaling up sets each Deployment to its ``planned-replicas`` (at least 1) through the
  ``scale`` subresource, never lowering one that has more;
- following the plan (a running service the operator re-planned): each *serverless*
  Deployment is set to its ``planned-replicas`` (up or down) while the service runs, and a
  new one of the plan joins at its size; Deployments of services with minReplicas > 0 are
  the operator's to size and are left alone;
- scaling to zero sets each *serverless* Deployment to 0 (a service with minReplicas > 0 is
  never scaled down by the activator);
- endpoints are the addresses in the EndpointSlices of the service's Services, minus
  terminating ones; the activator then asks each runtime's ``/readyz`` itself. Each
  address's pod (the endpoint's ``targetRef``) maps it to the adapters the operator placed
  there (`AdapterTraffic`).

Deployments are listed once per `cache_ttl_s` for lookups; scaling reads them fresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from lmaas import kube_names as kn
from lmaas.gateway.activator.adapter_traffic import AdapterTraffic
from lmaas.gateway.activator.backend import ServiceInfo
from lmaas.gateway.activator.kube_api import KubeApi
from lmaas.gateway.routing import TenantRef

__all__ = ["KubernetesBackend", "deployment_model"]


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def deployment_model(deployment: dict[str, Any]) -> str | None:
    """The model a runtime Deployment serves: its label, else its container's environment."""
    meta = _meta(deployment)
    model = (meta.get("labels") or {}).get(kn.LABEL_MODEL)
    if model:
        return str(model)
    template = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in template.get("containers") or []:
        for var in container.get("env") or []:
            if var.get("name") == kn.RUNTIME_MODEL_ENV and var.get("value"):
                return str(var["value"])
    return None


def _replicas(deployment: dict[str, Any]) -> int:
    return int((deployment.get("spec") or {}).get("replicas") or 0)


def _planned(deployment: dict[str, Any]) -> int:
    raw = (_meta(deployment).get("annotations") or {}).get(kn.ANNOTATION_PLANNED_REPLICAS)
    try:
        return max(1, int(raw))
    except (TypeError, ValueError):
        return 1


def _tenant(deployment: dict[str, Any]) -> str | None:
    return (_meta(deployment).get("labels") or {}).get(kn.LABEL_TENANT) or None


def _serverless(deployment: dict[str, Any]) -> bool:
    annotations = _meta(deployment).get("annotations") or {}
    return str(annotations.get(kn.ANNOTATION_SERVERLESS, "")).lower() == "true"


def _idle_timeout(deployments: list[dict[str, Any]], default: float) -> float:
    for deployment in deployments:
        raw = (_meta(deployment).get("annotations") or {}).get(kn.ANNOTATION_IDLE_TIMEOUT)
        try:
            return max(0.0, float(raw))
        except (TypeError, ValueError):
            continue
    return default


def _split(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition("/")
    return namespace, name


class KubernetesBackend:
    """Scales ModelService Deployments through the Kubernetes API (see the module)."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str | None = None,
        default_idle_timeout_s: float = 900.0,
        cache_ttl_s: float = 5.0,
        adapters: AdapterTraffic | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.default_idle_timeout_s = default_idle_timeout_s
        self.cache_ttl_s = cache_ttl_s
        self.adapters = adapters
        self._cache: tuple[float, list[dict[str, Any]]] = (float("-inf"), [])
        self._cache_lock = asyncio.Lock()
        # service key → endpoint URL → (namespace, pod), as of the last endpoints() call
        self._pods: dict[str, dict[str, tuple[str, str]]] = {}

    async def _all_deployments(self, *, fresh: bool = False) -> list[dict[str, Any]]:
        async with self._cache_lock:
            at, items = self._cache
            if fresh or time.monotonic() - at >= self.cache_ttl_s:
                items = await self.api.list(
                    "apps/v1",
                    "deployments",
                    namespace=self.namespace,
                    selector=kn.LABEL_MODEL_SERVICE,
                )
                self._cache = (time.monotonic(), items)
            return items

    async def _deployments(self, service: ServiceInfo) -> list[dict[str, Any]]:
        namespace, name = _split(service.key)
        items = await self.api.list(
            "apps/v1",
            "deployments",
            namespace=namespace,
            selector=f"{kn.LABEL_MODEL_SERVICE}={name}",
        )
        return sorted(items, key=lambda d: str(_meta(d).get("name")))

    async def start(self) -> None:
        if self.adapters is not None:
            self.adapters.start()

    async def lookup(self, model: str, tenant: TenantRef | None = None) -> ServiceInfo | None:
        services: dict[str, list[dict[str, Any]]] = {}
        for deployment in await self._all_deployments():
            meta = _meta(deployment)
            name = (meta.get("labels") or {}).get(kn.LABEL_MODEL_SERVICE)
            if name and deployment_model(deployment) == model:
                services.setdefault(f"{meta.get('namespace')}/{name}", []).append(deployment)
        owners = {key: _tenant(deployments[0]) for key, deployments in services.items()}
        own = [k for k, owner in owners.items() if tenant is not None and owner == tenant.name]
        shared = [k for k, owner in owners.items() if owner is None]
        candidates = own or shared
        if not candidates:
            return None  # none, or only other tenants' services
        key = min(candidates)
        deployments = services[key]
        return ServiceInfo(
            key=key,
            model=model,
            scale_to_zero=all(_serverless(d) for d in deployments),
            idle_timeout_s=_idle_timeout(deployments, self.default_idle_timeout_s),
            tenant=owners[key],
        )

    async def current_replicas(self, service: ServiceInfo) -> int:
        return sum(_replicas(d) for d in await self._deployments(service))

    async def scale_up(self, service: ServiceInfo) -> int:
        namespace, _ = _split(service.key)
        total = 0
        for deployment in await self._deployments(service):
            target = _planned(deployment)
            if _replicas(deployment) < target:
                await self.api.scale_deployment(namespace, _meta(deployment)["name"], target)
            total += max(target, _replicas(deployment))
        return total

    async def follow_plan(self, service: ServiceInfo) -> tuple[int, int]:
        namespace, _ = _split(service.key)
        deployments = await self._deployments(service)
        before = sum(_replicas(d) for d in deployments)
        if sum(_replicas(d) for d in deployments if _serverless(d)) == 0:
            return before, before  # at zero (or nothing serverless): stays so
        after = before
        for deployment in deployments:
            if not _serverless(deployment):
                continue  # the operator sizes services with minReplicas > 0
            target, current = _planned(deployment), _replicas(deployment)
            if current != target:
                await self.api.scale_deployment(namespace, _meta(deployment)["name"], target)
                after += target - current
        return before, after

    async def scale_to_zero(self, service: ServiceInfo) -> None:
        namespace, _ = _split(service.key)
        for deployment in await self._deployments(service):
            if _serverless(deployment) and _replicas(deployment) > 0:
                await self.api.scale_deployment(namespace, _meta(deployment)["name"], 0)

    async def endpoints(self, service: ServiceInfo) -> Sequence[str]:
        namespace, name = _split(service.key)
        services = await self.api.list(
            "v1", "services", namespace=namespace, selector=f"{kn.LABEL_MODEL_SERVICE}={name}"
        )
        urls: list[str] = []
        pods: dict[str, tuple[str, str]] = {}
        for svc in sorted(services, key=lambda s: str(_meta(s).get("name"))):
            slices = await self.api.list(
                "discovery.k8s.io/v1",
                "endpointslices",
                namespace=namespace,
                selector=f"{kn.LABEL_SERVICE_NAME}={_meta(svc).get('name')}",
            )
            for endpoint_slice in slices:
                for url, pod in _slice_endpoints(endpoint_slice):
                    if url not in urls:
                        urls.append(url)
                    if pod:
                        pods[url] = (namespace, pod)
        self._pods[service.key] = pods
        return urls

    async def discard(self, service: ServiceInfo, url: str) -> None:
        # The runtime's liveness probe (/healthz answers 503 once its model failed) makes
        # the kubelet restart it; nothing to do from here.
        return None

    def placed_adapters(self, url: str) -> set[str]:
        where = next((p[url] for p in self._pods.values() if url in p), None)
        if where is None or self.adapters is None:
            return set()
        return self.adapters.placed_on(*where)

    async def aclose(self) -> None:
        try:
            if self.adapters is not None:
                await self.adapters.aclose()
        finally:
            await self.api.aclose()


def _slice_endpoints(endpoint_slice: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(``http://address:port``, pod name) of each non-terminating endpoint of a slice."""
    ports = endpoint_slice.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == "http"), None)
    if port is None and ports:
        port = ports[0].get("port")
    if port is None:
        return []
    ipv6 = endpoint_slice.get("addressType") == "IPv6"
    found: list[tuple[str, str | None]] = []
    for endpoint in endpoint_slice.get("endpoints") or []:
        if (endpoint.get("conditions") or {}).get("terminating") is True:
            continue
        ref = endpoint.get("targetRef") or {}
        pod = ref.get("name") if ref.get("kind", "Pod") == "Pod" else None
        for address in (endpoint.get("addresses") or [])[:1]:
            host = f"[{address}]" if ipv6 else address
            found.append((f"http://{host}:{port}", pod))
    return found


def _slice_urls(endpoint_slice: dict[str, Any]) -> list[str]:
    """``http://address:port`` of each non-terminating endpoint of an EndpointSlice."""
    return [url for url, _ in _slice_endpoints(endpoint_slice)]
