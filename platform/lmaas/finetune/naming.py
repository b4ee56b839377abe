"""The public name of a fine-tuned model: ``ft:<base>:<tenant>:<suffix>:<job id>``.

OpenAI's shape (``ft:gpt-4o-mini:my-org:custom-suffix:abc123``): the base model, the
owner, the tenant's optional suffix (empty when none) and the job, so that two jobs never
name the same model. It is the name requests use (`model`), the `Adapter` name of a LoRA
result and the `ServedModel` id of a full (QFT) one.
"""

from __future__ import annotations

__all__ = ["fine_tuned_model_name"]


def fine_tuned_model_name(base: str, tenant_name: str, suffix: str | None, job_id: str) -> str:
    """The model name a finished fine-tune job is served under."""
    return f"ft:{base}:{tenant_name}:{suffix or ''}:{job_id}"
