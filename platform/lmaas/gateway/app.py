"""The gateway's app factory: `create_app(settings)`; no work happens at import.

At startup (lifespan) it applies the database migrations, registers the configured base
model and builds the shared `GatewayState`; each request finds it through `deps`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from lmaas import __version__
from lmaas.config import Settings, get_settings
from lmaas.gateway.errors import install_error_handlers
from lmaas.gateway.observability import GatewayMetrics, ObservabilityMiddleware
from lmaas.gateway.routers import (
    adapters,
    admin,
    completions,
    files,
    fine_tuning,
    models,
    ops,
    usage,
)
from lmaas.gateway.routing import ReplicaSource
from lmaas.gateway.state import build_state

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    runtime_transport: httpx.AsyncBaseTransport | None = None,
    replica_source: ReplicaSource | None = None,
) -> FastAPI:
    """The gateway app.

    `runtime_transport` replaces the HTTP transport to the runtimes (the test seam);
    `replica_source` replaces the fixed ``LMAAS_RUNTIME_URLS`` list (the activator's seam).
    """
    settings = settings or get_settings()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await build_state(
            settings,
            metrics=metrics,
            runtime_transport=runtime_transport,
            replica_source=replica_source,
        )
        app.state.lmaas = state
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(
        title="lmaas",
        version=__version__,
        summary="OpenAI-compatible multi-tenant LLM service with per-tenant LoRA adapters",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    for module in (ops, admin, models, completions, adapters, files, fine_tuning, usage):
        app.include_router(module.router)
    return app
