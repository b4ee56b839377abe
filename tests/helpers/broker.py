"""Read the Celery messages a process sent, straight from the deployment's real broker."""

from __future__ import annotations

from typing import Any

from lmaas.config import Settings
from lmaas.tasks import create_celery

__all__ = ["take_queued_tasks"]


def take_queued_tasks(settings: Settings) -> list[tuple[str, list[Any]]]:
    """Consume every message waiting on the task queue: (task name, positional args) each.

    A plain kombu consumer on the same broker and queue a worker reads (embedded: the SQLite
    transport under LMAAS_HOME), so a message found here is one a worker would receive.
    """
    app = create_celery(settings)
    found: list[tuple[str, list[Any]]] = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(settings.task_queue)
        try:
            while True:
                try:
                    message = queue.get(timeout=0.5)
                except queue.Empty:
                    break
                args, _kwargs, _embed = message.decode()
                found.append((message.headers["task"], list(args)))
                message.ack()
        finally:
            queue.close()
    return found
