"""The runtime's lifecycle: load the model in the background, then serve it.

While the model converts and loads (`phase`), ``/healthz`` answers and ``/readyz`` says what
is happening, so a supervisor can show progress; requests get 503 until it is ready. A model
that cannot load leaves the runtime in phase ``failed`` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time

from lmaas.config import Settings
from lmaas.engine.interface import EngineRequestError, InferenceEngine
from lmaas.engine.model_files import materialize_model
from lmaas.runtime.adapter_loader import AdapterLoader
from lmaas.runtime.draft_supervisor import DraftSupervisor
from lmaas.runtime.engines import create_engine
from lmaas.runtime.metrics import RuntimeMetrics

__all__ = ["RuntimeState"]

log = logging.getLogger(__name__)


class RuntimeState:
    """The engine (once loaded) and everything a request handler needs."""

    def __init__(self, settings: Settings, engine: InferenceEngine | None = None) -> None:
        self.settings = settings
        self.engine: InferenceEngine | None = None
        self.loader: AdapterLoader | None = None
        self.phase = "starting"
        self.error: str | None = None
        self.metrics = RuntimeMetrics(lambda: self.engine)
        self.drafts: DraftSupervisor | None = None
        self._given = engine
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._given is not None:
            await self._activate(self._given)
        else:
            self._task = asyncio.create_task(self._load(), name="lmaas-runtime-load")

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            self.phase = "preparing model files"
            source = self.settings.resolved_base_model
            log.info("runtime: preparing %s (%s)", self.settings.model_name, source)
            model_dir = await asyncio.to_thread(
                materialize_model, source, self.settings.model_cache_dir
            )
            self.phase = f"loading weights ({self.settings.engine} engine)"
            engine = await asyncio.to_thread(create_engine, self.settings, model_dir)
            await self._activate(engine)
            log.info(
                "runtime: %s ready in %.1fs on %s",
                self.settings.model_name,
                time.monotonic() - started,
                engine.info().device,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.phase, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("runtime: the model could not be loaded")

    async def _activate(self, engine: InferenceEngine) -> None:
        await engine.start()
        self.loader = AdapterLoader(engine, self.settings.home / "runtime-adapters")
        if getattr(engine, "speculator", None) is not None:
            self.drafts = DraftSupervisor(self.settings, engine, registry=self.metrics.registry)
            await self.drafts.start()
        self.engine = engine
        self.phase = "ready"

    def require_engine(self) -> InferenceEngine:
        if self.engine is None:
            raise EngineRequestError(
                f"the model is not ready yet ({self.phase}); retry shortly",
                code="model_loading" if self.phase != "failed" else "model_failed",
                status=503,
            )
        return self.engine

    def require_loader(self) -> AdapterLoader:
        self.require_engine()
        if self.loader is None:  # pragma: no cover - set together with the engine
            raise RuntimeError("adapter loader missing on a ready runtime")
        return self.loader

    async def stop(self) -> None:
        self.phase = "stopping"
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.engine is not None:
            await self.engine.shutdown()
        if self.drafts is not None:
            await self.drafts.stop()  # after the engine: what its last requests recorded too
