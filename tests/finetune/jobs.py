"""Helpers of the fine-tune job tests: a deployment on a tiny model, tenants, files, jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from lmaas.config import Settings
from lmaas.finetune.naming import DATA_FILE_NAME, data_file_key
from lmaas.store import Database
from lmaas.store.artifacts import ArtifactStore
from lmaas.store.models import FileObject, FineTuneJob, JobCheckpoint, JobEvent, new_id
from lmaas.store.tenants import create_tenant, get_tenant
from tests.finetune.helpers import arithmetic_chats, write_jsonl

__all__ = ["TINY_MODEL", "checkpoints", "create_job", "events", "job_settings", "store_file"]

TINY_MODEL = "tiny-chat"  # not its folder's name: results must name the served model


def job_settings(tmp_path: Path, database_url: str, model_dir: Path, **overrides: Any) -> Settings:
    """A deployment whose base model is the tiny Llama at `model_dir`, served as TINY_MODEL."""
    fields: dict[str, Any] = {
        "home": tmp_path / "home",
        "database_url": database_url,
        "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "artifact_url": str(tmp_path / "artifacts"),
        "base_model": str(model_dir),
        "model_name": TINY_MODEL,
        "job_heartbeat_s": 0.2,
        "job_event_every": 2,
    }
    fields.update(overrides)
    return Settings(**fields)


def store_file(db: Database, settings: Settings, tenant_id: str, path: Path) -> str:
    """Store the JSONL at `path` as the tenant's fine-tune file (as the API does); its id."""
    file_id = new_id("file")
    folder = path.parent / f"upload-{file_id}"
    folder.mkdir()
    (folder / DATA_FILE_NAME).write_bytes(path.read_bytes())
    store = ArtifactStore(settings.resolved_artifact_url)
    key = data_file_key(tenant_id, file_id)
    store.put_folder(folder, key)
    uri = store.uri(f"{key}/{DATA_FILE_NAME}")
    with db.session() as session:
        session.add(
            FileObject(
                id=file_id,
                tenant_id=tenant_id,
                filename=path.name,
                purpose="fine-tune",
                bytes=path.stat().st_size,
                uri=uri,
                num_lines=len(path.read_text().splitlines()),
            )
        )
    return file_id


def create_job(
    db: Database,
    settings: Settings,
    tmp_path: Path,
    *,
    method: str = "lora",
    hyperparameters: dict[str, Any] | None = None,
    training: Path | None = None,
    validation: Path | None = None,
    examples: int = 8,
    tenant: str = "acme",
    suffix: str | None = "sum",
) -> str:
    """A queued job of `tenant` (created if new) on the tiny model; its id."""
    with db.session() as session:
        tenant_id = (get_tenant(session, tenant) or create_tenant(session, tenant, settings)).id
    if training is None:
        training = write_jsonl(tmp_path / f"train-{new_id('d')}.jsonl", arithmetic_chats(examples))
    file_id = store_file(db, settings, tenant_id, training)
    validation_id = store_file(db, settings, tenant_id, validation) if validation else None
    hp = {"n_epochs": 2, "batch_size": 2, "compute_dtype": "float32", "lora_rank": 4}
    hp.update(hyperparameters or {})
    with db.session() as session:
        job = FineTuneJob(
            tenant_id=tenant_id,
            model=TINY_MODEL,
            method=method,
            training_file_id=file_id,
            validation_file_id=validation_id,
            hyperparameters=hp,
            suffix=suffix,
        )
        session.add(job)
        session.flush()
        return job.id


def events(db: Database, job_id: str) -> list[JobEvent]:
    with db.session() as session:
        stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return list(session.execute(stmt).scalars())


def checkpoints(db: Database, job_id: str) -> list[JobCheckpoint]:
    with db.session() as session:
        stmt = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
        return list(session.execute(stmt.order_by(JobCheckpoint.step)).scalars())
