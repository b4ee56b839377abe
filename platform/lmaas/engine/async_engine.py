"""The engine the runtime drives: `InferenceEngine` over `LLMEngine` on a background thread.

The step loop runs on its own thread (torch releases the GIL in its kernels, so the
runtime's event loop keeps serving HTTP meanwhile). Callers talk to it through a command
queue: a request is validated on the engine thread and its error, if any, is raised to the
caller before the first event; events flow back to each caller's asyncio queue. A caller
that stops listening (client gone) aborts its request, which frees its cache blocks and
adapter slot at the next step boundary. Adapters are read and validated on a worker
thread, never on the step thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from lmaas.config import Settings
from lmaas.engine.engine_config import EngineConfig
from lmaas.engine.interface import EngineRequestError, EngineStats, InferenceEngine
from lmaas.engine.llm_engine import LLMEngine, StepEvents
from lmaas.engine.speculation.osd_buffer import OSDRecorder
from lmaas.engine.speculation.proposer import Proposer
from lmaas.engine.speculator import Speculator
from lmaas.protocol import AdapterState, GenerateEvent, GenerateRequest, LoraTarget, RuntimeInfo

__all__ = ["AsyncEngine"]

log = logging.getLogger(__name__)


class AsyncEngine(InferenceEngine):
    """Batched multi-LoRA engine (paged KV cache, continuous batching) for the runtime.

    Construction loads the model (seconds: call it off the event loop if that matters);
    `start` launches the step loop.
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        speculator: Speculator | None = None,
        osd: OSDRecorder | None = None,
    ) -> None:
        self.config = config
        self.engine = LLMEngine(config, speculator=speculator, osd=osd)
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[
            str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[GenerateEvent]]
        ] = {}
        self._unloading: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stats = self.engine.stats()
        self._adapter_states: list[AdapterState] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> AsyncEngine:
        return cls(EngineConfig.from_settings(settings))

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="lmaas-engine", daemon=True)
            self._thread.start()

    async def shutdown(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._wakeup.set()
        await asyncio.to_thread(thread.join)
        for request_id in list(self._streams):
            self._deliver_one(request_id, GenerateEvent(finish_reason="cancelled"))

    # Speculative decoding ----------------------------------------------------------------

    @property
    def speculator(self) -> Speculator | None:
        return self.engine.speculator

    def set_proposer(self, proposer: Proposer) -> None:
        """Swap the draft proposer at the next step boundary (`LLMEngine.set_proposer`);
        safe from any thread, requests in flight keep running."""
        self.engine.set_proposer(proposer)
        self._wakeup.set()

    async def swap_draft(self, source: str | Path) -> int | None:
        """Load the draft at `source` (a draft folder or URL) on a worker thread and swap it
        in at the next step boundary (replacing a previous draft, or prompt lookup);
        returns its version. Raises `RuntimeError` when this engine does not speculate."""
        if self.engine.speculator is None:
            raise RuntimeError("this engine does not speculate (LMAAS_SPECULATION_MAX_K=0)")
        proposer = await asyncio.to_thread(self.engine.load_draft_proposer, source)
        self.set_proposer(proposer)
        return proposer.backend.draft.version  # type: ignore[attr-defined]

    # InferenceEngine ---------------------------------------------------------------------

    def info(self) -> RuntimeInfo:
        runner = self.engine.runner
        cfg = runner.model_config
        return RuntimeInfo(
            model=self.config.model_name,
            architecture=cfg.architecture,
            max_context=runner.max_model_len,
            vocab_size=cfg.vocab_size,
            num_layers=cfg.num_layers,
            dtype=str(self.config.dtype).removeprefix("torch."),
            device=str(self.config.device),
            engine="lmaas",
            lora_targets={
                name: LoraTarget(in_features=i, out_features=o)
                for name, (i, o) in cfg.lora_targets().items()
            },
            max_lora_rank=self.config.max_lora_rank,
        )

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateEvent]:
        if self._thread is None:
            raise RuntimeError("the engine is not started: await engine.start() first")
        if request.request_id in self._streams:
            raise EngineRequestError(
                f"request {request.request_id!r} is already running", param="request_id", status=409
            )
        await self._ensure_adapter(request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerateEvent] = asyncio.Queue()
        self._streams[request.request_id] = (loop, events)
        try:
            await self._call(lambda: self.engine.add_request(request))
        except BaseException:
            self._streams.pop(request.request_id, None)
            raise
        finished = False
        try:
            while True:
                event = await events.get()
                finished = event.finish_reason is not None
                yield event
                if finished:
                    return
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self._submit(lambda: self.engine.abort_request(request.request_id))

    async def load_adapter(self, adapter_id: str, path: Path, *, pin: bool = False) -> AdapterState:
        adapter = await asyncio.to_thread(self.engine.read_adapter, adapter_id, path)
        self._unloading.discard(adapter_id)

        def add() -> None:
            self.engine.add_adapter(adapter, pin=pin)
            self._publish()

        await self._call(add)
        for state in self._adapter_states:
            if state.adapter_id == adapter_id:
                return state
        return AdapterState(adapter_id=adapter_id, rank=adapter.rank, location="host", pinned=pin)

    async def unload_adapter(self, adapter_id: str) -> None:
        if not any(s.adapter_id == adapter_id for s in self._adapter_states):
            raise EngineRequestError(
                f"adapter {adapter_id!r} is not loaded", code="adapter_not_found", status=404
            )
        self._unloading.add(adapter_id)
        self._submit(lambda: None)  # wake the loop: it removes the adapter once unused

    def adapters(self) -> list[AdapterState]:
        return list(self._adapter_states)

    def stats(self) -> EngineStats:
        return EngineStats(self._stats)

    # Internals ---------------------------------------------------------------------------

    async def _ensure_adapter(self, request: GenerateRequest) -> None:
        adapter_id = request.adapter_id
        if adapter_id is None:
            return
        if adapter_id in self._unloading:
            raise EngineRequestError(
                f"adapter {adapter_id!r} is being unloaded", code="adapter_not_found", status=404
            )
        if any(s.adapter_id == adapter_id for s in self._adapter_states):
            return
        if request.adapter_uri is None:
            raise EngineRequestError(
                f"adapter {adapter_id!r} is not loaded on this runtime and the request names no "
                "adapter_uri to load it from",
                code="adapter_not_found",
                param="model",
                status=404,
            )
        folder = await asyncio.to_thread(self._fetch_adapter, adapter_id, request.adapter_uri)
        await self.load_adapter(adapter_id, folder)

    def _fetch_adapter(self, adapter_id: str, uri: str) -> Path:
        """A local folder holding the adapter at `uri` (downloaded once for remote URIs)."""
        if "://" not in uri or uri.startswith("file://"):
            return Path(uri.removeprefix("file://"))
        import fsspec

        cache = self.config.adapter_cache_dir or Path.home() / ".lmaas" / "adapter-cache"
        target = cache / adapter_id.replace("/", "_")
        if not (target / "adapter_config.json").is_file():
            fs, path = fsspec.core.url_to_fs(uri)
            target.mkdir(parents=True, exist_ok=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                fs.get(f"{path.rstrip('/')}/{name}", str(target / name))
        return target

    def _submit(self, command: Callable[[], None]) -> None:
        self._commands.put(command)
        self._wakeup.set()

    async def _call(self, command: Callable[[], Any]) -> Any:
        """Run `command` on the engine thread; its result or exception comes back here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def run() -> None:
            try:
                result = command()
            except BaseException as exc:  # handed to the caller, whatever it is
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        self._submit(run)
        return await future

    def _run(self) -> None:
        engine = self.engine
        while not self._stopping:
            self._run_commands()
            self._finish_unloads()
            if not engine.has_unfinished_requests():
                self._publish()
                self._wakeup.wait(timeout=0.5)
                self._wakeup.clear()
                continue
            try:
                events = engine.step()
            except Exception:  # a bug: fail what is running, keep serving
                log.exception("engine step failed")
                events = self._fail_all("internal engine error")
            self._deliver(events)
            self._publish()

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            except Exception:
                log.exception("engine command failed")

    def _finish_unloads(self) -> None:
        for adapter_id in list(self._unloading):
            if self.engine.remove_adapter(adapter_id):
                self._unloading.discard(adapter_id)

    def _fail_all(self, message: str) -> StepEvents:
        events = []
        for request_id, state in list(self.engine.states.items()):
            events.append((request_id, self.engine.outputs.finish(state, "error", message)))
            self.engine.abort_request(request_id)
        return events

    def _publish(self) -> None:
        self._stats = self.engine.stats()
        if self.engine.lora is not None:
            self._adapter_states = [
                AdapterState(adapter_id=a, rank=r, location=loc, pinned=p)  # type: ignore[arg-type]
                for a, r, loc, p in self.engine.lora.states()
            ]

    def _deliver(self, events: StepEvents) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, GenerateEvent]]] = {}
        for request_id, event in events:
            stream = self._streams.get(request_id)
            if stream is not None:
                by_loop.setdefault(stream[0], []).append((stream[1], event))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens
                loop.call_soon_threadsafe(_put_all, items)

    def _deliver_one(self, request_id: str, event: GenerateEvent) -> None:
        self._deliver([(request_id, event)])


def _put_all(items: list[tuple[asyncio.Queue, GenerateEvent]]) -> None:
    for events, event in items:
        events.put_nowait(event)


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
