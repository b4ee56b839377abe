"""The embedded `ScaleBackend` (`lmaas up`): runtime processes on this machine, on demand.

One service: the configured base model (``LMAAS_MODEL_NAME``). Scaling it up starts
``lmaas runtime`` on a free local port with the gateway's own settings; scaling it to zero
stops it (SIGTERM, then SIGKILL after the grace period). Its output goes to
``$LMAAS_HOME/logs/runtime.log`` unless the gateway writes to a terminal, where it
shares the gateway's output.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from lmaas.config import Settings
from lmaas.gateway.activator.backend import BackendError, ServiceInfo
from lmaas.gateway.activator.runtime_process import RuntimeProcess, reap_orphans
from lmaas.gateway.routing import TenantRef

__all__ = ["EmbeddedBackend", "runtime_env"]

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


class EmbeddedBackend:
    """Runtime processes of the configured model, started and stopped by the gateway."""

    def __init__(
        self,
        settings: Settings,
        *,
        grace_s: float = 30.0,
        log_path: Path | None = None,
        replicas: int = 1,
    ) -> None:
        self.settings = settings
        self.run_dir = settings.home / "run"
        self.grace_s = grace_s
        self.replicas = replicas
        self.log_path = log_path
        self._processes: list[RuntimeProcess] = []
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedBackend:
        to_terminal = os.isatty(1)
        log_path = None if to_terminal else settings.home / "logs" / "runtime.log"
        return cls(settings, log_path=log_path)

    def _alive(self) -> list[RuntimeProcess]:
        self._processes = [p for p in self._processes if p.process.returncode is None]
        return [p for p in self._processes if p.alive]

    @property
    def processes(self) -> list[RuntimeProcess]:
        """The runtime processes running now."""
        return self._alive()

    async def start(self) -> None:
        stopped = await asyncio.to_thread(reap_orphans, self.run_dir)
        if stopped:
            log.warning("stopped %d runtime(s) a previous gateway left running", len(stopped))

    async def lookup(self, model: str, tenant: TenantRef | None = None) -> ServiceInfo | None:
        # One service, shared by every tenant of this machine.
        if model != self.settings.model_name:
            return None
        idle = self.settings.idle_timeout_s
        return ServiceInfo(key=model, model=model, scale_to_zero=idle > 0, idle_timeout_s=idle)

    async def current_replicas(self, service: ServiceInfo) -> int:
        return len(self._alive())

    async def scale_up(self, service: ServiceInfo) -> int:
        async with self._lock:
            while len(self._alive()) < self.replicas:
                port = _free_port()
                try:
                    process = await RuntimeProcess.spawn(
                        port=port,
                        env=runtime_env(self.settings, port),
                        run_dir=self.run_dir,
                        log_path=self.log_path,
                    )
                except OSError as exc:
                    raise BackendError(f"could not start a runtime process: {exc}") from exc
                self._processes.append(process)
        return self.replicas

    async def follow_plan(self, service: ServiceInfo) -> tuple[int, int]:
        alive = len(self._alive())  # a fixed size: nothing to follow
        return alive, alive

    async def scale_to_zero(self, service: ServiceInfo) -> None:
        await self._stop(list(self._processes))

    async def endpoints(self, service: ServiceInfo) -> Sequence[str]:
        return [p.url for p in self._alive()]

    async def discard(self, service: ServiceInfo, url: str) -> None:
        await self._stop([p for p in self._processes if p.url == url])

    def placed_adapters(self, url: str) -> set[str]:
        return set()  # adapters load on demand; nothing places them

    async def _stop(self, processes: list[RuntimeProcess]) -> None:
        async with self._lock:
            await asyncio.gather(*(p.stop(self.grace_s) for p in processes))
            self._processes = [p for p in self._processes if p not in processes]

    async def aclose(self) -> None:
        await self._stop(list(self._processes))
