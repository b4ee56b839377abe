"""Schemas of ``GET /v1/usage``: tokens in and out per model per day."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel

__all__ = ["UsageList", "UsageRow"]


class UsageRow(BaseModel):
    object: Literal["usage.day"] = "usage.day"
    date: date
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageRow]
    total_tokens: int
