"""Dependencies as types: `StateDep`, `SessionDep`, `CurrentTenant`, `TenantRepo`, `AdminAuth`.

Tenant routes take a `TenantRepo`: the repository bound to the authenticated tenant, the
only door to tenant data, so no route can forget to scope a query. The session closes when
the route function returns (``scope="function"``), before a stream starts, so a long
completion never holds a database connection.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from lmaas.gateway.errors import AuthenticationError
from lmaas.gateway.state import GatewayState
from lmaas.store.models import Tenant
from lmaas.store.repository import TenantRepository
from lmaas.store.tenants import authenticate_key

__all__ = ["AdminAuth", "CurrentTenant", "SessionDep", "StateDep", "TenantRepo"]

_bearer = HTTPBearer(auto_error=False, description="API key of a tenant (or the admin token)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_state(request: Request) -> GatewayState:
    return request.app.state.lmaas


StateDep = Annotated[GatewayState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.db.sessionmaker() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_current_tenant(session: SessionDep, credentials: Credentials) -> Tenant:
    if credentials is None:
        raise AuthenticationError(
            "You didn't provide an API key: send it as 'Authorization: Bearer <key>'. "
            "An administrator creates keys with `lmaas key create <tenant>`.",
            code="missing_api_key",
        )
    tenant = authenticate_key(session, credentials.credentials)
    if tenant is None:
        raise AuthenticationError(
            "Incorrect or revoked API key provided. Ask an administrator for a valid key "
            "(`lmaas key create <tenant>`)."
        )
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant, scope="function")]


def get_tenant_repository(session: SessionDep, tenant: CurrentTenant) -> TenantRepository:
    return TenantRepository(session, tenant)


TenantRepo = Annotated[TenantRepository, Depends(get_tenant_repository, scope="function")]


def require_admin(state: StateDep, credentials: Credentials) -> None:
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), state.admin_token.encode()
    ):
        raise AuthenticationError(
            "This endpoint needs the admin token: send 'Authorization: Bearer <admin token>' "
            "(LMAAS_ADMIN_TOKEN, or the file admin-token under LMAAS_HOME).",
            code="invalid_admin_token",
        )


AdminAuth = Depends(require_admin)
