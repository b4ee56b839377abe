"""Everything the gateway's routes share, built once at startup (`build_state`)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

import httpx
from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from lmaas.config import Settings
from lmaas.gateway.observability import GatewayMetrics
from lmaas.gateway.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from lmaas.gateway.routing import ReplicaSource, Router, StaticReplicaSource, TenantRef
from lmaas.gateway.runtime_client import RuntimeClient
from lmaas.protocol import RuntimeInfo
from lmaas.store import Database, ServedModel
from lmaas.store.artifacts import ArtifactStore
from lmaas.tasks import create_celery, send_task

__all__ = ["GatewayState", "build_state"]

log = logging.getLogger(__name__)


@dataclass
class GatewayState:
    settings: Settings
    db: Database
    artifacts: ArtifactStore
    limiter: RateLimiter
    client: RuntimeClient
    router: Router
    metrics: GatewayMetrics
    celery: Celery
    admin_token: str
    _infos: dict[str, RuntimeInfo] = field(default_factory=dict)

    async def model_info(self, model: str, tenant: TenantRef | None = None) -> RuntimeInfo:
        """The runtime's description of base model `model` (cached; waits for a replica of
        `tenant`'s service of it)."""
        info = self._infos.get(model)
        if info is None:
            lease = await self.router.acquire(model, None, tenant)
            try:
                info = await self.client.info(lease.replica.url)
            finally:
                lease.release()
            self._infos[model] = info
        return info

    async def send_task(self, name: str, *args: str) -> None:
        """Queue a background task; a broker outage is logged, never fails the request."""
        try:
            await asyncio.to_thread(send_task, self.celery, name, *args)
        except Exception as exc:  # the task is an optimisation; the request succeeded
            log.warning("could not queue task %s%r: %s", name, args, exc)

    async def aclose(self) -> None:
        await self.router.source.aclose()
        await self.client.aclose()
        await self.limiter.aclose()
        await asyncio.to_thread(self.db.dispose)


def _register_base_model(db: Database, settings: Settings) -> None:
    """Make the configured base model known (it is listed and routable)."""
    try:
        with db.session() as session:
            row = session.execute(
                select(ServedModel).where(ServedModel.id == settings.model_name)
            ).scalar_one_or_none()
            if row is None:
                session.add(
                    ServedModel(id=settings.model_name, uri=settings.base_model or "default")
                )
    except IntegrityError:
        pass  # another gateway replica registered it at the same moment


async def build_state(
    settings: Settings,
    *,
    metrics: GatewayMetrics,
    runtime_transport: httpx.AsyncBaseTransport | None = None,
    replica_source: ReplicaSource | None = None,
) -> GatewayState:
    db = await asyncio.to_thread(Database, settings.resolved_database_url)
    await asyncio.to_thread(_register_base_model, db, settings)
    client = RuntimeClient(transport=runtime_transport, timeout_s=settings.request_timeout_s)
    adapter_requests: Counter[str] = Counter()
    source: ReplicaSource
    if replica_source is not None:
        source = replica_source
    elif settings.scale_backend == "static":
        source = StaticReplicaSource(
            settings.resolved_runtime_urls, client, wait_s=settings.replica_wait_s
        )
    else:
        from lmaas.gateway.activator import build_activator

        source = await build_activator(
            settings, client, metrics.registry, adapter_requests=adapter_requests, db=db
        )
    limiter: RateLimiter = (
        RedisRateLimiter(settings.redis_url, prefix=settings.redis_prefix)
        if settings.redis_url
        else LocalRateLimiter()
    )
    return GatewayState(
        settings=settings,
        db=db,
        artifacts=ArtifactStore(settings.resolved_artifact_url),
        limiter=limiter,
        client=client,
        router=Router(source, adapter_requests=adapter_requests),
        metrics=metrics,
        celery=create_celery(settings),
        admin_token=settings.resolved_admin_token(),
    )
