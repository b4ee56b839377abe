"""The runtime's HTTP server: `create_app(settings)` → the internal API of `lmaas.protocol`.

No work at import; the model loads in the background after start (see `RuntimeState`).
Refusals before the first token (bad prompt, context exceeded, unknown adapter, not ready)
answer 4xx/503 with the OpenAI error body; once streaming, an error ends the NDJSON stream
with an event whose ``finish_reason`` is ``error``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lmaas.config import Settings, get_settings
from lmaas.engine.interface import EngineRequestError, InferenceEngine
from lmaas.protocol import (
    AdapterState,
    ErrorBody,
    ErrorInfo,
    GenerateEvent,
    GenerateRequest,
    LoadAdapterRequest,
    RuntimeInfo,
)
from lmaas.runtime.state import RuntimeState

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _state(request: Request) -> RuntimeState:
    return request.app.state.runtime


StateDep = Annotated[RuntimeState, Depends(_state)]


def _error(status: int, info: ErrorInfo, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=info).model_dump(), status_code=status, headers=headers)


async def _engine_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineRequestError)
    kind = "service_unavailable" if exc.status == 503 else "invalid_request_error"
    headers = {"Retry-After": "2"} if exc.status == 503 else None
    return _error(
        exc.status,
        ErrorInfo(message=exc.message, type=kind, param=exc.param, code=exc.code),
        headers,
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    return _error(400, ErrorInfo(message=f"{param}: {first['msg']}", param=param))


def create_app(
    settings: Settings | None = None, *, engine: InferenceEngine | None = None
) -> FastAPI:
    """The runtime app; `engine` serves an already-built engine instead of loading one."""
    settings = settings or get_settings()
    state = RuntimeState(settings, engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        yield
        await state.stop()

    app = FastAPI(title="lmaas runtime", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime = state
    app.add_exception_handler(EngineRequestError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz")
    def healthz(state: StateDep) -> JSONResponse:
        failed = state.phase == "failed"
        return JSONResponse(
            {"status": "failed" if failed else "ok", "phase": state.phase, "error": state.error},
            status_code=503 if failed else 200,
        )

    @app.get("/readyz")
    def readyz(state: StateDep) -> JSONResponse:
        ready = state.engine is not None
        return JSONResponse(
            {"ready": ready, "phase": state.phase, "error": state.error},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics")
    def metrics(state: StateDep) -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/internal/info")
    def info(state: StateDep) -> RuntimeInfo:
        return state.require_engine().info()

    @app.get("/internal/adapters")
    def list_adapters(state: StateDep) -> list[AdapterState]:
        return state.require_engine().adapters()

    @app.post("/internal/adapters")
    async def load_adapter(body: LoadAdapterRequest, state: StateDep) -> AdapterState:
        return await state.require_loader().load(body.adapter_id, body.uri, pin=body.pin)

    @app.delete("/internal/adapters/{adapter_id}", status_code=204)
    async def unload_adapter(adapter_id: str, state: StateDep) -> Response:
        await state.require_loader().unload(adapter_id)
        return Response(status_code=204)

    @app.post("/internal/generate")
    async def generate(body: GenerateRequest, state: StateDep) -> Response:
        engine = state.require_engine()
        metrics = state.metrics
        started = time.monotonic()
        try:
            if body.adapter_id is not None:
                await state.require_loader().ensure_loaded(body.adapter_id, body.adapter_uri)
            stream = engine.generate(body)
            first: GenerateEvent | None = await anext(stream, None)
        except EngineRequestError:
            metrics.requests.labels("rejected").inc()
            raise
        metrics.first_token_seconds.observe(time.monotonic() - started)
        return StreamingResponse(
            _ndjson(state, stream, first, started), media_type="application/x-ndjson"
        )


async def _ndjson(
    state: RuntimeState,
    stream: AsyncIterator[GenerateEvent],
    first: GenerateEvent | None,
    started: float,
) -> AsyncIterator[bytes]:
    """The events as NDJSON lines; counts outcome and tokens whatever happens."""
    metrics = state.metrics
    last = first
    outcome = "cancelled"
    try:
        if first is not None:
            yield first.model_dump_json(exclude_none=True).encode() + b"\n"
        async for event in stream:
            last = event
            yield event.model_dump_json(exclude_none=True).encode() + b"\n"
        outcome = "error" if last is not None and last.finish_reason == "error" else "ok"
    except EngineRequestError as exc:
        outcome = "error"
        event = GenerateEvent(
            finish_reason="error", error=ErrorInfo(message=exc.message, code=exc.code)
        )
        yield event.model_dump_json(exclude_none=True).encode() + b"\n"
    except Exception:
        outcome = "error"
        log.exception("generation failed")
        event = GenerateEvent(
            finish_reason="error",
            error=ErrorInfo(message="the runtime failed while generating", type="server_error"),
        )
        yield event.model_dump_json(exclude_none=True).encode() + b"\n"
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        metrics.requests.labels(outcome).inc()
        metrics.request_seconds.observe(time.monotonic() - started)
        if last is not None and last.usage is not None:
            metrics.tokens.labels("prompt").inc(last.usage.prompt_tokens)
            metrics.tokens.labels("completion").inc(last.usage.completion_tokens)
