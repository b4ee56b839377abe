"""FineTuneJob handlers: submit once on create/resume, mirror progress on a timer, cancel
on delete."""

from __future__ import annotations

from typing import Any

import kopf

from lmaas_operator.crds import GROUP, VERSION
from lmaas_operator.finetuning import TERMINAL, cancel_job, job_id_for, mirror_job, submit_job
from lmaas_operator.handlers.common import FINETUNE_POLL_S, parse, reconcile
from lmaas_operator.handlers.lifecycle import deps
from lmaas_operator.resources import FineTuneJobSpec

__all__ = ["finetune_delete", "finetune_mirror", "finetune_submit"]


def _ready(fields: dict[str, Any]) -> tuple[bool, str, str]:
    phase = fields.get("phase")
    if phase is None:
        return True, "Submitted", "queued for the workers"
    if phase == "failed":
        return False, "Failed", fields.get("error") or "the job failed"
    return True, str(phase).capitalize(), fields.get("progress") or ""


@kopf.on.resume(GROUP, VERSION, "finetunejobs")
@kopf.on.create(GROUP, VERSION, "finetunejobs")
def finetune_submit(namespace: str, spec, uid: str, status, meta, patch, **_: Any) -> None:
    parsed = parse(FineTuneJobSpec, spec)

    def work() -> dict[str, Any]:
        fields = submit_job(deps(), uid=uid, namespace=namespace, spec=parsed)
        if not (status or {}).get("phase"):
            fields["phase"] = "queued"
        return fields

    reconcile(patch, status, meta, work, ready_reason=_ready)


@kopf.timer(GROUP, VERSION, "finetunejobs", interval=FINETUNE_POLL_S)
def finetune_mirror(name: str, namespace: str, spec, status, meta, patch, **_: Any) -> None:
    current = dict(status or {})
    job_id = current.get("jobId")
    parsed = parse(FineTuneJobSpec, spec)
    wants_adapter = parsed.method == "lora" and bool(parsed.output.service)
    done = current.get("phase") in TERMINAL and (current.get("adapter") or not wants_adapter)
    if not job_id or done:
        return
    reconcile(
        patch,
        status,
        meta,
        lambda: mirror_job(deps(), name=name, namespace=namespace, spec=parsed, job_id=job_id),
        ready_reason=_ready,
        timer=True,
    )


@kopf.on.delete(GROUP, VERSION, "finetunejobs")
def finetune_delete(uid: str, status, **_: Any) -> None:
    cancel_job(deps(), job_id=(status or {}).get("jobId") or job_id_for(uid))
