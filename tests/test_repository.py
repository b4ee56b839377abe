"""Tenants, keys and the tenant-scoped repository on SQLite and PostgreSQL; the artifact store."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import pytest

from lmaas.config import Settings
from lmaas.store import Adapter, Database, Tenant
from lmaas.store.artifacts import ArtifactStore, fetch_folder
from lmaas.store.repository import TenantRepository
from lmaas.store.tenants import (
    TenantExistsError,
    TenantNameError,
    authenticate_key,
    create_tenant,
    delete_tenant,
    issue_key,
    list_keys,
    revoke_key,
    update_quotas,
)


@pytest.fixture
def db(database_url: str):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    yield database
    database.dispose()


def test_keys_authenticate_until_revoked(db: Database, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with db.session() as s:
        tenant = create_tenant(s, "acme", settings, max_adapters=3)
        assert (tenant.max_adapters, tenant.requests_per_minute) == (
            3,
            settings.default_requests_per_minute,
        )
        issued = issue_key(s, tenant, "ci")
        secret = issued.secret
    with db.session() as s:
        assert authenticate_key(s, secret).name == "acme"
        assert authenticate_key(s, secret + "x") is None
        assert authenticate_key(s, "not-even-a-key") is None
        stored = list_keys(s, authenticate_key(s, secret))
        assert secret not in {k.key_hash for k in stored} and stored[0].prefix == secret[:13]
        revoke_key(s, stored[0])
    with db.session() as s:
        assert authenticate_key(s, secret) is None
    with db.session() as s, pytest.raises(TenantExistsError):
        create_tenant(s, "acme", settings)
    with db.session() as s, pytest.raises(TenantNameError):
        create_tenant(s, "Acme Corp", settings)
    with db.session() as s, pytest.raises(ValueError, match="at least 1"):
        update_quotas(
            s,
            authenticate_key(s, issue_key(s, create_tenant(s, "b", settings)).secret),
            max_adapters=0,
        )


def test_the_repository_sees_only_its_tenant(db: Database, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with db.session() as s:
        alice, bob = create_tenant(s, "alice", settings), create_tenant(s, "bob", settings)
        for tenant in (alice, bob):
            TenantRepository(s, tenant).add(
                Adapter(name="same-name", base_model="m", rank=4, target_modules=[], uri="u")
            )
    with db.session() as s:
        alice_repo = TenantRepository(s, s.get(type(alice), alice.id))
        bob_repo = TenantRepository(s, s.get(type(bob), bob.id))
        mine = alice_repo.get_adapter("same-name")
        assert mine is not None and mine.tenant_id == alice.id
        bobs = bob_repo.get_adapter("same-name")
        assert alice_repo.get_owned(Adapter, bobs.id) is None
        assert [a.tenant_id for a in alice_repo.list_adapters()] == [alice.id]
        with pytest.raises(PermissionError):
            alice_repo.delete_adapter(bobs)
        assert alice_repo.count_adapters() == 1


def test_usage_counts_every_request_exactly_under_concurrency(db: Database, tmp_path: Path) -> None:
    with db.session() as s:
        tenant_id = create_tenant(s, "acme", Settings(home=tmp_path)).id
    day = date(2026, 1, 2)

    def record() -> None:
        for _ in range(10):
            with db.session() as s:
                tenant = s.get(Tenant, tenant_id)
                TenantRepository(s, tenant).record_usage("m", 3, 5, day=day)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.session() as s:
        rows = TenantRepository(s, s.get(Tenant, tenant_id)).usage()
        assert [
            (r.model, r.day, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows
        ] == [("m", day, 40, 120, 200)]
        assert TenantRepository(s, s.get(Tenant, tenant_id)).usage(start=date(2026, 1, 3)) == []
        delete_tenant(s, s.get(Tenant, tenant_id))


def test_artifact_store_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.json").write_text("{}")
    (source / "b.bin").write_bytes(b"\x00\x01")
    store = ArtifactStore(str(tmp_path / "store"))
    uri = store.put_folder(source, "tenants/t1/adapters/x")
    assert uri.startswith("file://") and store.exists("tenants/t1/adapters/x")
    out = fetch_folder(uri, ["a.json", "b.bin"], tmp_path / "out")
    assert (out / "b.bin").read_bytes() == b"\x00\x01"
    store.delete("tenants/t1")
    assert not store.exists("tenants/t1/adapters/x")
    for bad in ("../x", "a/../../b", ""):
        with pytest.raises(ValueError, match="invalid artifact key"):
            store.path(bad)
    memory = ArtifactStore("memory://lmaas-test-bucket")
    uri = memory.put_folder(source, "k")
    assert uri.startswith("memory://")
    assert fetch_folder(uri, ["a.json"], tmp_path / "m")
