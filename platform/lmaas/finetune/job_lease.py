"""The lease of a fine-tune job: claim it, keep it, end it; and the sweeper of lost jobs.

The job row is the truth. `claim_job` leaves a terminal job (succeeded, failed, cancelled)
alone, so a job run twice changes nothing, and refuses a `running` job whose worker sent a
heartbeat less than the lease timeout ago (unless that worker was a process of this host
that is gone, e.g. a pool process killed for memory). Otherwise one compare-and-set UPDATE
(on `attempts`) makes it the caller's: status running, `worker`, ``attempts + 1``,
`heartbeat_at`. The pair (worker, attempts) is the lease (`Claim`): every later write is
conditional on it (`lease_filter`), so a worker that lost its lease (declared dead, then
woke up) can no longer change the job. `Heartbeat` renews it from a thread; `finish` ends
the job in one transaction with whatever rows come with the end.

`sweep_stale_jobs` finds the jobs that lost their worker (a `running` job whose heartbeat
is older than the lease timeout: requeued) or their message (a `queued` job nobody claimed
within the lease timeout) and sends the task again; see `lmaas.worker.finetune_tasks`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from lmaas.store import Database
from lmaas.store.models import FineTuneJob, JobEvent, utcnow

__all__ = [
    "TERMINAL_STATUSES",
    "Claim",
    "Heartbeat",
    "LeaseLost",
    "add_event",
    "claim_job",
    "default_worker_name",
    "finish",
    "lease_filter",
    "requeue",
    "sweep_stale_jobs",
]

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class LeaseLost(Exception):
    """Another worker owns the job now (ours was declared dead): stop, write nothing."""


@dataclass(frozen=True)
class Claim:
    """The lease this worker holds on a job: writes are conditional on (worker, attempt)."""

    job_id: str
    worker: str
    attempt: int


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _died_on_this_host(worker: str | None) -> bool:
    """Whether `worker` (``host:pid``) was a process of this host that no longer exists
    (a pool process killed, e.g. out of memory: its message comes back at once)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _aware(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back (stored in UTC); PostgreSQL aware ones."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def add_event(
    session: Session, job_id: str, message: str, level: str = "info", **data: Any
) -> None:
    session.add(JobEvent(job_id=job_id, level=level, message=message, data=data or None))


def lease_filter(claim: Claim) -> tuple[Any, ...]:
    return (
        FineTuneJob.id == claim.job_id,
        FineTuneJob.status == "running",
        FineTuneJob.worker == claim.worker,
        FineTuneJob.attempts == claim.attempt,
    )


def claim_job(
    db: Database,
    job_id: str,
    worker: str,
    *,
    lease_timeout_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> Claim | str:
    """Take the lease on `job_id`, or say why not (``missing``, ``terminal``, ``leased``,
    ``raced``, or the terminal status it was moved to: ``cancelled``, ``failed``)."""
    now = now or utcnow()
    with db.session() as session:
        job = session.get(FineTuneJob, job_id)
        if job is None:
            return "missing"
        if job.status in TERMINAL_STATUSES:
            return "terminal"
        heartbeat = _aware(job.heartbeat_at)
        fresh = heartbeat is not None and now - heartbeat < timedelta(seconds=lease_timeout_s)
        held = job.status == "running" and fresh and job.worker != worker
        if held and not _died_on_this_host(job.worker):
            return "leased"
        attempt = job.attempts + 1  # read before the UPDATE (which refreshes `job`)
        seen = (FineTuneJob.id == job_id, FineTuneJob.attempts == job.attempts)
        seen_status = FineTuneJob.status == job.status
        if job.cancel_requested:
            values: dict[str, Any] = {"status": "cancelled", "finished_at": now}
            outcome, message = "cancelled", "The job was cancelled before it ran"
        elif job.attempts >= max_attempts:
            values = {
                "status": "failed",
                "finished_at": now,
                "error": {
                    "code": "job_interrupted",
                    "message": f"the job was interrupted {job.attempts} times (its worker "
                    "stopped, e.g. out of memory); lower batch_size or max_seq_len, or create "
                    "the job again",
                    "param": None,
                },
            }
            outcome, message = "failed", "The job was interrupted too often"
        else:
            values = {
                "status": "running",
                "worker": worker,
                "attempts": attempt,
                "heartbeat_at": now,
                "started_at": job.started_at or now,
                "error": None,
            }
            outcome = "claimed"
            message = (
                "Fine-tuning job started"
                if job.attempts == 0
                else f"Fine-tuning job resumed (attempt {attempt})"
            )
        result = session.execute(update(FineTuneJob).where(*seen, seen_status).values(**values))
        if result.rowcount != 1:
            return "raced"
        add_event(session, job_id, message, worker=worker, attempt=attempt)
    if outcome != "claimed":
        return outcome
    return Claim(job_id, worker, attempt)


def sweep_stale_jobs(
    db: Database,
    send: Callable[[str], None],
    *,
    lease_timeout_s: float,
    now: datetime | None = None,
) -> list[str]:
    """Requeue jobs whose worker died and re-send jobs whose message was lost; their ids.

    A `running` job whose heartbeat is older than the lease timeout goes back to `queued`
    (its old worker, if it wakes up, has lost its lease). A `queued` job not claimed within
    the lease timeout of its creation (or of the last re-send, kept in `heartbeat_at`) is
    sent again. Each change is a compare-and-set, so concurrent sweepers send once;
    a duplicate message is harmless (a claimed or finished job refuses it).
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=lease_timeout_s)
    sent: list[str] = []
    with db.session() as session:
        stale = session.execute(
            select(FineTuneJob.id, FineTuneJob.status, FineTuneJob.heartbeat_at, FineTuneJob.worker)
            .where(
                or_(
                    (FineTuneJob.status == "running")
                    & or_(FineTuneJob.heartbeat_at.is_(None), FineTuneJob.heartbeat_at < cutoff),
                    (FineTuneJob.status == "queued")
                    & or_(
                        FineTuneJob.heartbeat_at < cutoff,
                        FineTuneJob.heartbeat_at.is_(None) & (FineTuneJob.created_at < cutoff),
                    ),
                )
            )
            .order_by(FineTuneJob.created_at)
        ).all()
        for job_id, status, heartbeat, worker in stale:
            same_heartbeat = (
                FineTuneJob.heartbeat_at.is_(None)
                if heartbeat is None
                else FineTuneJob.heartbeat_at == heartbeat
            )
            changed = session.execute(
                update(FineTuneJob)
                .where(FineTuneJob.id == job_id, FineTuneJob.status == status, same_heartbeat)
                .values(status="queued", heartbeat_at=now)
            ).rowcount
            if changed != 1:
                continue
            if status == "running":
                add_event(
                    session,
                    job_id,
                    f"The worker {worker} stopped sending heartbeats; the job was requeued "
                    "and resumes from its last checkpoint",
                    level="warning",
                    worker=worker,
                )
            sent.append(job_id)
    for job_id in sent:
        send(job_id)
    return sent


class Heartbeat(threading.Thread):
    """Refreshes the lease every `interval_s` until stopped; sets `lost` if it was taken."""

    def __init__(self, db: Database, claim: Claim, interval_s: float, lost: threading.Event):
        super().__init__(name=f"heartbeat-{claim.job_id}", daemon=True)
        self.db, self.claim, self.interval_s, self.lost = db, claim, interval_s, lost
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                with self.db.session() as session:
                    changed = session.execute(
                        update(FineTuneJob)
                        .where(*lease_filter(self.claim))
                        .values(heartbeat_at=utcnow())
                    ).rowcount
                if changed != 1:
                    log.warning("job %s: lease lost, stopping", self.claim.job_id)
                    self.lost.set()
                    return
            except Exception:  # the database blinked: try again at the next beat
                log.exception("job %s: heartbeat failed", self.claim.job_id)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def finish(
    db: Database,
    claim: Claim,
    status: str,
    message: str,
    *,
    level: str = "info",
    session_work: Callable[[Session], None] | None = None,
    **values: Any,
) -> None:
    """End the job (if we still hold its lease): status, finished_at, an event, and what
    `session_work` adds in the same transaction; `LeaseLost` otherwise."""
    with db.session() as session:
        if session_work is not None:
            session_work(session)
        changed = session.execute(
            update(FineTuneJob)
            .where(*lease_filter(claim))
            .values(status=status, finished_at=utcnow(), heartbeat_at=utcnow(), **values)
        ).rowcount
        if changed != 1:
            session.rollback()
            raise LeaseLost(claim.job_id)
        add_event(session, claim.job_id, message, level=level)


def requeue(db: Database, claim: Claim, message: str) -> bool:
    """Give the job back (status queued) if we still hold it; the sweeper sends it again
    after a lease timeout and it resumes from its last checkpoint. False if the database
    cannot be reached (the lease then simply expires)."""
    try:
        with db.session() as session:
            changed = session.execute(
                update(FineTuneJob)
                .where(*lease_filter(claim))
                .values(status="queued", heartbeat_at=utcnow())
            ).rowcount
            if changed == 1:
                add_event(session, claim.job_id, message, level="warning")
            return changed == 1
    except SQLAlchemyError:
        log.exception("job %s: could not requeue (its lease will expire)", claim.job_id)
        return False
