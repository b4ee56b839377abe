"""`lmaas.finetune.run_job` on real `lmaas worker` processes: a worker SIGKILLed after its
first checkpoint loses nothing — a second worker (another machine: empty work folder)
resumes from the uploaded checkpoint and the job succeeds. Over Redis the unacknowledged
message comes back after the visibility timeout (the sweeper is off, to show it); over the
embedded SQLite broker, which never redelivers, the worker's sweeper re-sends the job."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import select

from lmaas.config import Settings
from lmaas.store import Database
from lmaas.store.models import Adapter, FineTuneJob
from lmaas.tasks import FINETUNE_RUN_JOB, create_celery, send_task
from tests.finetune.jobs import TINY_MODEL, checkpoints, create_job, events, job_settings

LEASE_TIMEOUT_S = 4


@pytest.fixture(
    params=[
        "sqlite-broker",
        pytest.param("redis-broker", marks=[pytest.mark.redis, pytest.mark.postgres]),
    ]
)
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path, redis_prefix: str
) -> Iterator[Settings]:
    """SQLite broker + SQLite database (`lmaas up`), or Redis + PostgreSQL (production)."""
    if request.param == "sqlite-broker":
        yield job_settings(
            tmp_path,
            f"sqlite:///{tmp_path / 'lmaas.db'}",
            tiny_model_dir,
            task_queue=f"lmaas-{redis_prefix}",
        )
        return
    postgres = request.getfixturevalue("postgres_url")
    yield job_settings(
        tmp_path,
        postgres,
        tiny_model_dir,
        broker_url=request.getfixturevalue("redis_url"),
        redis_prefix=redis_prefix,
        task_queue=f"lmaas-{redis_prefix}",
        job_sweep_interval_s=0,  # show that Redis itself redelivers
        # longer than delivery → kill → stale lease (a message redelivered while its job
        # still runs is refused and acknowledged: then only the sweeper recovers the job)
        broker_visibility_timeout_s=LEASE_TIMEOUT_S + 12,
    )
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("DROP SCHEMA public CASCADE"))
        conn.execute(sqlalchemy.text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    yield database
    database.dispose()


def start_worker(settings: Settings, home: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`lmaas worker` in a session of its own (so that its pool children die with it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
    env.update(
        LMAAS_HOME=str(home),
        LMAAS_DATABASE_URL=settings.resolved_database_url,
        LMAAS_BROKER_URL=settings.resolved_broker_url,
        LMAAS_TASK_QUEUE=settings.task_queue,
        LMAAS_REDIS_PREFIX=settings.redis_prefix,
        LMAAS_ARTIFACT_URL=settings.resolved_artifact_url,
        LMAAS_BASE_MODEL=str(settings.base_model),
        LMAAS_MODEL_NAME=settings.model_name,
        LMAAS_JOB_HEARTBEAT_S="0.5",
        LMAAS_JOB_LEASE_TIMEOUT_S=str(LEASE_TIMEOUT_S),
        LMAAS_JOB_SWEEP_INTERVAL_S=str(settings.job_sweep_interval_s and 1),
        LMAAS_BROKER_VISIBILITY_TIMEOUT_S=str(settings.broker_visibility_timeout_s),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "lmaas", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown; the whole session is killed if it does not end in time."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)


def wait_until(predicate, timeout_s: float, what: str, logs: list[Path]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise TimeoutError(f"{what} did not happen in {timeout_s}s\n{tails}")


def job_row(db: Database, job_id: str) -> FineTuneJob:
    with db.session() as session:
        job = session.get(FineTuneJob, job_id)
        assert job is not None
        return job


@pytest.mark.slow  # two worker processes and a lease timeout: ~40 s on a busy machine
def test_a_killed_worker_job_is_resumed_by_another_worker(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    job_id = create_job(
        db,
        settings,
        tmp_path,
        examples=24,
        hyperparameters={"n_epochs": 5, "batch_size": 2, "checkpoint_every": 10},
    )
    logs = [tmp_path / "machine-1.log", tmp_path / "machine-2.log"]
    with open(logs[0], "wb") as log1, open(logs[1], "wb") as log2:
        workers = [
            start_worker(settings, tmp_path / "machine-1", log1),
            start_worker(settings, tmp_path / "machine-2", log2),
        ]
        try:
            send_task(create_celery(settings), FINETUNE_RUN_JOB, job_id)
            wait_until(lambda: checkpoints(db, job_id), 120, "a first checkpoint", logs)
            # the worker (a pool process) holding the job: its session is one `lmaas worker`
            holder = os.getpgid(int(job_row(db, job_id).worker.rsplit(":", 1)[1]))
            os.killpg(holder, signal.SIGKILL)
            killed = next(w for w in workers if w.pid == holder)
            killed.wait(timeout=30)
            killed_at = job_row(db, job_id)
            saved = max(c.step for c in checkpoints(db, job_id))
            assert killed_at.status == "running" and killed_at.step < killed_at.total_steps
            wait_until(
                lambda: job_row(db, job_id).status in ("succeeded", "failed"), 180, "the end", logs
            )
        finally:
            for worker in workers:
                stop(worker)

    job = job_row(db, job_id)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2 and job.step == job.total_steps
    resumed = [e.data["step"] for e in events(db, job_id) if e.message.startswith("resumed from")]
    assert resumed == [saved] and saved > 0
    survivor = "machine-2" if holder == workers[0].pid else "machine-1"
    assert job.worker != killed_at.worker
    assert (tmp_path / survivor / "finetune-jobs").is_dir()  # it ran there …
    assert not (tmp_path / survivor / "finetune-jobs" / job_id).exists()  # … and cleaned up
    with db.session() as session:
        adapter = session.execute(
            select(Adapter).where(Adapter.name == job.fine_tuned_model)
        ).scalar_one()
    assert adapter.base_model == TINY_MODEL and adapter.status == "ready"


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_the_sweeper_sends_a_job_whose_message_was_lost(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """No message was ever sent for this queued job (or it was lost): the worker's sweeper
    sends it once the lease timeout has passed, and an in-thread worker runs it."""
    from celery.contrib.testing.worker import start_worker as start_thread_worker

    from lmaas.worker import create_worker_app
    from lmaas.worker.finetune_tasks import JobSweeper

    settings = job_settings(
        tmp_path, f"sqlite:///{tmp_path / 'lmaas.db'}", tiny_model_dir, job_lease_timeout_s=1
    )
    database = Database(settings.resolved_database_url)
    try:
        job_id = create_job(database, settings, tmp_path)
        app = create_worker_app(settings)
        assert FINETUNE_RUN_JOB in app.tasks
        sweeper = JobSweeper(app)
        assert sweeper.sweep_once() == []  # just created: its message may still come
        time.sleep(1.1)
        with start_thread_worker(app, perform_ping_check=False, pool="solo", shutdown_timeout=30):
            assert sweeper.sweep_once() == [job_id]
            wait_until(lambda: job_row(database, job_id).status == "succeeded", 120, "the job", [])
        job = job_row(database, job_id)
        assert job.attempts == 1 and job.fine_tuned_model
    finally:
        database.dispose()
