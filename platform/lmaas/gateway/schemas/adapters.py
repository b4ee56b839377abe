"""Schemas of the adapters API (lmaas extension) and of the model list."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from lmaas.gateway.schemas import UtcDatetime

__all__ = ["AdapterList", "AdapterPublic", "Deleted", "ModelCard", "ModelList"]


class AdapterPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["adapter"] = "adapter"
    id: str
    name: str
    base_model: str
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    sha256: str
    source: str
    status: str
    verified_at: UtcDatetime | None
    created_at: UtcDatetime


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterPublic]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``: a base model, or an adapter with its `parent`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
