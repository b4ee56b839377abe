"""Sending fine-tune jobs to the Celery workers, by task name (no import of the worker).

The Celery application comes from `lmaas.tasks.create_celery`, so the operator uses the
same broker, queue (LMAAS_TASK_QUEUE) and serializer as the gateway and the workers. The
Celery task id is the job id, so a message sent twice (a crash between sending and
recording it) names the same job, and the worker, which reads the job row first, runs it
once.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from lmaas.config import Settings
from lmaas.tasks import FINETUNE_RUN_JOB, create_celery

__all__ = ["FINETUNE_RUN_JOB", "send_finetune_job"]


@lru_cache(maxsize=4)
def _app(broker_url: str, queue: str, home: str) -> Celery:
    return create_celery(Settings(broker_url=broker_url, task_queue=queue, home=home))


def send_finetune_job(settings: Settings, job_id: str) -> str:
    """Queue the job on the broker; returns the Celery task id (= the job id)."""
    app = _app(settings.resolved_broker_url, settings.task_queue, str(settings.home))
    result = app.send_task(FINETUNE_RUN_JOB, args=[job_id], task_id=job_id)
    return str(result.id)
