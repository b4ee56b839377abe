"""A stand-in for the lmaas runtime, for testing the profiler: a small real HTTP server.

It speaks the runtime's internal API (`lmaas.protocol`: ``GET /internal/info``, ``POST
/internal/generate`` streaming NDJSON `GenerateEvent`s) but generates no text: an engine
loop emits one token per running request per step, and a step takes ``base_ms +
per_seq_ms × running`` — so TPOT grows with load the way a batching engine's does, and the
highest rate that keeps a TPOT SLO is known in advance. The real runtime is being written
by another engineer; this stand-in is named as such wherever it is used.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from lmaas.protocol import GenerateEvent, GenerateRequest, RuntimeInfo, Usage
from tests.conftest import free_port


@dataclass
class _Running:
    queue: asyncio.Queue
    remaining: int
    produced: int = 0
    prompt_tokens: int = 0


@dataclass
class StandInRuntime:
    base_ms: float = 5.0
    per_seq_ms: float = 2.0
    vocab_size: int = 256
    requests_seen: list[GenerateRequest] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()
        running: list[_Running] = []
        wake = asyncio.Event()

        async def engine() -> None:
            while True:
                if not running:
                    wake.clear()
                    await wake.wait()
                await asyncio.sleep((self.base_ms + self.per_seq_ms * len(running)) / 1e3)
                for r in list(running):
                    r.remaining -= 1
                    r.produced += 1
                    token = GenerateEvent(text="x", token_ids=[r.produced % self.vocab_size])
                    await r.queue.put(token)
                    if r.remaining <= 0:
                        usage = Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.produced)
                        await r.queue.put(GenerateEvent(finish_reason="length", usage=usage))
                        await r.queue.put(None)
                        running.remove(r)

        @app.get("/internal/info")
        async def info() -> RuntimeInfo:
            if not hasattr(app.state, "engine"):
                app.state.engine = asyncio.create_task(engine())
            return RuntimeInfo(
                model="stand-in",
                max_context=4096,
                vocab_size=self.vocab_size,
                num_layers=1,
                dtype="none",
                device="standin-gpu",
                engine="stand-in",
            )

        @app.post("/internal/generate")
        async def generate(request: GenerateRequest) -> StreamingResponse:
            if not hasattr(app.state, "engine"):
                app.state.engine = asyncio.create_task(engine())
            self.requests_seen.append(request)
            entry = _Running(
                queue=asyncio.Queue(),
                remaining=request.sampling.max_tokens or 16,
                prompt_tokens=len(request.prompt_token_ids or []),
            )
            running.append(entry)
            wake.set()

            async def stream():
                while (event := await entry.queue.get()) is not None:
                    yield event.model_dump_json(exclude_none=True) + "\n"

            return StreamingResponse(stream(), media_type="application/x-ndjson")

        return app


class ServerThread:
    """Runs an ASGI app with uvicorn in a background thread on a free port."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ws="none", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the stand-in runtime did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
