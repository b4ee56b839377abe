"""Names of fine-tune results, shared by the gateway (which promises them) and the worker.

A result is named as OpenAI names its fine-tuned models,
``ft:<base model>:<tenant>:<suffix>:<short id>`` (``ft:<base>:<tenant>::<short id>`` without a
suffix); the short id comes from the job id, so the name is known when the job is created
and the worker that registers the result (as an `Adapter` or a tenant-owned `ServedModel`)
derives exactly the same one. An uploaded data file is stored as `DATA_FILE_NAME` in the
folder `data_file_key`; `FileObject.uri` is the full URI of that file (`fetch_file` reads it).
"""

from __future__ import annotations

import re
from typing import Protocol

__all__ = [
    "DATA_FILE_NAME",
    "MAX_MODEL_NAME",
    "MAX_SUFFIX",
    "SUFFIX",
    "checkpoint_model_name",
    "data_file_key",
    "fine_tuned_model_name",
    "job_short_id",
]

MAX_SUFFIX = 40
SUFFIX = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_SUFFIX - 1}}}$")
MAX_MODEL_NAME = 200  # the width of ServedModel.id, Adapter.name, FineTuneJob.fine_tuned_model
DATA_FILE_NAME = "data.jsonl"


class _JobLike(Protocol):
    id: str
    model: str
    suffix: str | None


def job_short_id(job_id: str) -> str:
    """The 8-character id of a job inside its result's name (``ftjob-1a2b3c4d…`` → ``1a2b3c4d``)."""
    return job_id.rsplit("-", 1)[-1][:8]


def fine_tuned_model_name(job: _JobLike, tenant_name: str) -> str:
    """The name of `job`'s result: ``ft:<base>:<tenant>:<suffix>:<short id>``."""
    return f"ft:{job.model}:{tenant_name}:{job.suffix or ''}:{job_short_id(job.id)}"


def checkpoint_model_name(job: _JobLike, tenant_name: str, step: int) -> str:
    """How a checkpoint of `job` is named (OpenAI: ``<result>:ckpt-step-<n>``)."""
    return f"{fine_tuned_model_name(job, tenant_name)}:ckpt-step-{step}"


def data_file_key(tenant_id: str, file_id: str) -> str:
    """The artifact-store key of an uploaded data file (its folder holds ``data.jsonl``)."""
    return f"tenants/{tenant_id}/files/{file_id}"
