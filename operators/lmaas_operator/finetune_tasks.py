"""Sending fine-tune jobs to the Celery workers, by task name (no import of the worker).

The task `lmaas.finetune.run_job` takes the job id; the Celery task id is the job id too,
so a message sent twice (a crash between sending and recording it) names the same job
and the worker, which reads the job row first, runs it once.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

__all__ = ["FINETUNE_TASK", "send_finetune_job"]

FINETUNE_TASK = "lmaas.finetune.run_job"


@lru_cache(maxsize=4)
def _app(broker_url: str) -> Celery:
    return Celery("lmaas-operator", broker=broker_url, set_as_current=False)


def send_finetune_job(broker_url: str, job_id: str, *, queue: str = "celery") -> str:
    """Queue the job on the broker; returns the Celery task id (= the job id)."""
    result = _app(broker_url).send_task(FINETUNE_TASK, args=[job_id], task_id=job_id, queue=queue)
    return str(result.id)
