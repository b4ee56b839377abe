"""Running a reconcile function from a handler: status, conditions and kopf's errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from lmaas_operator.conditions import set_condition
from lmaas_operator.errors import InvalidSpec, NotReady
from lmaas_operator.kube import KubeError, KubeUnavailable
from lmaas_operator.settings import OperatorSettings

__all__ = ["RESYNC_S", "parse", "reconcile"]

M = TypeVar("M", bound=BaseModel)

# Read once at import: kopf takes the timer interval when the handler is registered.
RESYNC_S = OperatorSettings().resync_interval_s
FINETUNE_POLL_S = OperatorSettings().finetune_poll_s


def parse(model: type[M], spec: Mapping[str, Any]) -> M:
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc


def _write(patch: kopf.Patch, status: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """Only what changed: an unchanged status is not written (no event, no churn)."""
    current = dict(status or {})
    for key, value in fields.items():
        if key.startswith("_") or (value is None and key not in current):
            continue  # a null for an absent key would be patched on every pass
        if current.get(key) != value:
            patch.status[key] = value


def reconcile(
    patch: kopf.Patch,
    status: Mapping[str, Any],
    meta: Mapping[str, Any],
    work: Callable[[], dict[str, Any]],
    *,
    ready_reason: Callable[[dict[str, Any]], tuple[bool, str, str]] | None = None,
    timer: bool = False,
) -> dict[str, Any] | None:
    """Run `work`, write its fields and the Ready condition into status, map failures.

    In a timer (drift correction) failures are only recorded: the timer keeps ticking.
    """
    generation = meta.get("generation")
    conditions = list((status or {}).get("conditions") or [])

    def fail(reason: str, message: str) -> None:
        _write(
            patch,
            status,
            {
                "conditions": set_condition(
                    conditions, "Ready", False, reason, message, generation=generation
                )
            },
        )

    try:
        fields = work()
    except NotReady as exc:
        fail(exc.reason, str(exc))
        if timer:
            return None
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    except InvalidSpec as exc:
        fail(exc.reason, str(exc))
        if timer:
            return None
        raise kopf.PermanentError(str(exc)) from exc
    except KubeUnavailable as exc:
        fail("ApiUnavailable", str(exc))
        if timer:
            return None
        raise kopf.TemporaryError(str(exc), delay=10) from exc
    except KubeError as exc:  # e.g. 403 (RBAC) or 422: an admin can fix it
        fail(exc.reason or "ApiError", str(exc))
        if timer:
            return None
        raise kopf.TemporaryError(str(exc), delay=30) from exc
    except SQLAlchemyError as exc:
        fail("DatabaseUnavailable", f"{type(exc).__name__}: {exc}"[:500])
        if timer:
            return None
        raise kopf.TemporaryError("the platform database failed", delay=10) from exc
    ok, reason, message = ready_reason(fields) if ready_reason else (True, "Reconciled", "")
    fields = {
        **fields,
        "conditions": set_condition(
            conditions, "Ready", ok, reason, message, generation=generation
        ),
        "observedGeneration": generation,
    }
    _write(patch, status, fields)
    return fields
