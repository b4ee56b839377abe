"""Migrations apply on SQLite and PostgreSQL, and the schema matches the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from lmaas.store import Base, Database, Tenant


def test_migrations_match_models_and_are_idempotent(database_url: str) -> None:
    db = Database(database_url)
    Database(database_url).dispose()  # second start: nothing to do
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    with db.session() as s:
        s.add(
            Tenant(
                name="acme",
                requests_per_minute=1,
                tokens_per_minute=1,
                max_adapters=1,
                max_concurrent_jobs=1,
            )
        )
    with db.session() as s:
        assert s.query(Tenant).one().name == "acme"
    db.dispose()
