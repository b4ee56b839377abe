"""The store: SQLAlchemy models, sessions and Alembic migrations of the system of record."""

from lmaas.store.db import Database, migrate
from lmaas.store.models import (
    Adapter,
    ApiKey,
    Base,
    FileObject,
    FineTuneJob,
    JobCheckpoint,
    JobEvent,
    ServedModel,
    Tenant,
    UsageDay,
)

__all__ = [
    "Adapter",
    "ApiKey",
    "Base",
    "Database",
    "FileObject",
    "FineTuneJob",
    "JobCheckpoint",
    "JobEvent",
    "ServedModel",
    "Tenant",
    "UsageDay",
    "migrate",
]
