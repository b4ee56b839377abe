"""Model and GPUType handlers: register models in the database, validate GPU types."""

from __future__ import annotations

from typing import Any

import kopf

from lmaas_operator import platform_db
from lmaas_operator.crds import GROUP, VERSION
from lmaas_operator.errors import InvalidSpec
from lmaas_operator.handlers.common import parse, reconcile
from lmaas_operator.handlers.lifecycle import deps
from lmaas_operator.resources import GPUTypeSpec, ModelSpec

__all__ = ["gputype_reconcile", "model_reconcile"]


@kopf.on.resume(GROUP, VERSION, "models")
@kopf.on.create(GROUP, VERSION, "models")
@kopf.on.update(GROUP, VERSION, "models")
def model_reconcile(name: str, spec, status, meta, patch, **_: Any) -> None:
    parsed = parse(ModelSpec, spec)

    def work() -> dict[str, Any]:
        platform_db.ensure_served_model(deps().db, name, parsed)
        return {}

    reconcile(patch, status, meta, work)


@kopf.on.resume(GROUP, VERSION, "gputypes")
@kopf.on.create(GROUP, VERSION, "gputypes")
@kopf.on.update(GROUP, VERSION, "gputypes")
def gputype_reconcile(spec, status, meta, patch, **_: Any) -> None:
    parsed = parse(GPUTypeSpec, spec)

    def work() -> dict[str, Any]:
        if parsed.spot is not None and parsed.spot_price_per_hour is None:
            raise InvalidSpec("spot capacity is declared without spotPricePerHour")
        return {}

    reconcile(patch, status, meta, work)
