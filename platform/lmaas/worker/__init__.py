"""The Celery worker: runs lmaas's background tasks (adapter verification, fine-tunes)."""

from lmaas.worker.app import WORKER_TASK_MODULES, create_worker_app, run_worker

__all__ = ["WORKER_TASK_MODULES", "create_worker_app", "run_worker"]
