"""``GET /v1/models``: the base models and the tenant's own adapters (each with its parent)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import or_, select

from lmaas.gateway.deps import TenantRepo
from lmaas.gateway.errors import NotFound
from lmaas.gateway.schemas.adapters import ModelCard, ModelList
from lmaas.store.models import ServedModel
from lmaas.store.repository import TenantRepository

__all__ = ["router"]

router = APIRouter(prefix="/v1/models", tags=["models"])


def _cards(repo: TenantRepository) -> list[ModelCard]:
    rows = repo.session.execute(
        select(ServedModel)
        .where(or_(ServedModel.tenant_id.is_(None), ServedModel.tenant_id == repo.tenant.id))
        .order_by(ServedModel.created_at, ServedModel.id)
    ).scalars()
    cards = [
        ModelCard(
            id=m.id,
            created=int(m.created_at.timestamp()),
            owned_by=repo.tenant.name if m.tenant_id else "lmaas",
            parent=m.parent,
            root=m.parent or m.id,
        )
        for m in rows
    ]
    cards += [
        ModelCard(
            id=a.name,
            created=int(a.created_at.timestamp()),
            owned_by=repo.tenant.name,
            parent=a.base_model,
            root=a.base_model,
        )
        for a in repo.list_adapters()
        if a.status != "failed"
    ]
    return cards


@router.get("")
def list_models(repo: TenantRepo) -> ModelList:
    """Models you can use: base models, then your adapters."""
    return ModelList(data=_cards(repo))


@router.get("/{model:path}")
def get_model(model: str, repo: TenantRepo) -> ModelCard:
    for card in _cards(repo):
        if card.id == model:
            return card
    raise NotFound(
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )
