"""Activator fixtures: a gateway over real HTTP whose runtimes come from a scale backend.

`embedded_gateway` serves a gateway (SQLite, in a thread) with the embedded backend: it
starts real ``lmaas runtime`` processes of the tiny model on demand. Helpers read the
processes it recorded, the metrics of the gateway and of a runtime, and make tenants.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lmaas.config import Settings
from lmaas.gateway.activator.runtime_process import RuntimeRecord, runtime_records
from tests.conftest import free_port
from tests.helpers.servers import serve_in_thread

MODEL = "tiny-llama"
ADMIN_TOKEN = "lmaas-admin-test-token"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample `name` with `labels` in Prometheus text `text` (0 if absent)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def alive(pid: int) -> bool:
    """`pid` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class Gateway:
    url: str
    settings: Settings

    @property
    def run_dir(self) -> Path:
        return self.settings.home / "run"

    def runtimes(self) -> list[RuntimeRecord]:
        return [r for r in runtime_records(self.run_dir) if alive(r.pid)]

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def tenant_key(self, name: str = "acme") -> str:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = httpx.post(f"{self.url}/admin/tenants", json={"name": name}, headers=admin)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{self.url}/admin/tenants/{name}/keys", headers=admin)
        assert r.status_code == 201, r.text
        return r.json()["key"]

    def runtime_log(self) -> str:
        path = self.settings.home / "logs" / "runtime.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def wait_runtime_ready(gateway: Gateway, timeout_s: float = 180) -> RuntimeRecord:
    """The gateway's first runtime process whose ``/readyz`` answers 200 (waits for it)."""

    def ready() -> RuntimeRecord | None:
        for record in gateway.runtimes():
            try:
                if httpx.get(f"{record.url}/readyz", timeout=5).status_code == 200:
                    return record
            except httpx.HTTPError:
                pass
        return None

    return wait_until(ready, timeout_s, "a ready runtime", poll_s=0.3)


def runtime_requests(url: str) -> float:
    """Generate requests a runtime has seen, whatever their outcome (its own counter)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return metric(text, "lmaas_runtime_requests_total")


def gateway_settings(home: Path, model_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "database_url": f"sqlite:///{home / 'lmaas.db'}",
        "base_model": str(model_dir),
        "model_name": MODEL,
        "admin_token": ADMIN_TOKEN,
        "scale_backend": "embedded",
        "runtime_prewarm": False,
        "idle_timeout_s": 600.0,
        "activation_timeout_s": 180.0,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def serve_gateway(settings: Settings) -> Iterator[Gateway]:
    from lmaas.gateway import create_app

    with serve_in_thread(create_app(settings), free_port()) as url:
        yield Gateway(url, settings)


@pytest.fixture
def embedded_gateway(tmp_path: Path, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """A factory: ``with embedded_gateway(idle_timeout_s=2) as gw: ...``; checks that no
    runtime process outlives its gateway."""
    seen: list[Gateway] = []

    @contextmanager
    def make(home: Path | None = None, **overrides: object) -> Iterator[Gateway]:
        home = home or tmp_path / f"home-{len(seen)}"
        settings = gateway_settings(home, tiny_model_dir, **overrides)
        with serve_gateway(settings) as gateway:
            seen.append(gateway)
            yield gateway

    yield make
    for gateway in seen:
        left = [r.pid for r in runtime_records(gateway.run_dir) if alive(r.pid)]
        for pid in left:
            os.kill(pid, 9)
        assert not left, f"runtime processes outlived their gateway: {left}"
