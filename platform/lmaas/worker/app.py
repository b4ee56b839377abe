"""The worker's Celery application: the shared app factory plus the task modules.

Task implementations find the deployment's settings, database and artifact store through
`worker_context(task.app)`, built once per application (no module globals, so several apps
with different settings can live in one test process).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import cached_property

from celery import Celery

from lmaas.config import Settings
from lmaas.store import Database
from lmaas.store.artifacts import ArtifactStore
from lmaas.tasks import create_celery

__all__ = [
    "WORKER_TASK_MODULES",
    "WorkerContext",
    "create_worker_app",
    "run_worker",
    "worker_context",
]

WORKER_TASK_MODULES: list[str] = [
    "lmaas.worker.adapter_tasks",
    "lmaas.worker.finetune_tasks",
]


@dataclass
class WorkerContext:
    """What a task needs of its deployment."""

    settings: Settings

    @cached_property
    def db(self) -> Database:
        # The gateway owns migrations; a worker never races it for the schema.
        return Database(self.settings.resolved_database_url, run_migrations=False)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.settings.resolved_artifact_url)


def create_worker_app(settings: Settings) -> Celery:
    """The Celery app of the worker, with every task module registered."""
    app = create_celery(settings, include=WORKER_TASK_MODULES)
    app.lmaas_context = WorkerContext(settings)  # type: ignore[attr-defined]
    app.loader.import_default_modules()
    return app


def worker_context(app: Celery) -> WorkerContext:
    ctx = getattr(app, "lmaas_context", None)
    if ctx is None:
        raise RuntimeError("this Celery app was not made by lmaas.worker.create_worker_app")
    return ctx


def run_worker(settings: Settings, *, concurrency: int = 1, loglevel: str | None = None) -> None:
    """Run a worker in this process until it is stopped (SIGTERM: warm shutdown)."""
    app = create_worker_app(settings)
    app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel or settings.log_level}",
            f"--queues={settings.task_queue}",
            f"--concurrency={concurrency}",
            f"--hostname=lmaas-worker@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
