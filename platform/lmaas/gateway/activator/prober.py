"""Refreshing what the activator knows of a service's replicas (`ReplicaProber`).

The backend says which replicas exist; each runtime's own ``/readyz`` says whether it is
ready (and, if its model failed to load, why); ``/internal/info`` says which model it
serves and ``/internal/adapters`` which adapters it holds (a routing hint); the backend
says which adapters were placed on it (the Adapters' ``status.loadedOn``). A replica
serving another model than its service's is never marked ready.
"""

from __future__ import annotations

import asyncio
import logging
import time

from lmaas.gateway.activator.backend import ScaleBackend
from lmaas.gateway.activator.metrics import ActivatorMetrics
from lmaas.gateway.activator.service_state import ServiceState
from lmaas.gateway.errors import ApiError
from lmaas.gateway.routing import Replica
from lmaas.gateway.runtime_client import ReplicaUnreachable, RuntimeClient

__all__ = ["ReplicaProber"]

log = logging.getLogger(__name__)


class ReplicaProber:
    """Probes the replicas of services for the activator."""

    def __init__(
        self, backend: ScaleBackend, client: RuntimeClient, metrics: ActivatorMetrics
    ) -> None:
        self._backend = backend
        self._client = client
        self._metrics = metrics

    async def probe(self, service: ServiceState) -> None:
        """Refresh the service's replicas from the backend and each one's ``/readyz``."""
        async with service.probe_lock:
            urls = [u.rstrip("/") for u in await self._backend.endpoints(service.info)]
            for url in list(service.replicas):
                if url not in urls:
                    service.retire(url)
            for url in urls:
                replica = service.replicas.setdefault(url, Replica(url=url, service=service.key))
                replica.placed_adapters = self._backend.placed_adapters(url)
            await asyncio.gather(
                *(self._probe_replica(service, r) for r in service.replicas.values())
            )
            service.checked_at = time.monotonic()
            self._metrics.ready_replicas.labels(service.key).set(len(service.ready()))

    async def _probe_replica(self, service: ServiceState, replica: Replica) -> None:
        readiness = await self._client.readiness(replica.url)
        ready = readiness.ready
        if readiness.failed:
            service.failed[replica.url] = readiness.error or "the model could not be loaded"
        else:
            service.failed.pop(replica.url, None)
        try:
            if ready and replica.model is None:
                replica.model = (await self._client.info(replica.url)).model
            if ready and replica.model != service.info.model:
                log.warning(
                    "%s serves %s, not %s: not routing to it",
                    replica.url,
                    replica.model,
                    service.info.model,
                )
                ready = False
            if ready:
                loaded = await self._client.adapters(replica.url)
                replica.adapter_ids = {a.adapter_id for a in loaded}
        except (ReplicaUnreachable, ApiError):
            ready = False
        if ready != replica.ready:
            log.info(
                "%s replica %s is %s", service.key, replica.url, "ready" if ready else "not ready"
            )
        replica.ready = ready
        replica.checked_at = time.monotonic()
