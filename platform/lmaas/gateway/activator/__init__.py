"""Scale from zero: the gateway's activator and its backends.

`Activator` is the gateway's `ReplicaSource` when ``LMAAS_SCALE_BACKEND`` is `embedded`
(runtime processes on this machine, `lmaas up`) or `kubernetes` (ModelService
Deployments); `build_activator` makes the one the settings ask for. On Kubernetes it also
runs `AdapterTraffic`: the router's per-adapter request counts become each Adapter's
``lmaas.io/request-rate``, and the Adapters' placement steers routing.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry

from lmaas.config import Settings
from lmaas.gateway.activator.activator import ActivationFailed, Activator
from lmaas.gateway.activator.activity import ActivityLedger, LocalActivity, RedisActivity
from lmaas.gateway.activator.backend import BackendError, ScaleBackend, ServiceInfo
from lmaas.gateway.activator.metrics import ActivatorMetrics
from lmaas.gateway.runtime_client import RuntimeClient
from lmaas.store import Database

__all__ = [
    "ActivationFailed",
    "Activator",
    "ActivatorMetrics",
    "BackendError",
    "ScaleBackend",
    "ServiceInfo",
    "build_activator",
]


async def build_activator(
    settings: Settings,
    client: RuntimeClient,
    registry: CollectorRegistry,
    *,
    adapter_requests: Counter[str] | None = None,
    db: Database | None = None,
) -> Activator:
    """The started activator of ``settings.scale_backend`` (`embedded` or `kubernetes`).

    `adapter_requests` are the router's requests per adapter (Kubernetes: reported to the
    Adapters as their request rates); `db` lets the embedded backend serve tenants' own
    models (their `ServedModel` rows)."""
    backend: ScaleBackend
    prewarm: list[str] = []
    poll_s = 0.25  # a local process: poll its /readyz often
    if settings.scale_backend == "embedded":
        from lmaas.gateway.activator.embedded import EmbeddedBackend, stored_model_finder

        backend = EmbeddedBackend.from_settings(
            settings, find_model=None if db is None else stored_model_finder(db)
        )
        if settings.runtime_prewarm:
            prewarm.append(settings.model_name)
    elif settings.scale_backend == "kubernetes":
        from lmaas.gateway.activator.adapter_traffic import (
            AdapterCounts,
            AdapterTraffic,
            LocalAdapterCounts,
            RedisAdapterCounts,
        )
        from lmaas.gateway.activator.kube_api import KubeApi
        from lmaas.gateway.activator.kubernetes import KubernetesBackend

        api = KubeApi(settings.kube_api_url)
        requests = adapter_requests if adapter_requests is not None else Counter()
        counts: AdapterCounts = (
            RedisAdapterCounts(requests, settings.redis_url, prefix=settings.redis_prefix)
            if settings.redis_url
            else LocalAdapterCounts(requests)
        )
        backend = KubernetesBackend(
            api,
            namespace=settings.kube_namespace,
            default_idle_timeout_s=settings.idle_timeout_s,
            adapters=AdapterTraffic(
                api,
                counts,
                namespace=settings.kube_namespace,
                period_s=settings.adapter_rate_period_s,
            ),
        )
        poll_s = 1.0  # each poll LISTs Services and EndpointSlices: spare the API server
    else:
        raise ValueError(f"no activator for scale backend {settings.scale_backend!r}")
    activity: ActivityLedger = (
        RedisActivity(settings.redis_url, prefix=settings.redis_prefix)
        if settings.redis_url
        else LocalActivity()
    )
    activator = Activator(
        backend,
        client,
        metrics=ActivatorMetrics(registry),
        activity=activity,
        activation_timeout_s=settings.activation_timeout_s,
        poll_s=poll_s,
    )
    await activator.start(prewarm=prewarm)
    return activator
