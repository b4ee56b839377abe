"""``/admin``: tenants (create, list, get, update quotas, delete) and their API keys.

Every route needs the admin token. A key's secret appears once, in the answer to its
creation; afterwards only its prefix is shown.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lmaas.gateway.deps import AdminAuth, SessionDep, StateDep
from lmaas.gateway.errors import Conflict, InvalidRequest, NotFound
from lmaas.gateway.schemas.adapters import Deleted
from lmaas.gateway.schemas.admin import (
    KeyCreate,
    KeyCreated,
    KeyPublic,
    TenantCreate,
    TenantPublic,
    TenantUpdate,
)
from lmaas.store import tenants
from lmaas.store.models import Tenant

__all__ = ["router"]

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminAuth])


def _tenant(session: Session, name: str) -> Tenant:
    tenant = tenants.get_tenant(session, name)
    if tenant is None:
        raise NotFound(f"No tenant named `{name}`.", code="tenant_not_found", param="name")
    return tenant


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantCreate, session: SessionDep, state: StateDep) -> TenantPublic:
    try:
        tenant = tenants.create_tenant(
            session, body.name, state.settings, **body.model_dump(exclude={"name"})
        )
        session.commit()
    except tenants.TenantNameError as exc:
        raise InvalidRequest(str(exc), code="invalid_name", param="name") from exc
    except (tenants.TenantExistsError, IntegrityError) as exc:
        session.rollback()
        raise Conflict(f"tenant `{body.name}` already exists", code="tenant_exists") from exc
    return TenantPublic.model_validate(tenant)


@router.get("/tenants")
def list_tenants(session: SessionDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [TenantPublic.model_validate(t) for t in tenants.list_tenants(session)],
    }


@router.get("/tenants/{name}")
def get_tenant(name: str, session: SessionDep) -> TenantPublic:
    return TenantPublic.model_validate(_tenant(session, name))


@router.patch("/tenants/{name}")
def update_tenant(name: str, body: TenantUpdate, session: SessionDep) -> TenantPublic:
    """Change quotas; omitted fields keep their value."""
    tenant = tenants.update_quotas(session, _tenant(session, name), **body.model_dump())
    session.commit()
    return TenantPublic.model_validate(tenant)


@router.delete("/tenants/{name}")
def delete_tenant(name: str, session: SessionDep, state: StateDep) -> Deleted:
    """Delete a tenant with its keys, adapters (and their files), usage, files and jobs."""
    tenant = _tenant(session, name)
    tenant_id = tenant.id
    tenants.delete_tenant(session, tenant)
    session.commit()
    state.artifacts.delete(f"tenants/{tenant_id}")
    return Deleted(id=name, object="tenant")


@router.post("/tenants/{name}/keys", status_code=201)
def create_key(
    name: str, session: SessionDep, body: KeyCreate | None = Body(default=None)
) -> KeyCreated:
    """A new API key; the secret `key` is shown only in this answer."""
    issued = tenants.issue_key(session, _tenant(session, name), (body or KeyCreate()).name)
    session.commit()
    public = KeyPublic.model_validate(issued.record)
    return KeyCreated(**public.model_dump(), key=issued.secret)


@router.get("/tenants/{name}/keys")
def list_keys(name: str, session: SessionDep) -> dict[str, Any]:
    keys = tenants.list_keys(session, _tenant(session, name))
    return {"object": "list", "data": [KeyPublic.model_validate(k) for k in keys]}


@router.delete("/tenants/{name}/keys/{key_id}")
def revoke_key(name: str, key_id: str, session: SessionDep) -> KeyPublic:
    """Revoke a key: it stops working at once."""
    key = tenants.get_key(session, _tenant(session, name), key_id)
    if key is None:
        raise NotFound(f"No key `{key_id}` for tenant `{name}`.", code="key_not_found")
    tenants.revoke_key(session, key)
    session.commit()
    return KeyPublic.model_validate(key)
