"""The runtime's HTTP API (lmaas.protocol), over each engine."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lmaas.config import Settings
from lmaas.runtime import create_app, create_engine
from lmaas.store.artifacts import ArtifactStore
from tests.helpers.adapters import make_peft_adapter


def settings_for(tmp_path: Path, model_dir: Path, **overrides) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(
        home=tmp_path / "home", base_model=str(model_dir), model_name="tiny-llama", **overrides
    )


def wait_ready(client: TestClient, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200 or r.json()["phase"] == "failed":
            return r.json()
        time.sleep(0.1)
    raise TimeoutError("runtime not ready")


def lines(response) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(line) for line in response.text.splitlines() if line]


@pytest.mark.parametrize("engine", ["lmaas", "reference"])
def test_serves_the_protocol(tmp_path: Path, tiny_model_dir: Path, engine: str) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    adapter = make_peft_adapter(tiny_model_dir, tmp_path / "adapter")
    uri = store.put_folder(adapter, "tenants/t/adapters/adp-1")
    with TestClient(create_app(settings_for(tmp_path, tiny_model_dir, engine=engine))) as client:
        assert wait_ready(client)["ready"] is True
        assert client.get("/healthz").json()["status"] == "ok"
        info = client.get("/internal/info").json()
        assert (info["model"], info["num_layers"], info["max_context"]) == ("tiny-llama", 2, 256)
        assert info["lora_targets"]["k_proj"] == {"in_features": 64, "out_features": 32}

        body = {"request_id": "r1", "prompt": "Hello", "sampling": {"max_tokens": 4}}
        r = client.post("/internal/generate", json=body)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        events = lines(r)
        assert events[-1]["finish_reason"] in ("length", "stop")
        assert events[-1]["usage"]["completion_tokens"] == sum(len(e["token_ids"]) for e in events)

        r = client.post("/internal/generate", json={**body, "sampling": {"max_tokens": 1000}})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"
        r = client.post("/internal/generate", json={"request_id": "x", "sampling": {"top_p": 0}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "sampling.top_p"

        # Adapters: on demand from the URI, then listed, then unloaded.
        r = client.post("/internal/generate", json={**body, "adapter_id": "adp-1"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "adapter_not_found"
        r = client.post(
            "/internal/generate", json={**body, "adapter_id": "adp-1", "adapter_uri": uri}
        )
        assert r.status_code == 200
        assert [a["adapter_id"] for a in client.get("/internal/adapters").json()] == ["adp-1"]
        assert client.delete("/internal/adapters/adp-1").status_code == 204
        assert client.get("/internal/adapters").json() == []
        r = client.post("/internal/adapters", json={"adapter_id": "adp-2", "uri": uri})
        assert r.status_code == 200 and r.json()["rank"] == 4
        missing = store.uri("tenants/t/adapters/gone")
        r = client.post("/internal/adapters", json={"adapter_id": "adp-3", "uri": missing})
        assert r.status_code == 404
        r = client.post("/internal/adapters", json={"adapter_id": "../etc", "uri": uri})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_adapter_id"

        metrics = client.get("/metrics").text
        loaded = re.findall(
            r'^lmaas_runtime_loaded_adapters\{location="\w+"\} (\S+)$', metrics, re.M
        )
        assert sum(float(n) for n in loaded) == 1.0, metrics
        assert 'lmaas_runtime_requests_total{outcome="rejected"}' in metrics


def test_requests_wait_for_the_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    client = TestClient(
        create_app(settings_for(tmp_path, tiny_model_dir))
    )  # no lifespan: never loads
    r = client.post("/internal/generate", json={"request_id": "r", "prompt": "hi"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
    assert r.headers["retry-after"] == "2"
    assert client.get("/readyz").status_code == 503


def test_a_model_that_cannot_load_says_why(tmp_path: Path, tiny_model_dir: Path) -> None:
    with TestClient(
        create_app(settings_for(tmp_path, tiny_model_dir, engine="warp-drive"))
    ) as client:
        state = wait_ready(client)
        assert state["phase"] == "failed" and "LMAAS_ENGINE" in state["error"]
        assert client.get("/healthz").status_code == 503
    with TestClient(create_app(settings_for(tmp_path, tmp_path / "nothing-here"))) as client:
        state = wait_ready(client)
        assert state["phase"] == "failed" and "does not exist" in state["error"]


def test_engine_factory_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="available: lmaas, reference"):
        create_engine(Settings(home=tmp_path, engine="nope"), tmp_path)


def test_speculation_follows_the_settings_and_shows_in_metrics(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = settings_for(
        tmp_path, tiny_model_dir, speculation="fixed:3", speculation_proposer="prompt_lookup"
    )
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"] is True
        sampling = {"max_tokens": 24, "temperature": 0, "ignore_eos": True}
        body = {
            "request_id": "r1",
            "prompt": "the cat the cat the cat the cat",
            "sampling": sampling,
        }
        spec = lines(client.post("/internal/generate", json=body))
        off = {**body, "request_id": "r2", "sampling": {**sampling, "speculation": "off"}}
        plain = lines(client.post("/internal/generate", json=off))
        assert [t for e in spec for t in e["token_ids"]] == [
            t for e in plain for t in e["token_ids"]
        ]
        bad = {**body, "request_id": "r3", "sampling": {**sampling, "speculation": "fixed:x"}}
        r = client.post("/internal/generate", json=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "sampling.speculation"

        metrics = client.get("/metrics").text
        labels = '{model="tiny-llama",proposer="ngram"}'
        proposed = re.search(
            rf"^lmaas_spec_proposed_tokens_total{re.escape(labels)} (\S+)$", metrics, re.M
        )
        assert proposed and float(proposed.group(1)) > 0, metrics
        assert 'lmaas_spec_chosen_k_bucket{le="3.0",model="tiny-llama",proposer="ngram"}' in metrics
        assert "lmaas_spec_position_acceptance{" in metrics
        assert (
            'lmaas_spec_tenant_acceptance{model="tiny-llama",proposer="ngram",tenant=""}' in metrics
        )
