"""Reconciling a FineTuneJob: a job row, one task message, progress copied back.

The job id is derived from the resource's uid, so the row is found again after any
restart; the task is sent only while the row has no "submitted" event. The workers own
the row's progress; the operator copies it into status on a timer, and when a LoRA job
has succeeded it creates the Adapter resource that serves the result.
"""

from __future__ import annotations

from typing import Any

from lmaas_operator import naming as n
from lmaas_operator import platform_db
from lmaas_operator.crds import API_VERSION
from lmaas_operator.deps import Deps
from lmaas_operator.errors import InvalidSpec, NotReady
from lmaas_operator.finetune_tasks import send_finetune_job
from lmaas_operator.resources import FineTuneJobSpec
from lmaas_operator.tenants import tenant_of_namespace

__all__ = ["TERMINAL", "cancel_job", "job_id_for", "mirror_job", "submit_job"]

TERMINAL = ("succeeded", "failed", "cancelled")


def job_id_for(uid: str) -> str:
    return "ftjob-" + uid.replace("-", "")[:24]


def submit_job(deps: Deps, *, uid: str, namespace: str, spec: FineTuneJobSpec) -> dict[str, Any]:
    """Create the job row and send its task (each at most once); returns status fields."""
    tenant = tenant_of_namespace(deps, namespace)
    if tenant is None:
        raise InvalidSpec(
            f"namespace {namespace!r} is not a tenant's namespace: create FineTuneJobs in the "
            "namespace of their Tenant",
            reason="NoTenant",
        )
    tenant_id = platform_db.tenant_id(deps.db, tenant)
    if tenant_id is None:
        raise NotReady(f"tenant {tenant!r} is not registered yet", reason="TenantPending")
    job_id = job_id_for(uid)
    try:
        platform_db.ensure_finetune_job(deps.db, job_id, tenant_id, spec)
    except LookupError as exc:
        raise InvalidSpec(str(exc), reason="FileMissing") from exc
    if not platform_db.job_was_submitted(deps.db, job_id):
        task_id = send_finetune_job(deps.settings, job_id)
        platform_db.mark_job_submitted(deps.db, job_id, task_id)
    return {"jobId": job_id}


def _adapter_body(
    *,
    job_name: str,
    namespace: str,
    spec: FineTuneJobSpec,
    registered_as: str,
    source: str,
    rank: int,
    alpha: float,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Adapter",
        "metadata": {
            "name": spec.output.adapter_name or job_name,
            "namespace": namespace,
            "labels": {n.LABEL_PART_OF: "lmaas", n.LABEL_FINETUNE_JOB: job_name},
        },
        "spec": {
            "service": spec.output.service,
            "adapterName": registered_as,
            "source": source,
            "rank": rank,
            "alpha": alpha,
        },
    }


def mirror_job(
    deps: Deps, *, name: str, namespace: str, spec: FineTuneJobSpec, job_id: str
) -> dict[str, Any]:
    """Status fields from the job row; creates the Adapter of a succeeded LoRA job."""
    progress = platform_db.job_progress(deps.db, job_id)
    if progress is None:
        raise NotReady(f"job {job_id} is not in the database", reason="JobMissing")
    fields: dict[str, Any] = {
        "phase": progress.status,
        "step": progress.step,
        "totalSteps": progress.total_steps,
        "progress": f"{progress.step}/{progress.total_steps or '?'}",
        "fineTunedModel": progress.fine_tuned_model,
        "error": progress.error,
        "events": progress.events,
    }
    if progress.status == "succeeded" and spec.method == "lora" and spec.output.service:
        adapter_name = spec.output.adapter_name or name
        if deps.kube.get(API_VERSION, "Adapter", adapter_name, namespace) is None:
            tenant = tenant_of_namespace(deps, namespace)
            tenant_id = None if tenant is None else platform_db.tenant_id(deps.db, tenant)
            row = (
                None
                if tenant_id is None or not progress.fine_tuned_model
                else platform_db.find_adapter(deps.db, tenant_id, progress.fine_tuned_model)
            )
            if row is None:
                raise NotReady(
                    f"job {job_id} succeeded but its adapter "
                    f"{progress.fine_tuned_model!r} is not registered yet",
                    reason="AdapterPending",
                    delay=5,
                )
            deps.kube.ensure(
                _adapter_body(
                    job_name=name,
                    namespace=namespace,
                    spec=spec,
                    registered_as=row.name,
                    source=row.uri,
                    rank=row.rank,
                    alpha=row.alpha,
                )
            )
        fields["adapter"] = adapter_name
    return fields


def cancel_job(deps: Deps, *, job_id: str | None) -> None:
    if job_id:
        platform_db.request_job_cancel(deps.db, job_id)
