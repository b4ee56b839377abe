"""Names of fine-tune results and where data files live, shared by the gateway and the worker.

The public name of a fine-tuned model is ``ft:<base>:<tenant>:<suffix>:<job id>``, OpenAI's
shape (``ft:gpt-4o-mini:my-org:custom-suffix:abc123``): the base model, the owner, the
tenant's optional suffix (empty when none) and the job, so that two jobs never name the
same model. It is the name requests use (`model`), the `Adapter` name of a LoRA result and
the `ServedModel` id of a full (QFT) one; the gateway knows it when the job is created.

An uploaded data file is stored as `DATA_FILE_NAME` in the artifact-store folder
`data_file_key`; `FileObject.uri` is the full URI of that file (`fetch_file` reads it).
"""

from __future__ import annotations

import re

__all__ = [
    "DATA_FILE_NAME",
    "MAX_MODEL_NAME",
    "MAX_SUFFIX",
    "SUFFIX",
    "checkpoint_model_name",
    "data_file_key",
    "fine_tuned_model_name",
]

MAX_SUFFIX = 40
SUFFIX = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_SUFFIX - 1}}}$")
MAX_MODEL_NAME = 200  # the width of ServedModel.id, Adapter.name, FineTuneJob.fine_tuned_model
DATA_FILE_NAME = "data.jsonl"


def fine_tuned_model_name(base: str, tenant_name: str, suffix: str | None, job_id: str) -> str:
    """The model name a finished fine-tune job is served under."""
    return f"ft:{base}:{tenant_name}:{suffix or ''}:{job_id}"


def checkpoint_model_name(
    base: str, tenant_name: str, suffix: str | None, job_id: str, step: int
) -> str:
    """How a checkpoint of a job is named (OpenAI: ``<result>:ckpt-step-<n>``)."""
    return f"{fine_tuned_model_name(base, tenant_name, suffix, job_id)}:ckpt-step-{step}"


def data_file_key(tenant_id: str, file_id: str) -> str:
    """The artifact-store key of an uploaded data file (its folder holds `DATA_FILE_NAME`)."""
    return f"tenants/{tenant_id}/files/{file_id}"
