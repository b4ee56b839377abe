"""`JobRunner` runs fine-tune jobs from the database: the result is served, progress and
checkpoints are recorded, a dead worker's job resumes, cancel and bad data end it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from lmaas.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, parse_adapter
from lmaas.config import Settings
from lmaas.engine.reference_engine import ReferenceEngine
from lmaas.finetune import job_runner
from lmaas.finetune.job_lease import claim_job, sweep_stale_jobs
from lmaas.finetune.job_runner import JobRunner
from lmaas.store import Database
from lmaas.store.artifacts import ArtifactStore, fetch_folder
from lmaas.store.models import Adapter, FineTuneJob, JobEvent, ServedModel, utcnow
from tests.finetune.helpers import arithmetic_chats, write_jsonl
from tests.finetune.jobs import TINY_MODEL, checkpoints, create_job, events, job_settings

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture
def settings(tmp_path: Path, database_url: str, tiny_model_dir: Path) -> Settings:
    return job_settings(tmp_path, database_url, tiny_model_dir)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    yield database
    database.dispose()


def runner(db: Database, settings: Settings, worker: str = "w1") -> JobRunner:
    return JobRunner(db, ArtifactStore(settings.resolved_artifact_url), settings, worker=worker)


def get_job(db: Database, job_id: str) -> FineTuneJob:
    with db.session() as session:
        job = session.get(FineTuneJob, job_id)
        assert job is not None
        return job


def test_a_lora_job_is_served_as_an_adapter_with_events_and_checkpoints(
    db: Database, settings: Settings, tmp_path: Path, tiny_model_dir: Path
) -> None:
    job_id = create_job(db, settings, tmp_path, hyperparameters={"checkpoint_every": 1})
    assert runner(db, settings).run(job_id) == "succeeded"

    job = get_job(db, job_id)
    name = f"ft:{TINY_MODEL}:acme:sum:{job_id}"
    assert job.status == "succeeded" and job.fine_tuned_model == name and job.error is None
    assert job.step == job.total_steps == 8 and job.attempts == 1 and job.trained_tokens > 0
    assert job.finished_at is not None and job.started_at is not None
    with db.session() as session:
        adapter = session.execute(select(Adapter).where(Adapter.name == name)).scalar_one()
    assert adapter.tenant_id == job.tenant_id and adapter.base_model == TINY_MODEL
    assert (adapter.rank, adapter.alpha, adapter.source, adapter.status) == (
        4,
        8.0,
        "finetune",
        "ready",
    )
    assert "q_proj" in adapter.target_modules
    files = fetch_folder(adapter.uri, [ADAPTER_CONFIG, ADAPTER_WEIGHTS], tmp_path / "fetched")
    assert parse_adapter(files).rank == 4
    engine = ReferenceEngine(tiny_model_dir, model_name=TINY_MODEL, device="cpu")
    try:  # the runtime loads it like an uploaded adapter
        state = asyncio.run(engine.load_adapter(adapter.id, files))
        assert state.rank == 4
    finally:
        asyncio.run(engine.shutdown())

    messages = [e.message for e in events(db, job_id)]
    assert messages[0] == "Fine-tuning job started"
    assert "Step 2/8: training loss=" in " ".join(messages)
    assert [m for m in messages if m.startswith("Checkpoint")] == [
        f"Checkpoint created at step {s}" for s in range(1, 8)
    ]
    assert messages[-1].startswith("The job has successfully completed")
    progress = [e.data for e in events(db, job_id) if e.message.startswith("Step ")]
    assert [p["step"] for p in progress] == [1, 2, 4, 6, 8]
    assert all(p["total_steps"] == 8 and p["train_loss"] > 0 for p in progress)
    stored = checkpoints(db, job_id)
    assert [c.step for c in stored] == [5, 6, 7]  # the newest three are kept
    assert all(c.metrics["train_loss"] > 0 for c in stored)
    fetch_folder(stored[-1].uri, job_runner.CHECKPOINT_FILES, tmp_path / "ckpt")
    store = ArtifactStore(settings.resolved_artifact_url)
    folder = f"tenants/{job.tenant_id}/fine_tuning/{job_id}/checkpoints"
    assert not store.exists(f"{folder}/step-00000004") and store.exists(f"{folder}/step-00000005")
    assert not (settings.home / "finetune-jobs" / job_id).exists(), "work folder cleaned up"

    # running it again (a redelivered message) changes nothing
    before = {c: getattr(job, c) for c in FineTuneJob.__mapper__.columns.keys()}  # noqa: SIM118
    assert runner(db, settings, worker="w2").run(job_id) == "terminal"
    after = get_job(db, job_id)
    assert {c: getattr(after, c) for c in before} == before
    assert len(events(db, job_id)) == len(messages)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Adapter)) == 1


def test_a_dead_workers_job_resumes_from_its_uploaded_checkpoint(
    db: Database, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(db, settings, tmp_path, hyperparameters={"checkpoint_every": 3})

    class WorkerDied(BaseException):
        pass

    original = job_runner._ClaimedJob._on_checkpoint

    def die_after_upload(self, info):  # type: ignore[no-untyped-def]
        original(self, info)
        raise WorkerDied

    monkeypatch.setattr(job_runner._ClaimedJob, "_on_checkpoint", die_after_upload)
    with pytest.raises(WorkerDied):
        runner(db, settings, "w1").run(job_id)
    monkeypatch.undo()
    assert get_job(db, job_id).status == "running" and get_job(db, job_id).step == 3

    # another machine (empty work folder) while w1's lease is fresh: refused
    other = settings.model_copy(update={"home": tmp_path / "other-home"})
    assert runner(db, other, "w2").run(job_id) == "leased"
    with db.session() as session:  # the lease runs out
        session.get(FineTuneJob, job_id).heartbeat_at = utcnow() - timedelta(hours=1)
    assert runner(db, other, "w2").run(job_id) == "succeeded"

    job = get_job(db, job_id)
    assert job.attempts == 2 and job.worker == "w2" and job.step == 8
    resumed = [e for e in events(db, job_id) if e.message.startswith("resumed from the checkpoint")]
    assert [e.data["step"] for e in resumed] == [3]
    assert any("resumed (attempt 2)" in e.message for e in events(db, job_id))


def test_cancel_stops_the_job_within_one_step(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    job_id = create_job(db, settings, tmp_path, hyperparameters={"n_epochs": 100})
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runner(db, settings).run(job_id)))
    thread.start()
    deadline = time.monotonic() + 60
    while get_job(db, job_id).step < 2:
        assert time.monotonic() < deadline, "the job never reached step 2"
        time.sleep(0.01)
    with db.session() as session:
        session.execute(
            update(FineTuneJob).where(FineTuneJob.id == job_id).values(cancel_requested=True)
        )
    step_at_cancel = get_job(db, job_id).step  # at least the step when the flag was set
    thread.join(timeout=60)
    job = get_job(db, job_id)
    assert outcome == ["cancelled"] and job.status == "cancelled"
    assert step_at_cancel <= job.step <= step_at_cancel + 1 < job.total_steps
    assert job.fine_tuned_model is None and job.finished_at is not None
    assert events(db, job_id)[-1].message == f"The job was cancelled at step {job.step}"


def test_a_queued_job_cancelled_before_it_runs_never_trains(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    job_id = create_job(db, settings, tmp_path)
    with db.session() as session:
        session.get(FineTuneJob, job_id).cancel_requested = True
    assert runner(db, settings).run(job_id) == "cancelled"
    assert get_job(db, job_id).step == 0 and get_job(db, job_id).status == "cancelled"


def test_a_bad_training_file_fails_the_job_naming_the_line(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    good = [json.dumps(r) for r in arithmetic_chats(3)]
    bad.write_text("\n".join([good[0], good[1], '{"messages": [{"role": "user"', good[2]]) + "\n")
    job_id = create_job(db, settings, tmp_path, training=bad)
    assert runner(db, settings).run(job_id) == "failed"
    job = get_job(db, job_id)
    assert job.status == "failed" and job.finished_at is not None
    assert job.error["code"] == "invalid_training_file"
    assert job.error["param"] == "training_file"
    assert "line 3" in job.error["message"], job.error
    assert events(db, job_id)[-1].level == "error"


def test_a_bad_validation_file_fails_the_job_and_a_good_one_gives_validation_losses(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad-validation.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "robot", "content": "hi"}]}) + "\n")
    job_id = create_job(db, settings, tmp_path, validation=bad)
    assert runner(db, settings).run(job_id) == "failed"
    error = get_job(db, job_id).error
    assert error["code"] == "invalid_validation_file" and error["param"] == "validation_file"
    assert "line 1" in error["message"] and "robot" in error["message"]

    good = write_jsonl(tmp_path / "validation.jsonl", arithmetic_chats(4, seed=5))
    job_id = create_job(db, settings, tmp_path, validation=good)
    assert runner(db, settings).run(job_id) == "succeeded"
    losses = [e.data["val_loss"] for e in events(db, job_id) if e.message.startswith("Step ")]
    assert losses[-1] is not None and losses[-1] > 0


def test_invalid_hyperparameters_fail_the_job(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    job_id = create_job(db, settings, tmp_path, hyperparameters={"lora_rank": 0})
    assert runner(db, settings).run(job_id) == "failed"
    error = get_job(db, job_id).error
    assert error["code"] == "invalid_hyperparameters" and "lora_rank" in error["message"]


def test_a_qft_job_lowers_the_loss_and_is_served_as_a_model_and_an_adapter(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    job_id = create_job(
        db,
        settings,
        tmp_path,
        method="qft",
        examples=16,
        hyperparameters={
            "n_epochs": 4,
            "batch_size": 4,
            "learning_rate_multiplier": 100,
            "qft_export": "lora",
            "qft_export_max_rank": 8,
        },
    )
    assert runner(db, settings).run(job_id) == "succeeded", get_job(db, job_id).error
    job = get_job(db, job_id)
    losses = [e.data["train_loss"] for e in events(db, job_id) if e.message.startswith("Step ")]
    assert losses[-1] < losses[0] - 0.5, losses

    name = job.fine_tuned_model
    assert name == f"ft:{TINY_MODEL}:acme:sum:{job_id}"
    with db.session() as session:
        model = session.get(ServedModel, name)
        adapter = session.execute(
            select(Adapter).where(Adapter.name == f"{name}:lora")
        ).scalar_one()
    assert model is not None and model.tenant_id == job.tenant_id and model.parent == TINY_MODEL
    folder = fetch_folder(
        model.uri,
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"],
        tmp_path / "served",
    )
    assert AutoModelForCausalLM.from_pretrained(folder) is not None
    assert adapter.base_model == TINY_MODEL and adapter.source == "finetune" and adapter.rank >= 1

    # a job on the tenant's fine-tuned model uses it as its base
    follow_up = create_job(db, settings, tmp_path, method="qft", hyperparameters={"n_epochs": 1})
    with db.session() as session:
        session.get(FineTuneJob, follow_up).model = name
    assert runner(db, settings).run(follow_up) == "succeeded", get_job(db, follow_up).error
    with db.session() as session:
        assert session.get(ServedModel, get_job(db, follow_up).fine_tuned_model).parent == name


def test_claims_leases_and_the_sweeper(db: Database, settings: Settings, tmp_path: Path) -> None:
    job_id = create_job(db, settings, tmp_path)
    assert claim_job(db, job_id, "w1", lease_timeout_s=60, max_attempts=2).attempt == 1
    assert claim_job(db, job_id, "w2", lease_timeout_s=60, max_attempts=2) == "leased"
    sent: list[str] = []
    assert sweep_stale_jobs(db, sent.append, lease_timeout_s=60) == [] and sent == []

    later = utcnow() + timedelta(seconds=120)  # w1 stopped sending heartbeats
    assert sweep_stale_jobs(db, sent.append, lease_timeout_s=60, now=later) == [job_id]
    assert sent == [job_id] and get_job(db, job_id).status == "queued"
    assert "stopped sending heartbeats" in events(db, job_id)[-1].message
    assert sweep_stale_jobs(db, sent.append, lease_timeout_s=60, now=later) == []  # once
    # nobody claimed the re-sent job: sent again after another lease timeout
    much_later = later + timedelta(seconds=120)
    assert sweep_stale_jobs(db, sent.append, lease_timeout_s=60, now=much_later) == [job_id]

    assert claim_job(db, job_id, "w2", lease_timeout_s=60, max_attempts=2).attempt == 2
    with db.session() as session:
        session.get(FineTuneJob, job_id).heartbeat_at = utcnow() - timedelta(hours=1)
    assert claim_job(db, job_id, "w3", lease_timeout_s=60, max_attempts=2) == "failed"
    job = get_job(db, job_id)
    assert job.status == "failed" and job.error["code"] == "job_interrupted"
    with db.session() as session:
        count = session.scalar(select(func.count()).select_from(JobEvent))
    assert count >= 3


def test_a_lease_held_by_a_dead_process_of_this_host_is_taken_at_once(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    job_id = create_job(db, settings, tmp_path)
    alive = f"{socket.gethostname()}:{os.getpid()}"
    assert claim_job(db, job_id, alive, lease_timeout_s=60, max_attempts=3).attempt == 1
    assert claim_job(db, job_id, "w2", lease_timeout_s=60, max_attempts=3) == "leased"
    with db.session() as session:  # as if the holder were a pool process killed just now
        session.get(FineTuneJob, job_id).worker = f"{socket.gethostname()}:{gone.pid}"
    assert claim_job(db, job_id, "w2", lease_timeout_s=60, max_attempts=3).attempt == 2


def test_store_trouble_gives_the_job_back_to_resume_later(
    db: Database, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(db, settings, tmp_path, hyperparameters={"checkpoint_every": 3})
    original = ArtifactStore.put_folder
    calls = []

    def full_disk(self, local, key):  # type: ignore[no-untyped-def]
        calls.append(key)
        if len(calls) == 2:  # the second checkpoint's upload
            raise OSError(28, "No space left on device")
        return original(self, local, key)

    monkeypatch.setattr(ArtifactStore, "put_folder", full_disk)
    assert runner(db, settings).run(job_id) == "interrupted"
    job = get_job(db, job_id)
    assert job.status == "queued" and job.attempts == 1 and job.error is None
    last = events(db, job_id)[-1]
    assert last.level == "warning" and "resume from its last checkpoint" in last.message
    assert "/" not in last.message  # no paths of the deployment
    sent: list[str] = []
    later = utcnow() + timedelta(seconds=settings.job_lease_timeout_s + 1)
    assert sweep_stale_jobs(
        db, sent.append, lease_timeout_s=settings.job_lease_timeout_s, now=later
    ) == [job_id]
    assert runner(db, settings).run(job_id) == "succeeded"
    resumed = [e.data["step"] for e in events(db, job_id) if e.message.startswith("resumed from")]
    # the same machine: its own newer checkpoint (not uploaded) is the one resumed
    assert resumed == [6] and get_job(db, job_id).attempts == 2


def test_a_result_name_too_long_to_store_fails_the_job_before_training(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    job_id = create_job(db, settings, tmp_path, suffix="s" * 40)
    with db.session() as session:
        session.get(FineTuneJob, job_id).model = "ft:" + "m" * 140  # a fine-tune of a fine-tune
    assert runner(db, settings).run(job_id) == "failed"
    job = get_job(db, job_id)
    assert job.error["code"] == "invalid_suffix" and job.step == 0
