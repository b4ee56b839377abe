"""``/v1/adapters`` (lmaas extension): upload, list, get and delete the tenant's LoRA adapters.

An upload is a multipart form: ``file`` (a ``.tar.gz`` or ``.zip`` holding
``adapter_config.json`` and ``adapter_model.safetensors``), ``name`` (how requests will name
it in ``model``) and optionally ``model`` (the base model; default the deployment's). It is
validated against the base model as served, stored, recorded, and usable at once; the worker
then reads every value (`lmaas.adapters.verify`).
"""

from __future__ import annotations

import asyncio
import logging
import re

from fastapi import APIRouter, Request
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from lmaas.gateway.deps import StateDep, TenantRepo
from lmaas.gateway.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from lmaas.gateway.generation import base_model_names
from lmaas.gateway.routing import TenantRef
from lmaas.gateway.schemas.adapters import AdapterList, AdapterPublic, Deleted
from lmaas.gateway.state import GatewayState
from lmaas.gateway.uploads import ValidatedAdapter, receive_upload, validate_upload
from lmaas.store.models import Adapter, new_id
from lmaas.store.repository import TenantRepository
from lmaas.tasks import VERIFY_ADAPTER

__all__ = ["router", "unload_everywhere"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _not_found(name: str) -> NotFound:
    return NotFound(f"No adapter named `{name}`.", code="adapter_not_found", param="name")


def _check_name(repo: TenantRepository, name: str, base_models: list[str]) -> None:
    if not ADAPTER_NAME.match(name):
        raise InvalidRequest(
            f"invalid adapter name {name!r}: use 1-128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit",
            code="invalid_name",
            param="name",
        )
    if name in base_models:
        raise Conflict(f"`{name}` is a base model's name; choose another", code="name_taken")
    if repo.get_adapter(name) is not None:
        raise Conflict(
            f"you already have an adapter named `{name}`: delete it first or choose another name",
            code="adapter_exists",
            param="name",
        )
    if repo.count_adapters() >= repo.tenant.max_adapters:
        raise PermissionDenied(
            f"you have {repo.tenant.max_adapters} adapters, your quota: delete one, or ask "
            "an administrator to raise max_adapters",
            code="adapter_quota_exceeded",
        )


def _precheck(repo: TenantRepository, name: str, model: str | None, default: str) -> str:
    base_models = base_model_names(repo)
    model = model or default
    if model not in base_models:
        raise NotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    _check_name(repo, name, base_models)
    return model


def _store(
    state: GatewayState, repo: TenantRepository, name: str, model: str, checked: ValidatedAdapter
) -> Adapter:
    adapter_id = new_id("adp")
    key = f"tenants/{repo.tenant.id}/adapters/{adapter_id}"
    uri = state.artifacts.put_folder(checked.folder, key)
    try:
        _check_name(repo, name, base_model_names(repo))  # again: another upload may have won
        adapter = repo.add(
            Adapter(
                id=adapter_id,
                name=name,
                base_model=model,
                rank=checked.spec.rank,
                alpha=checked.spec.alpha,
                target_modules=checked.spec.target_modules,
                uri=uri,
                size_bytes=checked.size_bytes,
                sha256=checked.sha256,
                source="upload",
                status="ready",
            )
        )
        repo.commit()
        return adapter
    except IntegrityError as exc:
        repo.session.rollback()
        state.artifacts.delete(key)
        raise Conflict(
            f"you already have an adapter named `{name}`", code="adapter_exists", param="name"
        ) from exc
    except BaseException:
        repo.session.rollback()
        state.artifacts.delete(key)
        raise


@router.post("", status_code=201)
async def upload_adapter(request: Request, repo: TenantRepo, state: StateDep) -> AdapterPublic:
    """Upload a peft LoRA adapter (multipart: `file`, `name`, optional `model`)."""
    settings = state.settings
    upload = await receive_upload(
        request, limit=settings.max_adapter_bytes, tmp_root=settings.home / "tmp"
    )
    try:
        name = upload.fields.get("name", "").strip()
        if not name:
            raise InvalidRequest(
                "the upload has no `name` field: name the adapter (requests use it as `model`)",
                code="invalid_name",
                param="name",
            )
        model = await run_in_threadpool(
            _precheck, repo, name, upload.fields.get("model"), settings.model_name
        )
        info = await state.model_info(model, TenantRef(repo.tenant.id, repo.tenant.name))
        checked = await run_in_threadpool(
            validate_upload,
            upload,
            info,
            max_bytes=settings.max_adapter_bytes,
            max_rank=settings.max_lora_rank,
        )
        adapter = await run_in_threadpool(_store, state, repo, name, model, checked)
    finally:
        await run_in_threadpool(upload.cleanup)
    log.info("tenant %s uploaded adapter %s (%s)", repo.tenant.name, adapter.name, adapter.id)
    await state.send_task(VERIFY_ADAPTER, adapter.id)
    return AdapterPublic.model_validate(adapter)


@router.get("")
def list_adapters(repo: TenantRepo) -> AdapterList:
    """Your adapters, oldest first."""
    return AdapterList(data=[AdapterPublic.model_validate(a) for a in repo.list_adapters()])


@router.get("/{name}")
def get_adapter(name: str, repo: TenantRepo) -> AdapterPublic:
    adapter = repo.get_adapter(name)
    if adapter is None:
        raise _not_found(name)
    return AdapterPublic.model_validate(adapter)


@router.delete("/{name}")
async def delete_adapter(name: str, repo: TenantRepo, state: StateDep) -> Deleted:
    """Delete an adapter: it stops being served and its files are removed."""

    def delete() -> Adapter:
        adapter = repo.get_adapter(name)
        if adapter is None:
            raise _not_found(name)
        repo.delete_adapter(adapter)
        repo.commit()
        state.artifacts.delete(f"tenants/{repo.tenant.id}/adapters/{adapter.id}")
        return adapter

    adapter = await run_in_threadpool(delete)
    await unload_everywhere(state, adapter.id)
    return Deleted(id=name, object="adapter")


async def unload_everywhere(state: GatewayState, adapter_id: str) -> None:
    """Ask every known replica to drop the adapter (best effort: they also evict on their own)."""
    replicas = [r for r in state.router.source.known_replicas() if r.ready]
    results = await asyncio.gather(
        *(state.client.unload_adapter(r.url, adapter_id) for r in replicas),
        return_exceptions=True,
    )
    for replica, result in zip(replicas, results, strict=True):
        replica.adapter_ids.discard(adapter_id)
        if isinstance(result, BaseException):
            log.warning("could not unload %s from %s: %s", adapter_id, replica.url, result)
