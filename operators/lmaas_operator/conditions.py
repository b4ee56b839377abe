"""Status conditions: set one, keeping its transition time while its status holds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["now_rfc3339", "set_condition"]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    ok: bool | None,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with condition `type_` set (True/False/Unknown for ok True/False/None)."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    result = [dict(c) for c in conditions or [] if c.get("type") != type_]
    previous = next((c for c in conditions or [] if c.get("type") == type_), None)
    since = (
        previous.get("lastTransitionTime")
        if previous and previous.get("status") == status
        else now_rfc3339()
    )
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    return sorted(result, key=lambda c: c["type"])
