"""The embedded `ScaleBackend` (`lmaas up`): runtime processes on this machine, on demand.

Services: the configured base model (``LMAAS_MODEL_NAME``), shared by every tenant, and
each tenant's own full fine-tunes (tenant-owned `ServedModel` rows, e.g. QFT results),
served to their owner only. Scaling a service up starts ``lmaas runtime`` on a free local
port with the gateway's own settings — for a tenant's model, with ``LMAAS_BASE_MODEL`` set to
its stored folder (copied into ``$LMAAS_HOME/models`` first when the artifact store is not
local) and ``LMAAS_MODEL_NAME`` to its name; scaling it to zero stops its processes
(SIGTERM, then SIGKILL after the grace period). Each service scales to zero on its own
after ``LMAAS_IDLE_TIMEOUT_S``. Output goes to ``$LMAAS_HOME/logs/runtime.log`` unless the
gateway writes to a terminal, where it shares the gateway's output.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import select

from lmaas.config import Settings
from lmaas.gateway.activator.backend import BackendError, ServiceInfo
from lmaas.gateway.activator.runtime_process import RuntimeProcess, reap_orphans
from lmaas.gateway.routing import TenantRef
from lmaas.store import Database, ServedModel
from lmaas.store.artifacts import local_model_folder

__all__ = ["EmbeddedBackend", "ModelFinder", "runtime_env", "stored_model_finder"]

ModelFinder = Callable[[str, TenantRef], Awaitable[str | None]]
"""``(model, tenant)`` → the URI of the tenant's own model of that name, or None."""

log = logging.getLogger(__name__)

# The runtime needs none of these; keep secrets out of its environment.
_NOT_FOR_RUNTIME = {"admin_token", "database_url", "broker_url", "redis_url"}


def runtime_env(settings: Settings, port: int) -> dict[str, str]:
    """The environment of a runtime with `settings`, listening on 127.0.0.1:`port`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None or name in _NOT_FOR_RUNTIME:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"LMAAS_{name.upper()}"] = str(value)
    env.update(LMAAS_RUNTIME_HOST="127.0.0.1", LMAAS_RUNTIME_PORT=str(port))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stored_model_finder(db: Database) -> ModelFinder:
    """Finds a tenant's own models in the database (`ServedModel` rows with its tenant_id)."""

    def find(model: str, tenant_id: str) -> str | None:
        with db.session() as session:
            return session.execute(
                select(ServedModel.uri).where(
                    ServedModel.id == model, ServedModel.tenant_id == tenant_id
                )
            ).scalar_one_or_none()

    async def finder(model: str, tenant: TenantRef) -> str | None:
        return await asyncio.to_thread(find, model, tenant.id)

    return finder


class EmbeddedBackend:
    """Runtime processes of the configured model and of tenants' own models, started and
    stopped by the gateway (one set of processes per service)."""

    def __init__(
        self,
        settings: Settings,
        *,
        grace_s: float = 30.0,
        log_path: Path | None = None,
        replicas: int = 1,
        find_model: ModelFinder | None = None,
    ) -> None:
        self.settings = settings
        self.run_dir = settings.home / "run"
        self.grace_s = grace_s
        self.replicas = replicas
        self.log_path = log_path
        self.find_model = find_model
        self._processes: dict[str, list[RuntimeProcess]] = {}
        self._model_uris: dict[str, str] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, find_model: ModelFinder | None = None
    ) -> EmbeddedBackend:
        to_terminal = os.isatty(1)
        log_path = None if to_terminal else settings.home / "logs" / "runtime.log"
        return cls(settings, log_path=log_path, find_model=find_model)

    def _alive(self, key: str | None = None) -> list[RuntimeProcess]:
        """The live processes of service `key` (None: of every service)."""
        for k, processes in self._processes.items():
            self._processes[k] = [p for p in processes if p.process.returncode is None]
        keys = list(self._processes) if key is None else [key]
        return [p for k in keys for p in self._processes.get(k, []) if p.alive]

    @property
    def processes(self) -> list[RuntimeProcess]:
        """The runtime processes running now (every service)."""
        return self._alive()

    async def start(self) -> None:
        stopped = await asyncio.to_thread(reap_orphans, self.run_dir)
        if stopped:
            log.warning("stopped %d runtime(s) a previous gateway left running", len(stopped))

    async def lookup(self, model: str, tenant: TenantRef | None = None) -> ServiceInfo | None:
        idle = self.settings.idle_timeout_s
        if model == self.settings.model_name:  # shared by every tenant of this machine
            return ServiceInfo(key=model, model=model, scale_to_zero=idle > 0, idle_timeout_s=idle)
        if tenant is None or self.find_model is None:
            return None
        try:
            uri = await self.find_model(model, tenant)
        except Exception as exc:
            raise BackendError(f"cannot look up the model {model!r}: {exc}") from exc
        if uri is None:
            return None
        self._model_uris[model] = uri
        return ServiceInfo(
            key=model,
            model=model,
            scale_to_zero=idle > 0,
            idle_timeout_s=idle,
            tenant=tenant.name,
        )

    async def current_replicas(self, service: ServiceInfo) -> int:
        return len(self._alive(service.key))

    async def _env(self, service: ServiceInfo, port: int) -> dict[str, str]:
        env = runtime_env(self.settings, port)
        if service.key == self.settings.model_name:
            return env
        uri = self._model_uris.get(service.key)
        if uri is None:
            raise BackendError(f"no stored model known for {service.key!r}")
        try:
            folder = await asyncio.to_thread(local_model_folder, uri, self.settings.model_cache_dir)
        except OSError as exc:
            raise BackendError(f"cannot fetch the model {service.key!r}: {exc}") from exc
        env.update(LMAAS_BASE_MODEL=str(folder), LMAAS_MODEL_NAME=service.model)
        return env

    async def scale_up(self, service: ServiceInfo) -> int:
        async with self._lock:
            while len(self._alive(service.key)) < self.replicas:
                port = _free_port()
                env = await self._env(service, port)
                try:
                    process = await RuntimeProcess.spawn(
                        port=port, env=env, run_dir=self.run_dir, log_path=self.log_path
                    )
                except OSError as exc:
                    raise BackendError(f"could not start a runtime process: {exc}") from exc
                self._processes.setdefault(service.key, []).append(process)
        return self.replicas

    async def follow_plan(self, service: ServiceInfo) -> tuple[int, int]:
        alive = len(self._alive(service.key))  # a fixed size: nothing to follow
        return alive, alive

    async def scale_to_zero(self, service: ServiceInfo) -> None:
        await self._stop(list(self._processes.get(service.key, [])))

    async def endpoints(self, service: ServiceInfo) -> Sequence[str]:
        return [p.url for p in self._alive(service.key)]

    async def discard(self, service: ServiceInfo, url: str) -> None:
        await self._stop([p for p in self._processes.get(service.key, []) if p.url == url])

    def placed_adapters(self, url: str) -> set[str]:
        return set()  # adapters load on demand; nothing places them

    async def _stop(self, processes: list[RuntimeProcess]) -> None:
        async with self._lock:
            await asyncio.gather(*(p.stop(self.grace_s) for p in processes))
            for key, running in self._processes.items():
                self._processes[key] = [p for p in running if p not in processes]

    async def aclose(self) -> None:
        await self._stop([p for running in self._processes.values() for p in running])
