"""What the operator stores: idempotent tenants and keys, adapters, jobs; tenant removal."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from lmaas.config import Settings
from lmaas.store import Database
from lmaas.store import models as m
from lmaas.store.tenants import authenticate_key
from lmaas_operator import platform_db
from lmaas_operator.resources import AdapterSpec, FineTuneJobSpec, TenantSpec


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    yield database
    database.dispose()


def count(db: Database, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_tenant_and_first_key_are_idempotent(db: Database) -> None:
    settings = Settings()
    spec = TenantSpec.model_validate({"quotas": {"requestsPerMinute": 60}})
    tid = platform_db.ensure_tenant(db, "acme", spec, settings)
    assert platform_db.ensure_tenant(db, "acme", spec, settings) == tid
    key = platform_db.new_api_key()
    first = platform_db.ensure_api_key(db, tid, key)
    assert platform_db.ensure_api_key(db, tid, key) == first
    assert count(db, m.ApiKey) == 1
    with db.session() as s:
        assert authenticate_key(s, key).name == "acme"
    changed = TenantSpec.model_validate({"quotas": {"requestsPerMinute": 120}})
    platform_db.ensure_tenant(db, "acme", changed, settings)
    with db.session() as s:
        assert s.get(m.Tenant, tid).requests_per_minute == 120
        assert s.get(m.Tenant, tid).tokens_per_minute == settings.default_tokens_per_minute


def test_another_tenants_key_is_refused(db: Database) -> None:
    settings = Settings()
    a = platform_db.ensure_tenant(db, "a", TenantSpec(), settings)
    b = platform_db.ensure_tenant(db, "b", TenantSpec(), settings)
    key = platform_db.new_api_key()
    platform_db.ensure_api_key(db, a, key)
    with pytest.raises(ValueError, match="another tenant"):
        platform_db.ensure_api_key(db, b, key)


def test_deleting_a_tenant_removes_its_rows_and_keys(db: Database) -> None:
    tid = platform_db.ensure_tenant(db, "acme", TenantSpec(), Settings())
    key = platform_db.new_api_key()
    platform_db.ensure_api_key(db, tid, key)
    platform_db.ensure_adapter(db, tid, "bot", "smol", AdapterSpec(service="chat", source="s3://a"))
    with db.session() as s:
        s.add(
            m.FileObject(
                id="file-1",
                tenant_id=tid,
                filename="t.jsonl",
                purpose="fine-tune",
                bytes=1,
                uri="x",
            )
        )
    platform_db.ensure_finetune_job(
        db, "ftjob-1", tid, FineTuneJobSpec(model="smol", training_file="file-1")
    )
    platform_db.mark_job_submitted(db, "ftjob-1", "ftjob-1")
    assert platform_db.delete_tenant(db, "acme") is True
    for model in (m.Tenant, m.ApiKey, m.Adapter, m.FineTuneJob, m.JobEvent, m.FileObject):
        assert count(db, model) == 0, model.__name__
    with db.session() as s:
        assert authenticate_key(s, key) is None
    assert platform_db.delete_tenant(db, "acme") is False


def test_adapter_registration_updates_in_place(db: Database) -> None:
    tid = platform_db.ensure_tenant(db, "acme", TenantSpec(), Settings())
    spec = AdapterSpec(service="chat", source="s3://v1", rank=8)
    first = platform_db.ensure_adapter(db, tid, "bot", "smol", spec)
    again = platform_db.ensure_adapter(
        db, tid, "bot", "smol", spec.model_copy(update={"source": "s3://v2"})
    )
    assert first == again and count(db, m.Adapter) == 1
    assert platform_db.find_adapter(db, tid, "bot").uri == "s3://v2"
    assert platform_db.delete_adapter(db, tid, "bot") and count(db, m.Adapter) == 0


def test_fine_tune_job_needs_the_tenants_file_and_is_created_once(db: Database) -> None:
    settings = Settings()
    tid = platform_db.ensure_tenant(db, "acme", TenantSpec(), settings)
    other = platform_db.ensure_tenant(db, "other", TenantSpec(), settings)
    with db.session() as s:
        s.add(
            m.FileObject(
                id="file-o", tenant_id=other, filename="t", purpose="fine-tune", bytes=1, uri="x"
            )
        )
    spec = FineTuneJobSpec(model="smol", training_file="file-o")
    with pytest.raises(LookupError, match="upload it"):
        platform_db.ensure_finetune_job(db, "ftjob-x", tid, spec)  # not this tenant's file
    with db.session() as s:
        s.add(
            m.FileObject(
                id="file-a", tenant_id=tid, filename="t", purpose="fine-tune", bytes=1, uri="x"
            )
        )
    spec = FineTuneJobSpec(model="smol", training_file="file-a")
    platform_db.ensure_finetune_job(db, "ftjob-a", tid, spec)
    platform_db.ensure_finetune_job(db, "ftjob-a", tid, spec)
    assert count(db, m.FineTuneJob) == 1
    assert not platform_db.job_was_submitted(db, "ftjob-a")
    platform_db.mark_job_submitted(db, "ftjob-a", "ftjob-a")
    assert platform_db.job_was_submitted(db, "ftjob-a")
    progress = platform_db.job_progress(db, "ftjob-a")
    assert progress.status == "queued" and progress.step == 0
    assert [e["message"] for e in progress.events][-1] == platform_db.SUBMITTED
    platform_db.request_job_cancel(db, "ftjob-a")
    with db.session() as s:
        assert s.get(m.FineTuneJob, "ftjob-a").cancel_requested
