"""``/v1/fine_tuning/jobs`` (OpenAI-compatible): create, list, get and cancel fine-tune jobs,
and read their events and checkpoints.

Creating a job checks everything a user can get wrong before anything runs — the base model
(one the tenant may use), the files (the tenant's, purpose ``fine-tune``), the method
(``lora``, the default, or ``qft``; OpenAI's object form accepted), the hyperparameters
(`lmaas.finetune.hyperparameters`), the suffix, and the tenant's quota of jobs queued or
running at once (429) — then records the job (``queued``) and sends the Celery task
`lmaas.tasks.FINETUNE_RUN_JOB` ``(job_id,)``. The worker owns the job from there: it moves
its status, writes its events and checkpoints, and registers the result under
`lmaas.finetune.naming.fine_tuned_model_name`. Another tenant's job answers 404, exactly
like a missing one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select, update
from starlette.concurrency import run_in_threadpool

from lmaas.finetune.hyperparameters import HyperparameterError, parse_hyperparameters
from lmaas.finetune.naming import (
    MAX_MODEL_NAME,
    SUFFIX,
    checkpoint_model_name,
    fine_tuned_model_name,
)
from lmaas.gateway.deps import StateDep, TenantRepo
from lmaas.gateway.errors import ApiError, InvalidRequest, NotFound, ServiceUnavailable
from lmaas.gateway.generation import base_model_names
from lmaas.gateway.routers.files import ACTIVE_JOB_STATUSES, get_file_or_404
from lmaas.gateway.schemas.fine_tuning import (
    CheckpointList,
    CheckpointPublic,
    EventList,
    EventPublic,
    JobCreate,
    JobError,
    JobList,
    JobPublic,
)
from lmaas.store.models import FineTuneJob, JobCheckpoint, JobEvent, Tenant, new_id, utcnow
from lmaas.store.repository import TenantRepository
from lmaas.tasks import FINETUNE_RUN_JOB, send_task

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

METHODS = ("lora", "qft")
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
_EVENT_PREFIX = "ftevent-"
_LOSSES = {"train_loss", "loss", "val_loss", "valid_loss"}  # a progress event has one


class JobQuotaExceeded(ApiError):
    status = 429
    type = "invalid_request_error"


# Reading ---------------------------------------------------------------------------------


def _ts(value: Any) -> int | None:
    return None if value is None else int(value.timestamp())


def _job_error(error: dict[str, Any] | None) -> JobError | None:
    if not error:
        return None
    return JobError(
        code=str(error.get("code") or "training_failed"),
        message=str(error.get("message") or error),
        param=error.get("param"),
    )


def job_public(job: FineTuneJob, tenant: Tenant) -> JobPublic:
    stored = dict(job.hyperparameters or {})
    shown = {name: stored.get(name, "auto") for name in OPENAI_HYPERPARAMETERS}
    shown.update({k: v for k, v in stored.items() if k != "method"})
    openai_hp = {name: shown[name] for name in OPENAI_HYPERPARAMETERS}
    return JobPublic(
        id=job.id,
        created_at=int(job.created_at.timestamp()),
        error=_job_error(job.error),
        fine_tuned_model=job.fine_tuned_model,
        finished_at=_ts(job.finished_at),
        hyperparameters=shown,
        model=job.model,
        organization_id=tenant.id,
        seed=int(stored.get("seed", 0)),
        status=job.status,  # type: ignore[arg-type]
        trained_tokens=job.trained_tokens,
        training_file=job.training_file_id,
        validation_file=job.validation_file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": openai_hp}},
        user_provided_suffix=job.suffix,
        training_method=job.method,  # type: ignore[arg-type]
        step=job.step,
        total_steps=job.total_steps,
    )


def _job_or_404(repo: TenantRepository, job_id: str) -> FineTuneJob:
    job = repo.get_owned(FineTuneJob, job_id)
    if job is None:
        raise NotFound(
            f"No fine-tuning job with id {job_id}.",
            code="job_not_found",
            param="fine_tuning_job_id",
        )
    return job


# Creating --------------------------------------------------------------------------------


def _method_and_hyperparameters(body: JobCreate) -> tuple[str, dict[str, Any]]:
    """The lmaas method and the hyperparameters the request sets (OpenAI's forms merged)."""
    hp = dict(body.hyperparameters or {})
    in_hp = hp.pop("method", None)
    method = body.method if body.method is not None else in_hp
    nested: dict[str, Any] = {}
    if isinstance(method, dict):
        kind = method.get("type", "supervised")
        if not isinstance(kind, str):
            raise InvalidRequest("method.type must be a string", param="method")
        section = method.get(kind) or {}
        if not isinstance(section, dict) or not isinstance(
            nested := section.get("hyperparameters") or {}, dict
        ):
            raise InvalidRequest(f"method.{kind}.hyperparameters must be an object", param="method")
        method = kind
    if method in (None, "supervised"):
        method = "lora"
    if method not in METHODS:
        raise InvalidRequest(
            f"method {method!r} is not supported: use 'lora' (the default; OpenAI's "
            "'supervised' means it) or 'qft' (full-parameter, quantized)",
            code="invalid_method",
            param="method",
        )
    for name, value in nested.items():
        if name in hp and hp[name] != value:
            raise InvalidRequest(
                f"hyperparameter {name} is set twice, to {hp[name]!r} and to {value!r} (in "
                "method): set it once",
                code="invalid_hyperparameters",
                param="hyperparameters",
            )
        hp[name] = value
    if body.seed is not None:
        hp["seed"] = body.seed
    try:
        parsed = parse_hyperparameters(hp, method)
    except HyperparameterError as exc:
        raise InvalidRequest(
            str(exc), code="invalid_hyperparameters", param="hyperparameters"
        ) from None
    # What the request set, as checked values (the worker parses them again; "auto" stays).
    return method, parsed.model_dump(mode="json", exclude_unset=True, exclude={"method"})


def _check_model(repo: TenantRepository, model: str) -> None:
    if model in base_model_names(repo):
        return
    adapter = repo.get_adapter(model)
    if adapter is not None:
        raise InvalidRequest(
            f"`{model}` is a LoRA adapter, which cannot be fine-tuned further: fine-tune its "
            f"base model `{adapter.base_model}` on the combined data",
            code="model_not_available",
            param="model",
        )
    raise NotFound(
        f"The model `{model}` does not exist or you do not have access to it. "
        "GET /v1/models lists the models you can use.",
        code="model_not_found",
        param="model",
    )


def _active_jobs(repo: TenantRepository) -> int:
    return repo.session.execute(
        select(func.count())
        .select_from(FineTuneJob)
        .where(FineTuneJob.tenant_id == repo.tenant.id, FineTuneJob.status.in_(ACTIVE_JOB_STATUSES))
    ).scalar_one()


def _create(repo: TenantRepository, body: JobCreate) -> FineTuneJob:
    method, hp = _method_and_hyperparameters(body)
    _check_model(repo, body.model)
    if body.suffix is not None and not SUFFIX.match(body.suffix):
        raise InvalidRequest(
            f"suffix {body.suffix!r} is invalid: use 1-40 letters, digits, '-' or '_', "
            "starting with a letter or digit",
            code="invalid_suffix",
            param="suffix",
        )
    get_file_or_404(repo, body.training_file, "training_file")
    if body.validation_file is not None:
        get_file_or_404(repo, body.validation_file, "validation_file")
    job = FineTuneJob(
        id=new_id("ftjob"),
        model=body.model,
        method=method,
        training_file_id=body.training_file,
        validation_file_id=body.validation_file,
        hyperparameters=hp,
        suffix=body.suffix,
        status="queued",
    )
    if len(fine_tuned_model_name(job.model, repo.tenant.name, job.suffix, job.id)) > MAX_MODEL_NAME:
        raise InvalidRequest(
            f"the result's name would be longer than {MAX_MODEL_NAME} characters: use a "
            "shorter suffix",
            code="invalid_suffix",
            param="suffix",
        )
    # One job creation of a tenant at a time, so two requests cannot both take the last free
    # slot of the quota: a no-op write of the tenant's row takes its row lock (PostgreSQL) or
    # the write lock (SQLite) before the jobs are counted, until the commit.
    repo.session.execute(
        update(Tenant)
        .where(Tenant.id == repo.tenant.id)
        .values(max_concurrent_jobs=Tenant.max_concurrent_jobs)
    )
    quota = repo.tenant.max_concurrent_jobs
    if _active_jobs(repo) >= quota:
        raise JobQuotaExceeded(
            f"You have {quota} fine-tuning job(s) queued or running, your quota of concurrent "
            "jobs: wait for one to finish or cancel one (POST /v1/fine_tuning/jobs/{id}/cancel), "
            "or ask an administrator to raise max_concurrent_jobs.",
            code="concurrent_jobs_limit_exceeded",
        )
    repo.add(job)
    repo.session.add(JobEvent(job_id=job.id, message=f"Created fine-tuning job: {job.id}"))
    repo.commit()
    return job


def _fail_unqueued(repo: TenantRepository, job: FineTuneJob, why: str) -> None:
    job.status = "failed"
    job.finished_at = utcnow()
    job.error = {"code": "queue_unavailable", "message": why, "param": None}
    repo.session.add(JobEvent(job_id=job.id, level="error", message=why))
    repo.commit()


@router.post("")
async def create_job(body: JobCreate, repo: TenantRepo, state: StateDep) -> JobPublic:
    """Create a fine-tuning job; it is queued for a worker at once."""
    job = await run_in_threadpool(_create, repo, body)
    try:
        await asyncio.to_thread(send_task, state.celery, FINETUNE_RUN_JOB, job.id)
    except Exception as exc:
        log.error("could not queue fine-tuning job %s: %s", job.id, exc)
        why = "The job could not be queued (the task broker is unavailable); create it again."
        await run_in_threadpool(_fail_unqueued, repo, job, why)
        raise ServiceUnavailable(why, code="queue_unavailable") from exc
    state.metrics.finetune_jobs.labels(job.method).inc()
    log.info("tenant %s created %s job %s on %s", repo.tenant.name, job.method, job.id, job.model)
    return job_public(job, repo.tenant)


@router.get("")
def list_jobs(
    repo: TenantRepo,
    after: str | None = None,
    limit: int = Query(default=20, ge=1, le=1000),
) -> JobList:
    """Your jobs, newest first; a cursor page (`after` = the last id of the previous page)."""
    try:
        rows, has_more = repo.page_owned(FineTuneJob, after=after, limit=limit)
    except LookupError:
        raise InvalidRequest(
            f"after: no fine-tuning job {after!r} to continue from",
            code="invalid_cursor",
            param="after",
        ) from None
    return JobList(data=[job_public(j, repo.tenant) for j in rows], has_more=has_more)


@router.get("/{job_id}")
def get_job(job_id: str, repo: TenantRepo) -> JobPublic:
    return job_public(_job_or_404(repo, job_id), repo.tenant)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, repo: TenantRepo) -> JobPublic:
    """Cancel a job: a queued one at once; a running one stops within one training step."""
    job = _job_or_404(repo, job_id)
    if job.status in ("succeeded", "failed"):
        raise InvalidRequest(
            f"job {job_id} has already {job.status}; only a queued or running job can be cancelled",
            code="job_not_cancellable",
            param="fine_tuning_job_id",
        )
    if job.status == "cancelled":
        return job_public(job, repo.tenant)
    now = utcnow()
    # Atomic: the worker may be taking the queued job right now.
    cancelled_queued = repo.session.execute(
        update(FineTuneJob)
        .where(FineTuneJob.id == job.id, FineTuneJob.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
    ).rowcount
    if cancelled_queued:
        message = "Job cancelled before it started."
    else:
        repo.session.execute(
            update(FineTuneJob).where(FineTuneJob.id == job.id).values(cancel_requested=True)
        )
        message = "Cancellation requested; the job stops after its current step."
    repo.session.add(JobEvent(job_id=job.id, message=message))
    repo.commit()
    repo.session.refresh(job)
    return job_public(job, repo.tenant)


_WORKER_ONLY_EVENT_KEYS = frozenset({"worker"})


def _event_public(row: JobEvent) -> EventPublic:
    level = {"warning": "warn"}.get(row.level, row.level)
    # Which worker (host, process) ran an attempt is the operator's business, not the tenant's.
    data = {k: v for k, v in (row.data or {}).items() if k not in _WORKER_ONLY_EVENT_KEYS} or None
    return EventPublic(
        id=f"{_EVENT_PREFIX}{row.id}",
        created_at=int(row.created_at.timestamp()),
        level=level if level in ("info", "warn", "error") else "info",  # type: ignore[arg-type]
        message=row.message,
        data=data,
        type="metrics" if data and "step" in data and _LOSSES & data.keys() else "message",
    )


@router.get("/{job_id}/events")
def list_events(
    job_id: str,
    repo: TenantRepo,
    after: str | None = None,
    limit: int = Query(default=20, ge=1, le=1000),
) -> EventList:
    """The job's events, newest first (`data` of a progress event: step, loss, …)."""
    job = _job_or_404(repo, job_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    if after is not None:
        number = after.removeprefix(_EVENT_PREFIX)
        if not number.isdigit():
            raise InvalidRequest(
                f"after: {after!r} is not an event id", code="invalid_cursor", param="after"
            )
        stmt = stmt.where(JobEvent.id < int(number))
    rows = list(repo.session.execute(stmt.order_by(JobEvent.id.desc()).limit(limit + 1)).scalars())
    return EventList(data=[_event_public(r) for r in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    repo: TenantRepo,
    after: str | None = None,
    limit: int = Query(default=10, ge=1, le=1000),
) -> CheckpointList:
    """The job's checkpoints, newest (highest step) first."""
    job = _job_or_404(repo, job_id)
    stmt = select(JobCheckpoint).where(JobCheckpoint.job_id == job.id)
    if after is not None:
        cursor = repo.session.get(JobCheckpoint, after)
        if cursor is None or cursor.job_id != job.id:
            raise InvalidRequest(
                f"after: no checkpoint {after!r} of this job", code="invalid_cursor", param="after"
            )
        stmt = stmt.where(JobCheckpoint.step < cursor.step)
    rows = list(
        repo.session.execute(stmt.order_by(JobCheckpoint.step.desc()).limit(limit + 1)).scalars()
    )
    data = [
        CheckpointPublic(
            id=row.id,
            created_at=int(row.created_at.timestamp()),
            fine_tuned_model_checkpoint=checkpoint_model_name(
                job.model, repo.tenant.name, job.suffix, job.id, row.step
            ),
            fine_tuning_job_id=job.id,
            metrics={"step": row.step, **(row.metrics or {})},
            step_number=row.step,
        )
        for row in rows[:limit]
    ]
    return CheckpointList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(rows) > limit,
    )
