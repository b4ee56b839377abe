"""Loads adapters into the engine on demand, from the artifact store URI the gateway gives.

The files are copied once into ``$LMAAS_HOME/runtime-adapters/<adapter_id>`` (atomically:
a temporary folder renamed into place) and then loaded by the engine; concurrent requests
for the same adapter wait for one load.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from pathlib import Path

from lmaas.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lmaas.engine.interface import EngineRequestError, InferenceEngine
from lmaas.protocol import AdapterState
from lmaas.store.artifacts import fetch_folder

__all__ = ["AdapterLoader"]

_ADAPTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


def check_adapter_id(adapter_id: str) -> str:
    if not _ADAPTER_ID.match(adapter_id):
        raise EngineRequestError(
            f"invalid adapter id {adapter_id!r}", code="invalid_adapter_id", param="adapter_id"
        )
    return adapter_id


class AdapterLoader:
    """Makes sure an adapter is loaded in `engine` before a request uses it."""

    def __init__(self, engine: InferenceEngine, cache_dir: Path) -> None:
        self.engine = engine
        self.cache_dir = cache_dir
        self._locks: dict[str, asyncio.Lock] = {}

    def is_loaded(self, adapter_id: str) -> bool:
        return any(a.adapter_id == adapter_id for a in self.engine.adapters())

    async def ensure_loaded(self, adapter_id: str, uri: str | None) -> None:
        check_adapter_id(adapter_id)
        if self.is_loaded(adapter_id):
            return
        if not uri:
            raise EngineRequestError(
                f"adapter {adapter_id!r} is not loaded and no adapter_uri was given",
                code="adapter_not_found",
                param="adapter_id",
                status=404,
            )
        await self.load(adapter_id, uri)

    async def load(self, adapter_id: str, uri: str, *, pin: bool = False) -> AdapterState:
        check_adapter_id(adapter_id)
        lock = self._locks.setdefault(adapter_id, asyncio.Lock())
        async with lock:
            for state in self.engine.adapters():
                if state.adapter_id == adapter_id:
                    return state
            folder = await asyncio.to_thread(self._fetch, adapter_id, uri)
            return await self.engine.load_adapter(adapter_id, folder, pin=pin)

    def _fetch(self, adapter_id: str, uri: str) -> Path:
        final = self.cache_dir / adapter_id
        if (final / ADAPTER_CONFIG).is_file() and (final / ADAPTER_WEIGHTS).is_file():
            return final
        tmp = self.cache_dir / f".tmp-{adapter_id}-{uuid.uuid4().hex[:8]}"
        try:
            fetch_folder(uri, [ADAPTER_CONFIG, ADAPTER_WEIGHTS], tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        except FileNotFoundError as exc:
            raise EngineRequestError(
                f"adapter {adapter_id!r} has no files at its URI (deleted?)",
                code="adapter_not_found",
                param="adapter_id",
                status=404,
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    async def unload(self, adapter_id: str) -> None:
        check_adapter_id(adapter_id)
        await self.engine.unload_adapter(adapter_id)
        await asyncio.to_thread(shutil.rmtree, self.cache_dir / adapter_id, True)
