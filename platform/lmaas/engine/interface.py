"""The interface between the runtime process and an inference engine.

The runtime's HTTP server (`lmaas.runtime`) knows only this class; engines implement it.
Errors a caller can cause are raised as `EngineRequestError` (the runtime answers them
with a 4xx and the OpenAI error body); anything else is a bug of the engine.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from pathlib import Path

from lmaas.protocol import AdapterState, GenerateEvent, GenerateRequest, RuntimeInfo

__all__ = ["EngineRequestError", "EngineStats", "InferenceEngine"]


class EngineRequestError(Exception):
    """A request the engine refuses: says what was wrong and how to fix it."""

    def __init__(
        self, message: str, *, code: str | None = None, param: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.status = status


class EngineStats(dict):  # type: ignore[type-arg]
    """Live figures for metrics and routing: `num_waiting`, `num_running`, `kv_usage`, …"""


class InferenceEngine(abc.ABC):
    """Serves one base model with many LoRA adapters."""

    @abc.abstractmethod
    def info(self) -> RuntimeInfo:
        """The served model and its limits."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateEvent]:
        """Stream the output of one request; validation errors raise before the first event.

        Cancelling the iteration (client gone) frees the request's resources.
        """

    @abc.abstractmethod
    async def load_adapter(self, adapter_id: str, path: Path, *, pin: bool = False) -> AdapterState:
        """Load a peft adapter folder; raises `EngineRequestError` if it does not fit the model."""

    @abc.abstractmethod
    async def unload_adapter(self, adapter_id: str) -> None:
        """Forget an adapter; requests already running with it finish first."""

    @abc.abstractmethod
    def adapters(self) -> list[AdapterState]:
        """Adapters known to the engine and where they are."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Live figures: queue depth, running requests, cache use."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (the step loop)."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Finish or cancel running work and free resources."""
