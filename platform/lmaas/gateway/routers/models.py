"""``/v1/models``: the base models and the tenant's own models — its adapters and its full
fine-tunes (each with its parent) — and deleting one of its own (OpenAI's
``client.models.delete``)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import or_, select
from starlette.concurrency import run_in_threadpool

from lmaas.gateway.deps import StateDep, TenantRepo
from lmaas.gateway.errors import NotFound, PermissionDenied
from lmaas.gateway.routers.adapters import unload_everywhere
from lmaas.gateway.schemas.adapters import Deleted, ModelCard, ModelList
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


def _not_found(model: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


@router.get("/{model:path}")
def get_model(model: str, repo: TenantRepo) -> ModelCard:
    for card in _cards(repo):
        if card.id == model:
            return card
    raise _not_found(model)


@router.delete("/{model:path}")
async def delete_model(model: str, repo: TenantRepo, state: StateDep) -> Deleted:
    """Delete one of your models (a fine-tune result or an adapter): it stops being served
    and its files are removed. Shared base models cannot be deleted."""

    def delete() -> str | None:
        """Delete the row and the files; the adapter id to unload, if it was one."""
        own = repo.get_owned(ServedModel, model)
        if own is not None:
            repo.session.delete(own)
            repo.commit()
            key = state.artifacts.key_of(own.uri)
            if key is not None:
                state.artifacts.delete(key)
            return None
        adapter = repo.get_adapter(model)
        if adapter is None:
            shared = repo.session.get(ServedModel, model)
            if shared is not None and shared.tenant_id is None:
                raise PermissionDenied(
                    f"`{model}` is a base model shared by every tenant; you can delete only "
                    "your own models",
                    code="model_not_deletable",
                    param="model",
                )
            raise _not_found(model)
        repo.delete_adapter(adapter)
        repo.commit()
        state.artifacts.delete(f"tenants/{repo.tenant.id}/adapters/{adapter.id}")
        return adapter.id

    adapter_id = await run_in_threadpool(delete)
    if adapter_id is not None:
        await unload_everywhere(state, adapter_id)
    return Deleted(id=model, object="model")
