"""Run one fine-tune job from the database: lease, data, training, checkpoints, result.

`JobRunner.run(job_id)` is what the worker's task calls (Celery stays out of this module):

1. **Claim** (`lmaas.finetune.job_lease.claim_job`): a finished job is left alone, a job
   another live worker holds is refused; every later write is conditional on the lease.
2. **Data**: the files are fetched from the artifact store and validated line by line
   (`lmaas.finetune.data`); a bad file fails the job with the line in the message.
3. **Resume**: the newest uploaded checkpoint (`JobCheckpoint`) is downloaded into the
   local work folder unless a newer one is already there; `TrainingRun` resumes from it.
4. **Train** (`TrainingRun`): a heartbeat thread refreshes `heartbeat_at` every
   `job_heartbeat_s`; after each step the job's step, total_steps and trained_tokens are
   written, every `job_event_every` steps a progress event (step, total, loss); before
   each step `cancel_requested` is read, so a cancel stops the run within one step. Each
   checkpoint (every ``checkpoint_every`` steps, a hyperparameter) is uploaded and
   recorded as a `JobCheckpoint`; only the newest `KEEP_CHECKPOINTS` are kept.
5. **Register**: a LoRA result becomes an `Adapter` of the tenant named after the job
   (`fine_tuned_model_name`), stored like an uploaded adapter; a QFT result becomes a
   tenant-owned `ServedModel` (a Hugging Face folder the engine loads), plus an `Adapter`
   when the hyperparameters ask ``qft_export: lora``. The rows and ``status = succeeded``
   are written in one transaction.

Failures the tenant can fix end the job `failed` with an OpenAI-style error
``{"code", "message", "param"}``; so does a bug (``internal_error``). Trouble with the
artifact store or the database (`OSError`, `SQLAlchemyError`) gives the job back to the
queue instead, to resume from its last checkpoint; a job that keeps being interrupted
(or killing its worker) fails after `job_max_attempts` claims.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from lmaas.config import Settings
from lmaas.finetune.checkpoint import CheckpointStore
from lmaas.finetune.data import DataFileError, load_chat_jsonl
from lmaas.finetune.hyperparameters import HyperparameterError, parse_hyperparameters
from lmaas.finetune.job_lease import (
    TERMINAL_STATUSES,
    Claim,
    Heartbeat,
    LeaseLost,
    add_event,
    claim_job,
    default_worker_name,
    finish,
    lease_filter,
    requeue,
)
from lmaas.finetune.naming import MAX_MODEL_NAME, fine_tuned_model_name
from lmaas.finetune.qft_train import QFT_FULL_SUBFOLDER
from lmaas.finetune.trainer import CheckpointInfo, Progress, TrainingError, TrainingRun
from lmaas.store import Database
from lmaas.store.artifacts import ArtifactStore, fetch_file, fetch_folder, local_model_folder
from lmaas.store.models import (
    Adapter,
    FileObject,
    FineTuneJob,
    JobCheckpoint,
    JobEvent,
    ServedModel,
    Tenant,
    utcnow,
)

__all__ = ["CHECKPOINT_FILES", "KEEP_CHECKPOINTS", "QFT_ADAPTER_SUFFIX", "JobFailure", "JobRunner"]

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ["tensors.safetensors", "state.pt", "meta.json"]
QFT_ADAPTER_SUFFIX = ":lora"  # the adapter a QFT job exports besides its model
KEEP_CHECKPOINTS = 3  # as OpenAI: the last three checkpoints stay usable


class JobFailure(Exception):
    """The job cannot succeed for a reason stated to the tenant (OpenAI error fields)."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass(frozen=True)
class _JobSpec:
    """What the runner reads of the job once, at the start."""

    job_id: str
    tenant_id: str
    tenant_name: str
    model: str
    method: str
    hyperparameters: dict[str, Any]
    suffix: str | None
    training_uri: str
    validation_uri: str | None


class JobRunner:
    """Runs fine-tune jobs of one deployment in this process (one at a time per object)."""

    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        settings: Settings,
        *,
        worker: str | None = None,
        device: str = "auto",
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.settings = settings
        self.worker = worker or default_worker_name()
        self.device = device
        self.work_root = settings.home / "finetune-jobs"

    # Entry point ---------------------------------------------------------------------

    def run(self, job_id: str) -> str:
        """Run (or resume) `job_id`; returns its final status or why it was not run."""
        claim = claim_job(
            self.db,
            job_id,
            self.worker,
            lease_timeout_s=self.settings.job_lease_timeout_s,
            max_attempts=self.settings.job_max_attempts,
        )
        if not isinstance(claim, Claim):
            log.info("job %s not run: %s", job_id, claim)
            return claim
        lost = threading.Event()
        heartbeat = Heartbeat(self.db, claim, self.settings.job_heartbeat_s, lost)
        heartbeat.start()
        work_dir = self.work_root / job_id
        try:
            status = _ClaimedJob(self, claim, lost, work_dir).run()
        except LeaseLost:
            log.warning("job %s: another worker took it over; stopped", job_id)
            return "lease_lost"
        except JobFailure as failure:
            status = self._fail(claim, failure)
        except (OSError, SQLAlchemyError) as exc:  # store or database trouble: try again later
            log.exception("job %s interrupted", job_id)
            requeue(
                self.db,
                claim,
                f"The job was interrupted by a storage or database problem "
                f"({type(exc).__name__}); it will resume from its last checkpoint",
            )
            status = "interrupted"
        except Exception as exc:  # a bug: the details go to the log, not to the tenant
            log.exception("job %s failed", job_id)
            message = f"internal error ({type(exc).__name__}); create the job again"
            status = self._fail(claim, JobFailure(message, "internal_error"))
        finally:
            heartbeat.stop()
        if status in TERMINAL_STATUSES:
            shutil.rmtree(work_dir, ignore_errors=True)
        return status

    def _fail(self, claim: Claim, failure: JobFailure) -> str:
        try:
            finish(
                self.db, claim, "failed", failure.message, level="error", error=failure.as_error()
            )
        except LeaseLost:
            return "lease_lost"
        return "failed"


class _ClaimedJob:
    """One attempt at a job this worker holds the lease of."""

    def __init__(
        self, runner: JobRunner, claim: Claim, lost: threading.Event, work_dir: Path
    ) -> None:
        self.runner, self.claim, self.lost, self.work_dir = runner, claim, lost, work_dir
        self.db, self.artifacts, self.settings = runner.db, runner.artifacts, runner.settings
        self.job_key = ""  # the job's folder in the artifact store, known once read

    def _checkpoint_key(self, step: int) -> str:
        return f"{self.job_key}/checkpoints/step-{step:08d}"

    # Steps ---------------------------------------------------------------------------

    def run(self) -> str:
        spec = self._read_spec()
        self.job_key = f"tenants/{spec.tenant_id}/fine_tuning/{spec.job_id}"
        try:
            hp = parse_hyperparameters(spec.hyperparameters, spec.method)
        except HyperparameterError as exc:
            raise JobFailure(str(exc), "invalid_hyperparameters", "hyperparameters") from None
        name = fine_tuned_model_name(spec.model, spec.tenant_name, spec.suffix, spec.job_id)
        longest = name + (QFT_ADAPTER_SUFFIX if hp.method == "qft" else "")
        if len(longest) > MAX_MODEL_NAME:
            raise JobFailure(
                f"the fine-tuned model would be named {longest!r}, longer than "
                f"{MAX_MODEL_NAME} characters: use a shorter suffix",
                "invalid_suffix",
                "suffix",
            )
        data_dir = self.work_dir / "data"
        training = self._fetch_data(spec.training_uri, data_dir / "training.jsonl", "training")
        validation = (
            self._fetch_data(spec.validation_uri, data_dir / "validation.jsonl", "validation")
            if spec.validation_uri
            else None
        )
        base = self._base_model_path(spec)
        self._restore_checkpoint()
        run = TrainingRun(
            base_model=base,
            training_file=training,
            validation_file=validation,
            work_dir=self.work_dir / "run",
            hyperparameters=hp,
            device=self.runner.device,
            on_progress=self._on_progress,
            on_event=self._on_event,
            on_checkpoint=self._on_checkpoint,
            should_cancel=self._should_cancel,
            max_file_bytes=self.settings.max_file_bytes,
            model_cache_dir=self.settings.model_cache_dir,
        )
        try:
            result = run.run()
        except (TrainingError, DataFileError) as exc:
            raise JobFailure(str(exc), "training_error") from None
        except ValueError as exc:  # e.g. LoRA target modules this model does not have
            raise JobFailure(str(exc), "invalid_hyperparameters", "hyperparameters") from None
        if self.lost.is_set():
            raise LeaseLost(self.claim.job_id)
        if result.status == "cancelled":
            finish(
                self.db, self.claim, "cancelled", f"The job was cancelled at step {result.steps}"
            )
            return "cancelled"
        assert result.output_dir is not None
        self._register(spec, result.output_dir, result.output_kind, result.trained_tokens)
        return "succeeded"

    def _read_spec(self) -> _JobSpec:
        with self.db.session() as session:
            job = session.get(FineTuneJob, self.claim.job_id)
            assert job is not None
            tenant = session.get(Tenant, job.tenant_id)
            assert tenant is not None

            def file_uri(file_id: str | None, param: str) -> str | None:
                if file_id is None:
                    return None
                row = session.get(FileObject, file_id)
                if row is None or row.tenant_id != job.tenant_id:
                    raise JobFailure(
                        f"the {param.replace('_', ' ')} {file_id} does not exist (deleted?); "
                        "upload it again and create a new job",
                        "file_not_found",
                        param,
                    )
                return row.uri

            training = file_uri(job.training_file_id, "training_file")
            assert training is not None
            return _JobSpec(
                job_id=job.id,
                tenant_id=job.tenant_id,
                tenant_name=tenant.name,
                model=job.model,
                method=job.method,
                hyperparameters=dict(job.hyperparameters or {}),
                suffix=job.suffix,
                training_uri=training,
                validation_uri=file_uri(job.validation_file_id, "validation_file"),
            )

    def _fetch_data(self, uri: str, local: Path, what: str) -> Path:
        tmp = local.with_suffix(".tmp")
        try:
            fetch_file(uri, tmp)
        except FileNotFoundError:
            raise JobFailure(
                f"the {what} file is missing from the store; upload it again",
                "file_not_found",
                f"{what}_file",
            ) from None
        os.replace(tmp, local)
        try:
            load_chat_jsonl(local, max_bytes=self.settings.max_file_bytes)
        except DataFileError as exc:
            raise JobFailure(
                f"the {what} file is invalid: {str(exc).removeprefix('invalid fine-tune file: ')}",
                f"invalid_{what}_file",
                f"{what}_file",
            ) from None
        return local

    def _base_model_path(self, spec: _JobSpec) -> Path:
        """The deployment's base model (this worker's own setting), or a stored model."""
        with self.db.session() as session:
            row = session.get(ServedModel, spec.model)
            visible = row is not None and row.tenant_id in (None, spec.tenant_id)
            uri = row.uri if row is not None else ""
        if spec.model == self.settings.model_name:
            return self.settings.resolved_base_model
        if not visible:
            raise JobFailure(
                f"the model `{spec.model}` does not exist or you do not have access to it",
                "model_not_found",
                "model",
            )
        if "://" not in uri:
            return Path(uri).expanduser()
        return local_model_folder(uri, self.settings.model_cache_dir)

    def _restore_checkpoint(self) -> None:
        """Download the newest uploaded checkpoint unless the work folder has it already."""
        with self.db.session() as session:
            newest = session.execute(
                select(JobCheckpoint.step, JobCheckpoint.uri)
                .where(JobCheckpoint.job_id == self.claim.job_id)
                .order_by(JobCheckpoint.step.desc())
                .limit(1)
            ).first()
        if newest is None:
            return
        step, uri = newest
        folder = self.work_dir / "run" / "checkpoints"
        local = CheckpointStore(folder, fingerprint="").latest()
        if local is not None and int(local.name.removeprefix("step-")) >= step:
            return
        name = f"step-{step:08d}"
        tmp = folder / f".{name}.download"
        shutil.rmtree(tmp, ignore_errors=True)
        fetch_folder(uri, CHECKPOINT_FILES, tmp)
        shutil.rmtree(folder / name, ignore_errors=True)
        os.replace(tmp, folder / name)
        (folder / "latest").write_text(name)
        log.info("job %s: downloaded the checkpoint of step %d", self.claim.job_id, step)

    # Callbacks of the training run -----------------------------------------------------

    def _should_cancel(self) -> bool:
        if self.lost.is_set():
            return True
        with self.db.session() as session:
            row = session.execute(
                select(FineTuneJob.cancel_requested).where(*lease_filter(self.claim))
            ).first()
        if row is None:
            self.lost.set()
            return True
        return bool(row[0])

    def _on_progress(self, p: Progress) -> None:
        with self.db.session() as session:
            changed = session.execute(
                update(FineTuneJob)
                .where(*lease_filter(self.claim))
                .values(
                    step=p.step,
                    total_steps=p.total_steps,
                    trained_tokens=p.trained_tokens,
                    heartbeat_at=utcnow(),
                )
            ).rowcount
            if changed != 1:
                self.lost.set()
                return
            every = self.settings.job_event_every
            if p.step % every == 0 or p.step == p.total_steps or p.step == 1:
                message = f"Step {p.step}/{p.total_steps}: training loss={p.train_loss:.4f}"
                if p.val_loss is not None:
                    message += f", validation loss={p.val_loss:.4f}"
                add_event(
                    session,
                    self.claim.job_id,
                    message,
                    step=p.step,
                    total_steps=p.total_steps,
                    train_loss=p.train_loss,
                    val_loss=p.val_loss,
                    trained_tokens=p.trained_tokens,
                    learning_rate=p.learning_rate,
                )

    def _on_event(self, level: str, message: str, data: dict[str, Any] | None) -> None:
        with self.db.session() as session:
            session.add(JobEvent(job_id=self.claim.job_id, level=level, message=message, data=data))

    def _on_checkpoint(self, info: CheckpointInfo) -> None:
        if self.lost.is_set():
            return
        uri = self.artifacts.put_folder(info.path, self._checkpoint_key(info.step))
        with self.db.session() as session:
            existing = session.execute(
                select(JobCheckpoint).where(
                    JobCheckpoint.job_id == self.claim.job_id, JobCheckpoint.step == info.step
                )
            ).scalar_one_or_none()
            if existing is None:
                session.add(
                    JobCheckpoint(
                        job_id=self.claim.job_id, step=info.step, uri=uri, metrics=info.metrics
                    )
                )
            else:
                existing.uri, existing.metrics = uri, info.metrics
            add_event(
                session,
                self.claim.job_id,
                f"Checkpoint created at step {info.step}",
                step=info.step,
            )
            session.flush()
            old = session.execute(
                select(JobCheckpoint)
                .where(JobCheckpoint.job_id == self.claim.job_id)
                .order_by(JobCheckpoint.step.desc())
                .offset(KEEP_CHECKPOINTS)
            ).scalars()
            dropped = []
            for checkpoint in old:
                dropped.append(checkpoint.step)
                session.delete(checkpoint)
        for step in dropped:
            self.artifacts.delete(self._checkpoint_key(step))

    # The result ----------------------------------------------------------------------

    def _register(
        self, spec: _JobSpec, output: Path, kind: str | None, trained_tokens: int
    ) -> None:
        name = fine_tuned_model_name(spec.model, spec.tenant_name, spec.suffix, spec.job_id)
        rows: list[Callable[[Session], None]] = []
        if spec.method == "qft":
            # qft_export: lora → the adapter in `output`, the full model beside it
            full = output if kind == "full_model" else output / QFT_FULL_SUBFOLDER
            rows.append(self._served_model(spec, name, full))
            if kind == "lora_adapter":  # the served model has the name; the adapter ":lora"
                rows.append(self._adapter(spec, name + QFT_ADAPTER_SUFFIX, output))
        else:
            rows.append(self._adapter(spec, name, output))

        def add_rows(session: Session) -> None:
            for add in rows:
                add(session)

        finish(
            self.db,
            self.claim,
            "succeeded",
            f"The job has successfully completed: new fine-tuned model {name}",
            session_work=add_rows,
            fine_tuned_model=name,
            trained_tokens=trained_tokens,
        )

    def _adapter(self, spec: _JobSpec, name: str, folder: Path) -> Callable[[Session], None]:
        from lmaas.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, parse_adapter

        # peft wrote the local folder trained on; runtimes check it names the served model
        config_file = folder / ADAPTER_CONFIG
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = spec.model
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
        adapter_spec = parse_adapter(folder)
        adapter_id = "adp-" + spec.job_id.split("-", 1)[-1]  # one per job: idempotent
        uri = self.artifacts.put_folder(folder, f"tenants/{spec.tenant_id}/adapters/{adapter_id}")
        weights = folder / ADAPTER_WEIGHTS
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        digest = _sha256(weights)

        def add(session: Session) -> None:
            row = session.get(Adapter, adapter_id) or Adapter(
                id=adapter_id, tenant_id=spec.tenant_id
            )
            row.name, row.base_model, row.uri = name, spec.model, uri
            row.rank, row.alpha = adapter_spec.rank, adapter_spec.alpha
            row.target_modules = adapter_spec.target_modules
            row.size_bytes, row.sha256 = size, digest
            row.source, row.status, row.verified_at = "finetune", "ready", utcnow()
            session.add(row)
            add_event(
                session, spec.job_id, f"New fine-tuned adapter created: {name}", adapter=adapter_id
            )

        return add

    def _served_model(self, spec: _JobSpec, name: str, folder: Path) -> Callable[[Session], None]:
        if not (folder / "config.json").is_file():
            raise RuntimeError(f"the QFT export at {folder} has no config.json")
        uri = self.artifacts.put_folder(folder, f"tenants/{spec.tenant_id}/models/{spec.job_id}")
        config = json.loads((folder / "config.json").read_text())

        def add(session: Session) -> None:
            row = session.get(ServedModel, name) or ServedModel(id=name)
            row.tenant_id, row.parent, row.uri = spec.tenant_id, spec.model, uri
            row.architecture = str(config.get("model_type", "llama"))
            session.add(row)
            add_event(session, spec.job_id, f"New fine-tuned model created: {name}", model=name)

        return add


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
