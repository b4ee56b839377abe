"""A tenant's own full fine-tune (a tenant-owned `ServedModel`, e.g. a QFT result) is served
by the embedded backend: its own runtime process, started on demand from the stored folder,
for its owner only, and scaled to zero when idle."""

from __future__ import annotations

from pathlib import Path

import httpx
from openai import NotFoundError, OpenAI

from lmaas.store import Database
from lmaas.store.artifacts import ArtifactStore
from lmaas.store.models import ServedModel, Tenant
from tests.activator.conftest import QUESTION, alive, wait_until

FT_MODEL = "ft:tiny-llama:acme:full:ftjob-1a2b3c4d5e6f7a8b9c0d1e2f"


def test_a_tenants_full_model_gets_its_own_runtime(embedded_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers.tiny_model import build_tiny_llama

    # A different model from the base one (another seed, a shorter context): the runtime's
    # own description shows which folder it loaded.
    tuned = build_tiny_llama(tmp_path / "tuned", seed=7, max_context=128)
    with embedded_gateway(idle_timeout_s=3.0) as gw:
        owner_key, other_key = gw.tenant_key("acme"), gw.tenant_key("globex")
        db = Database(gw.settings.resolved_database_url, run_migrations=False)
        with db.session() as session:
            tenant = session.query(Tenant).filter_by(name="acme").one()
            uri = ArtifactStore(gw.settings.resolved_artifact_url).put_folder(
                tuned, f"tenants/{tenant.id}/models/ftjob-x"
            )
            session.add(ServedModel(id=FT_MODEL, tenant_id=tenant.id, parent="tiny-llama", uri=uri))
        db.dispose()

        other = OpenAI(base_url=f"{gw.url}/v1", api_key=other_key, max_retries=0, timeout=60)
        try:
            other.chat.completions.create(model=FT_MODEL, messages=QUESTION, max_tokens=4)
            raise AssertionError("another tenant reached the model")
        except NotFoundError:
            pass
        assert gw.runtimes() == [], "a refused request starts nothing"

        owner = OpenAI(base_url=f"{gw.url}/v1", api_key=owner_key, max_retries=0, timeout=240)
        answer = owner.chat.completions.create(
            model=FT_MODEL, messages=QUESTION, max_tokens=4, temperature=0
        )
        assert answer.model == FT_MODEL and answer.usage.completion_tokens > 0
        (runtime,) = gw.runtimes()  # only the tenant's model runs; the base one never started
        info = httpx.get(f"{runtime.url}/internal/info", timeout=10).json()
        assert (info["model"], info["max_context"]) == (FT_MODEL, 128)

        wait_until(lambda: not alive(runtime.pid), 60, "the idle model to scale to zero")
        again = owner.chat.completions.create(
            model=FT_MODEL, messages=QUESTION, max_tokens=4, temperature=0
        )
        assert again.choices[0].message.content == answer.choices[0].message.content


def test_a_model_in_a_remote_store_is_copied_once(tmp_path: Path) -> None:
    import fsspec

    from lmaas.store.artifacts import local_model_folder

    fs = fsspec.filesystem("memory")
    fs.pipe({"/models/m1/config.json": b"{}", "/models/m1/model.safetensors": b"weights"})
    try:
        folder = local_model_folder("memory://models/m1", tmp_path / "cache")
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        assert (folder / "model.safetensors").read_bytes() == b"weights"
        fs.pipe({"/models/m1/model.safetensors": b"changed"})
        assert local_model_folder("memory://models/m1", tmp_path / "cache") == folder
        assert (folder / "model.safetensors").read_bytes() == b"weights", "copied once"
        local = tmp_path / "local"
        assert local_model_folder(local.as_uri(), tmp_path / "cache") == local
    finally:
        fs.rm("/models", recursive=True)
