"""Tenants and API keys: creation, lookup by key, revocation.

Keys are 256-bit random strings shown once; only their SHA-256 is stored (a slow hash adds
nothing for keys of this entropy, and a fast one keeps authentication a single indexed
lookup). The admin API, the CLI and the operator all go through these functions.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmaas.config import Settings
from lmaas.store.models import ApiKey, Tenant, utcnow

__all__ = [
    "KEY_PREFIX",
    "QUOTA_FIELDS",
    "IssuedKey",
    "TenantExistsError",
    "TenantNameError",
    "authenticate_key",
    "create_tenant",
    "delete_tenant",
    "get_key",
    "get_tenant",
    "hash_key",
    "issue_key",
    "list_keys",
    "list_tenants",
    "revoke_key",
    "update_quotas",
    "validate_tenant_name",
]

KEY_PREFIX = "sk-lmaas-"
QUOTA_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_adapters", "max_concurrent_jobs")
TENANT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class TenantNameError(ValueError):
    """A tenant name that cannot be used (it becomes a Kubernetes namespace and a URL part)."""


class TenantExistsError(ValueError):
    """A tenant of that name exists already."""


@dataclass(frozen=True)
class IssuedKey:
    """A newly created key: `secret` is the only copy of the plaintext."""

    record: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise TenantNameError(
            f"tenant name {name!r} is invalid: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (it names a Kubernetes namespace)"
        )
    return name


def create_tenant(
    session: Session,
    name: str,
    settings: Settings,
    *,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_adapters: int | None = None,
    max_concurrent_jobs: int | None = None,
) -> Tenant:
    """Add a tenant with the given quotas (settings' defaults where not given).

    Raises `TenantNameError` for an invalid name and `TenantExistsError` for a taken one.
    """
    name = validate_tenant_name(name)
    if get_tenant(session, name) is not None:
        raise TenantExistsError(f"tenant {name!r} already exists")
    tenant = Tenant(
        name=name,
        requests_per_minute=settings.default_requests_per_minute,
        tokens_per_minute=settings.default_tokens_per_minute,
        max_adapters=settings.default_max_adapters,
        max_concurrent_jobs=settings.default_max_concurrent_jobs,
    )
    update_quotas(
        session,
        tenant,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        max_adapters=max_adapters,
        max_concurrent_jobs=max_concurrent_jobs,
    )
    session.add(tenant)
    session.flush()
    return tenant


def issue_key(session: Session, tenant: Tenant, name: str = "") -> IssuedKey:
    """Create an API key for `tenant`; the plaintext is returned once and never stored."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        tenant_id=tenant.id,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 4],
        key_hash=hash_key(secret),
    )
    session.add(record)
    session.flush()
    return IssuedKey(record=record, secret=secret)


def authenticate_key(session: Session, secret: str) -> Tenant | None:
    """The tenant owning an active key, or None for an unknown or revoked key."""
    if not secret.startswith(KEY_PREFIX):
        return None
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
    ).first()
    return None if row is None else row[1]


def revoke_key(session: Session, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = utcnow()


def get_tenant(session: Session, name: str) -> Tenant | None:
    return session.execute(select(Tenant).where(Tenant.name == name)).scalar_one_or_none()


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.execute(select(Tenant).order_by(Tenant.created_at, Tenant.name)).scalars())


def update_quotas(session: Session, tenant: Tenant, **quotas: int | None) -> Tenant:
    """Set the given quotas (None = unchanged); each must be a positive integer."""
    for field, value in quotas.items():
        if field not in QUOTA_FIELDS:
            raise ValueError(f"unknown quota {field!r}; quotas are {', '.join(QUOTA_FIELDS)}")
        if value is None:
            continue
        if value < 1:
            raise ValueError(f"{field} must be at least 1, got {value}")
        setattr(tenant, field, value)
    session.flush()
    return tenant


def delete_tenant(session: Session, tenant: Tenant) -> None:
    """Delete a tenant and, by cascade, its keys, adapters, usage, files and jobs rows."""
    session.delete(tenant)
    session.flush()


def list_keys(session: Session, tenant: Tenant) -> list[ApiKey]:
    return list(
        session.execute(
            select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.created_at)
        ).scalars()
    )


def get_key(session: Session, tenant: Tenant, key_id: str) -> ApiKey | None:
    return session.execute(
        select(ApiKey).where(ApiKey.tenant_id == tenant.id, ApiKey.id == key_id)
    ).scalar_one_or_none()
