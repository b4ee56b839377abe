"""Gateway fixtures: one real runtime (tiny model, reference engine) per session, served over
HTTP in a thread, and a gateway app per test on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lmaas.config import Settings
from tests.conftest import free_port
from tests.helpers.servers import serve_in_thread, wait_http

MODEL = "tiny-llama"
ADMIN_TOKEN = "lmaas-admin-test-token"


@pytest.fixture(scope="session")
def runtime_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from lmaas.runtime import create_app as create_runtime

    settings = Settings(
        home=tmp_path_factory.mktemp("runtime-home"),
        base_model=str(tiny_model_dir),
        model_name=MODEL,
        engine="reference",
    )
    with serve_in_thread(create_runtime(settings), free_port()) as url:
        wait_http(f"{url}/readyz")
        yield url


def gateway_settings(tmp_path: Path, database_url: str, runtime_url: str, **overrides) -> Settings:
    values = {
        "home": tmp_path / "gateway-home",
        "database_url": database_url,
        "runtime_urls": runtime_url,
        "model_name": MODEL,
        "admin_token": ADMIN_TOKEN,
        "replica_wait_s": 10.0,
        **overrides,
    }
    return Settings(**values)


@dataclass
class Api:
    """A gateway under test and shortcuts for the admin steps."""

    client: TestClient
    settings: Settings

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def tenant(self, name: str, **quotas: int) -> dict[str, str]:
        """Create tenant `name` and a key; returns the tenant's auth headers."""
        r = self.client.post("/admin/tenants", json={"name": name, **quotas}, headers=self.admin)
        assert r.status_code == 201, r.text
        r = self.client.post(f"/admin/tenants/{name}/keys", headers=self.admin)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.fixture
def api(tmp_path: Path, database_url: str, runtime_url: str) -> Iterator[Api]:
    from lmaas.gateway import create_app

    settings = gateway_settings(tmp_path, database_url, runtime_url)
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings)
