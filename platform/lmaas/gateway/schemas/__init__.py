"""Public request and response schemas of the gateway (a family per entity; no secrets)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["UtcDatetime"]


def _as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes: every stored time is UTC, so say so."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
