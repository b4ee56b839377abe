"""Task `lmaas.finetune.run_job` and the worker's sweeper of lost fine-tune jobs.

The task hands the job to `lmaas.finetune.job_runner.JobRunner`, which holds the job's
lease (heartbeat thread), trains, checkpoints to the artifact store and registers the
result. It is idempotent by job id: a finished job is left alone and a job another live
worker runs is refused, so a message delivered twice does no harm. Messages are
acknowledged after the task (`acks_late`, the app's default).

A worker that dies (SIGKILL, out of memory, a lost node) never acknowledges its message:

- over **Redis** the message is delivered again once `LMAAS_BROKER_VISIBILITY_TIMEOUT_S`
  has passed (kombu's visibility timeout). If that happens while the job still runs (a job
  longer than the timeout), the second worker refuses it (fresh lease) and acknowledges
  it: should the first worker die later, no message is left;
- the embedded **SQLite** broker (kombu's SQLAlchemy transport) hides a message when it is
  received and never restores it, so nothing would ever run the job again.

So every worker also runs a **sweeper** (the recovery that always works; Redis's
redelivery is the quicker path when it applies): a thread started on `worker_ready` that every
`LMAAS_JOB_SWEEP_INTERVAL_S` calls `sweep_stale_jobs` — a `running` job whose heartbeat is
older than `LMAAS_JOB_LEASE_TIMEOUT_S` is requeued, a `queued` job nobody claimed within
that time is sent again — whatever the broker. We chose the worker over celery beat
(not run in embedded mode) and over the gateway (the worker is what `lmaas up` and a
cluster always run when jobs can run at all); compare-and-set updates make several
sweepers safe. The cost: a job queued behind a long one on a busy worker is re-sent once
per lease timeout; the extra messages are refused in milliseconds.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task, shared_task
from celery.signals import worker_init, worker_ready, worker_shutdown

from lmaas.finetune.job_lease import default_worker_name, sweep_stale_jobs
from lmaas.finetune.job_runner import JobRunner
from lmaas.tasks import FINETUNE_RUN_JOB
from lmaas.worker.app import worker_context

__all__ = ["JobSweeper", "run_job"]

log = logging.getLogger(__name__)


@shared_task(name=FINETUNE_RUN_JOB, bind=True)
def run_job(self: Task, job_id: str) -> str:
    """Run (or resume) the fine-tune job `job_id`; returns its status or why it did not run."""
    ctx = worker_context(self.app)
    return JobRunner(ctx.db, ctx.artifacts, ctx.settings, worker=default_worker_name()).run(job_id)


class JobSweeper(threading.Thread):
    """Re-sends lost fine-tune jobs of `app`'s deployment every `interval_s` (a daemon)."""

    def __init__(self, app: Celery) -> None:
        super().__init__(name="lmaas-job-sweeper", daemon=True)
        self.app = app
        self.settings = worker_context(app).settings
        self._halt = threading.Event()

    def sweep_once(self) -> list[str]:
        ctx = worker_context(self.app)
        sent = sweep_stale_jobs(
            ctx.db,
            lambda job_id: self.app.send_task(FINETUNE_RUN_JOB, args=[job_id]),
            lease_timeout_s=self.settings.job_lease_timeout_s,
        )
        if sent:
            log.warning("re-sent fine-tune jobs that lost their worker or message: %s", sent)
        return sent

    def run(self) -> None:
        while not self._halt.wait(self.settings.job_sweep_interval_s):
            try:
                self.sweep_once()
            except Exception:  # the database or broker blinked: next round
                log.exception("the fine-tune job sweep failed")

    def stop(self) -> None:
        self._halt.set()


_sweepers: dict[int, JobSweeper] = {}


@worker_init.connect
def _preload_training_libraries(**_: Any) -> None:
    """Import peft and transformers once in the worker's main process, before the pool
    forks: each job then starts training in about a second instead of after seconds of
    imports."""
    import peft  # noqa: F401
    import transformers  # noqa: F401


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None or getattr(app, "lmaas_context", None) is None:
        return
    if worker_context(app).settings.job_sweep_interval_s <= 0:
        return
    sweeper = JobSweeper(app)
    _sweepers[id(app)] = sweeper
    sweeper.start()


@worker_shutdown.connect
def _stop_sweepers(**_: Any) -> None:
    for sweeper in _sweepers.values():
        sweeper.stop()
    _sweepers.clear()
