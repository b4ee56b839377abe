"""Schemas of the fine-tuning API: OpenAI's job, event and checkpoint objects and the request.

The request is OpenAI's ``POST /v1/fine_tuning/jobs`` body plus lmaas's `method` as a string
(``"lora"``, the default, or ``"qft"``); OpenAI's object form of `method` is accepted too
(``{"type": "supervised", "supervised": {"hyperparameters": {…}}}`` means LoRA, and
``{"type": "qft" | "lora", …}`` names lmaas's method). Hyperparameters are OpenAI's three plus
the lmaas ones of `lmaas.finetune.hyperparameters` (they are checked there).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CheckpointList",
    "CheckpointPublic",
    "EventList",
    "EventPublic",
    "JobCreate",
    "JobError",
    "JobList",
    "JobPublic",
]


class JobCreate(BaseModel):
    """``POST /v1/fine_tuning/jobs``: unknown fields are refused, so a typo is not ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None
    suffix: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**31)
    method: str | dict[str, Any] | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobPublic(BaseModel):
    """OpenAI's FineTuningJob; `training_method` (lora or qft) is lmaas's."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    user_provided_suffix: str | None = None
    training_method: Literal["lora", "qft"]
    step: int = 0
    total_steps: int | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobPublic]
    has_more: bool = False


class EventPublic(BaseModel):
    """OpenAI's FineTuningJobEvent: `type` is ``metrics`` when `data` has a step and a loss."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventPublic]
    has_more: bool = False


class CheckpointPublic(BaseModel):
    """OpenAI's FineTuningJobCheckpoint."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointPublic]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
