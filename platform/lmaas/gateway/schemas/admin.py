"""Schemas of the admin API: tenants (Create, Update, Public) and API keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lmaas.gateway.schemas import UtcDatetime

__all__ = ["KeyCreate", "KeyCreated", "KeyPublic", "TenantCreate", "TenantPublic", "TenantUpdate"]


class TenantUpdate(BaseModel):
    """Quotas to change; omitted ones stay as they are."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_adapters: int | None = Field(default=None, ge=1)
    max_concurrent_jobs: int | None = Field(default=None, ge=1)


class TenantCreate(TenantUpdate):
    """A new tenant; quotas default to the deployment's settings."""

    name: str = Field(min_length=1, max_length=63, examples=["acme"])


class TenantPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: str = "tenant"
    id: str
    name: str
    requests_per_minute: int
    tokens_per_minute: int
    max_adapters: int
    max_concurrent_jobs: int
    created_at: UtcDatetime


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=100)


class KeyPublic(BaseModel):
    """A key as listed: never the secret, only its first characters."""

    model_config = ConfigDict(from_attributes=True)

    object: str = "api_key"
    id: str
    name: str
    prefix: str
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None


class KeyCreated(KeyPublic):
    """The answer to a key creation: the only time the secret is shown."""

    key: str
