"""What the operator writes to the platform database (the system of record).

Tenants and their first key, served models, adapters and fine-tune jobs. Every function
is idempotent: it looks up by a natural key (tenant name, adapter name, job id) before it
inserts, so a retried or restarted reconcile changes nothing the second time.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select

from lmaas.config import Settings
from lmaas.store import Database, tenants
from lmaas.store import models as m
from lmaas_operator.resources import AdapterSpec, FineTuneJobSpec, ModelSpec, TenantSpec

__all__ = [
    "JobProgress",
    "delete_adapter",
    "delete_tenant",
    "ensure_adapter",
    "ensure_api_key",
    "ensure_finetune_job",
    "ensure_served_model",
    "ensure_tenant",
    "find_adapter",
    "job_progress",
    "job_was_submitted",
    "mark_job_submitted",
    "new_api_key",
    "request_job_cancel",
    "tenant_id",
]

SUBMITTED = "submitted to the workers"


def new_api_key() -> str:
    """A fresh API key plaintext (registered with `ensure_api_key`)."""
    return tenants.KEY_PREFIX + secrets.token_urlsafe(32)


def tenant_id(db: Database, name: str) -> str | None:
    with db.session() as s:
        return s.scalar(select(m.Tenant.id).where(m.Tenant.name == name))


def ensure_tenant(db: Database, name: str, spec: TenantSpec, settings: Settings) -> str:
    """The tenant's id, creating it or bringing its quotas to the spec's."""
    q = spec.quotas
    quotas = {
        "requests_per_minute": q.requests_per_minute or settings.default_requests_per_minute,
        "tokens_per_minute": q.tokens_per_minute or settings.default_tokens_per_minute,
        "max_adapters": q.max_adapters or settings.default_max_adapters,
        "max_concurrent_jobs": q.max_concurrent_jobs or settings.default_max_concurrent_jobs,
    }
    with db.session() as s:
        tenant = tenants.get_tenant(s, name)
        if tenant is None:
            tenant = tenants.create_tenant(s, name, settings, **quotas)
        elif any(getattr(tenant, k) != v for k, v in quotas.items()):
            tenants.update_quotas(s, tenant, **quotas)
        return tenant.id


def ensure_api_key(db: Database, tenant: str, secret: str) -> str:
    """Register `secret` as the tenant's key unless it already is; returns the key id."""
    with db.session() as s:
        existing = s.scalar(select(m.ApiKey).where(m.ApiKey.key_hash == tenants.hash_key(secret)))
        if existing is not None:
            if existing.tenant_id != tenant:
                raise ValueError("the API key Secret holds another tenant's key")
            return existing.id
        row = s.get(m.Tenant, tenant)
        if row is None:
            raise LookupError(f"tenant {tenant} is not in the database")
        return tenants.issue_key(s, row, "operator: first key", secret=secret).record.id


def delete_tenant(db: Database, name: str) -> bool:
    """Remove the tenant and (by cascade) its keys, adapters, files, jobs and usage."""
    with db.session() as s:
        tenant = tenants.get_tenant(s, name)
        if tenant is None:
            return False
        tenants.delete_tenant(s, tenant)
        return True


def ensure_served_model(db: Database, name: str, spec: ModelSpec) -> None:
    with db.session() as s:
        row = s.get(m.ServedModel, name)
        if row is None:
            s.add(m.ServedModel(id=name, uri=spec.source, architecture=spec.architecture))
        else:
            row.uri, row.architecture = spec.source, spec.architecture


def find_adapter(db: Database, tenant: str, name: str) -> m.Adapter | None:
    with db.session() as s:
        return s.scalar(
            select(m.Adapter).where(m.Adapter.tenant_id == tenant, m.Adapter.name == name)
        )


def ensure_adapter(db: Database, tenant: str, name: str, base_model: str, spec: AdapterSpec) -> str:
    """The adapter's id; registered for the tenant, or updated to the spec's source."""
    with db.session() as s:
        row = s.scalar(
            select(m.Adapter).where(m.Adapter.tenant_id == tenant, m.Adapter.name == name)
        )
        if row is None:
            row = m.Adapter(
                tenant_id=tenant,
                name=name,
                base_model=base_model,
                rank=spec.rank,
                alpha=spec.alpha,
                target_modules=list(spec.target_modules),
                uri=spec.source,
                source="kubernetes",
                status="ready",
            )
            s.add(row)
            s.flush()
        else:
            row.uri, row.rank, row.alpha = spec.source, spec.rank, spec.alpha
            row.target_modules, row.base_model = list(spec.target_modules), base_model
        return row.id


def delete_adapter(db: Database, tenant: str, name: str) -> bool:
    with db.session() as s:
        result = s.execute(
            delete(m.Adapter).where(m.Adapter.tenant_id == tenant, m.Adapter.name == name)
        )
        return bool(result.rowcount)


def ensure_finetune_job(db: Database, job_id: str, tenant: str, spec: FineTuneJobSpec) -> str:
    """The job row (status queued on creation); checks the training file belongs to the tenant."""
    with db.session() as s:
        if s.get(m.FineTuneJob, job_id) is not None:
            return job_id
        for file_id in filter(None, (spec.training_file, spec.validation_file)):
            file = s.get(m.FileObject, file_id)
            if file is None or file.tenant_id != tenant:
                raise LookupError(
                    f"file {file_id!r} does not exist for this tenant: upload it with "
                    "POST /v1/files (purpose fine-tune) and use the id it answers"
                )
        hp = spec.hyperparameters.model_dump(exclude_none=True)
        s.add(
            m.FineTuneJob(
                id=job_id,
                tenant_id=tenant,
                model=spec.model,
                method=spec.method,
                training_file_id=spec.training_file,
                validation_file_id=spec.validation_file,
                hyperparameters=hp,
                suffix=spec.suffix,
                status="queued",
            )
        )
        s.flush()
        s.add(m.JobEvent(job_id=job_id, message="job created from a FineTuneJob resource"))
        return job_id


def job_was_submitted(db: Database, job_id: str) -> bool:
    with db.session() as s:
        found = s.scalar(
            select(m.JobEvent.id).where(
                m.JobEvent.job_id == job_id, m.JobEvent.message == SUBMITTED
            )
        )
        return found is not None


def mark_job_submitted(db: Database, job_id: str, task_id: str) -> None:
    with db.session() as s:
        s.add(m.JobEvent(job_id=job_id, message=SUBMITTED, data={"task_id": task_id}))


def request_job_cancel(db: Database, job_id: str) -> None:
    with db.session() as s:
        job = s.get(m.FineTuneJob, job_id)
        if job is not None and job.status in ("queued", "running"):
            job.cancel_requested = True


@dataclass(frozen=True)
class JobProgress:
    status: str
    step: int
    total_steps: int | None
    fine_tuned_model: str | None
    error: str | None
    events: list[dict[str, Any]]


def _iso(value: datetime) -> str:
    if value.tzinfo is None:  # SQLite keeps no zone; every time stored is UTC
        return value.isoformat() + "Z"
    return value.isoformat().replace("+00:00", "Z")


def job_progress(db: Database, job_id: str, *, num_events: int = 10) -> JobProgress | None:
    with db.session() as s:
        job = s.get(m.FineTuneJob, job_id)
        if job is None:
            return None
        events = s.scalars(
            select(m.JobEvent)
            .where(m.JobEvent.job_id == job_id)
            .order_by(m.JobEvent.id.desc())
            .limit(num_events)
        ).all()
        error = None
        if job.error:
            error = str(job.error.get("message") or job.error)
        return JobProgress(
            status=job.status,
            step=job.step,
            total_steps=job.total_steps,
            fine_tuned_model=job.fine_tuned_model,
            error=error,
            events=[
                {"time": _iso(e.created_at), "level": e.level, "message": e.message}
                for e in reversed(events)
            ],
        )
