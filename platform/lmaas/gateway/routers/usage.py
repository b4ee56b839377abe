"""``GET /v1/usage``: the calling tenant's tokens in and out per model per UTC day."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from lmaas.gateway.deps import TenantRepo
from lmaas.gateway.errors import InvalidRequest
from lmaas.gateway.schemas.usage import UsageList, UsageRow

__all__ = ["router"]

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("")
def get_usage(
    repo: TenantRepo,
    start: Annotated[date | None, Query(description="first day (UTC), inclusive")] = None,
    end: Annotated[date | None, Query(description="last day (UTC), inclusive")] = None,
) -> UsageList:
    """Requests and tokens per model (base model or adapter name) and day."""
    if start and end and start > end:
        raise InvalidRequest("start must not be after end", param="start")
    rows = [
        UsageRow(
            date=u.day,
            model=u.model,
            requests=u.requests,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            total_tokens=u.prompt_tokens + u.completion_tokens,
        )
        for u in repo.usage(start, end)
    ]
    return UsageList(data=rows, total_tokens=sum(r.total_tokens for r in rows))
