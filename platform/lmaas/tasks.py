"""Background tasks by name: the Celery application factory and the task names.

A library part: the gateway sends tasks by name (`send_task`) without importing the worker,
and the worker (`lmaas.worker`) registers the implementations under the same names.

Broker: `Settings.resolved_broker_url` — kombu's SQLAlchemy transport on a SQLite file under
``LMAAS_HOME`` in embedded mode (no server), ``redis://…`` in production. Every task is
acknowledged after it ran (`acks_late`) and requeued if its worker process dies
(`reject_on_worker_lost`); a worker takes one message at a time (prefetch 1), so a long
fine-tune never holds other messages hostage. Over Redis, a message whose worker died is
delivered again after `Settings.broker_visibility_timeout_s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from lmaas.config import Settings

__all__ = ["FINETUNE_RUN_JOB", "TASK_NAMES", "VERIFY_ADAPTER", "create_celery", "send_task"]

VERIFY_ADAPTER = "lmaas.adapters.verify"
"""args: (adapter_id,) — check the stored adapter's tensors; mark it verified or failed."""

FINETUNE_RUN_JOB = "lmaas.finetune.run_job"
"""args: (job_id,) — run (or resume) the fine-tune job `job_id`; reserved for lmaas.finetune."""

TASK_NAMES = (VERIFY_ADAPTER, FINETUNE_RUN_JOB)


def create_celery(settings: Settings, *, include: Sequence[str] = ()) -> Celery:
    """The Celery application of a deployment; `include` names modules defining tasks."""
    broker = settings.resolved_broker_url
    transport_options: dict[str, Any] = {}
    if broker.startswith(("sqla+sqlite", "sqlalchemy+sqlite")):
        settings.home.mkdir(parents=True, exist_ok=True)
        # Passed to sqlalchemy.create_engine: wait for SQLite's lock instead of failing.
        transport_options = {"connect_args": {"timeout": 30}}
    elif broker.startswith(("redis", "rediss")):
        # An unacknowledged message (its worker died mid-task) is delivered again once the
        # visibility timeout has passed; kombu looks for such messages every
        # interval × throttle seconds (100 s by default), so look every tenth of the timeout
        # (1-10 s). The key prefix keeps deployments sharing one Redis apart (also their
        # "unacked" sets, which each worker sweeps with its own timeout).
        visibility = settings.broker_visibility_timeout_s
        transport_options = {
            "visibility_timeout": visibility,
            "unacked_restore_interval": min(10.0, max(1.0, visibility / 10)),
            "unacked_restore_throttle": 1,
            "global_keyprefix": f"{settings.redis_prefix}:",
        }
    app = Celery("lmaas", broker=broker, include=list(include), set_as_current=False)
    app.conf.update(
        task_default_queue=settings.task_queue,
        task_default_exchange=settings.task_queue,
        task_default_routing_key=settings.task_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        enable_utc=True,
    )
    return app


def send_task(app: Celery, name: str, *args: Any) -> str:
    """Queue the task `name` with positional `args`; returns the task id."""
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")
    return app.send_task(name, args=list(args)).id
