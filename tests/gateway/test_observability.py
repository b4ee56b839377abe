"""Metrics on /metrics (gateway and runtime) and logs that never show a key."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import ADMIN_TOKEN, MODEL, Api
from tests.helpers.adapters import make_peft_adapter, pack_tar

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in metrics")


def test_gateway_and_runtime_metrics(api: Api, runtime_url: str) -> None:
    headers = api.tenant("acme")
    out = api.client.post("/v1/chat/completions", headers=headers, json=BODY).json()
    api.client.post("/v1/chat/completions", headers=headers, json={**BODY, "model": "nope"})
    text = api.client.get("/metrics").text
    route = "/v1/chat/completions"
    assert _metric(text, "lmaas_gateway_requests_total", route=route, status="200") == 1
    assert _metric(text, "lmaas_gateway_requests_total", route=route, status="404") == 1
    assert _metric(text, "lmaas_gateway_errors_total", route=route, status="404") == 1
    assert _metric(text, "lmaas_gateway_request_seconds_count", route=route) == 2
    prompt = _metric(text, "lmaas_gateway_tokens_total", model=MODEL, kind="prompt")
    completion = _metric(text, "lmaas_gateway_tokens_total", model=MODEL, kind="completion")
    assert (prompt, completion) == (
        out["usage"]["prompt_tokens"],
        out["usage"]["completion_tokens"],
    )
    assert _metric(text, "lmaas_gateway_time_to_first_token_seconds_count", model=MODEL) >= 0
    assert _metric(text, "lmaas_gateway_generations_in_flight") == 0

    runtime = httpx.get(f"{runtime_url}/metrics").text
    assert _metric(runtime, "lmaas_runtime_ready") == 1
    assert _metric(runtime, "lmaas_runtime_queue_depth") == 0
    assert _metric(runtime, "lmaas_runtime_running_requests") == 0
    assert _metric(runtime, "lmaas_runtime_loaded_adapters", location="device") >= 0
    assert _metric(runtime, "lmaas_runtime_requests_total", outcome="ok") >= 1
    assert _metric(runtime, "lmaas_runtime_tokens_total", kind="prompt") >= prompt
    assert _metric(runtime, "lmaas_runtime_request_seconds_count") >= 1


def test_keys_never_reach_the_logs(
    api: Api,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    c = api.client
    headers = api.tenant("acme")
    secret = headers["Authorization"].removeprefix("Bearer ")
    adapter = make_peft_adapter(tiny_model_dir, tmp_path / "a")
    files = {"file": ("a.tgz", pack_tar(adapter, tmp_path / "a.tgz").read_bytes())}
    assert (
        c.post("/v1/adapters", headers=headers, files=files, data={"name": "a"}).status_code == 201
    )
    assert c.post("/v1/chat/completions", headers=headers, json=BODY).status_code == 200
    with c.stream(
        "POST", "/v1/chat/completions", headers=headers, json={**BODY, "stream": True}
    ) as r:
        r.read()
    bad = "sk-lmaas-this-key-does-not-exist-0123456789"
    assert c.get("/v1/models", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    key_id = c.get("/admin/tenants/acme/keys", headers=api.admin).json()["data"][0]["id"]
    c.delete(f"/admin/tenants/acme/keys/{key_id}", headers=api.admin)
    assert c.get("/v1/models", headers=headers).status_code == 401
    c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, content=b"{")

    logged = caplog.text + "".join(capsys.readouterr())
    assert "POST /v1/chat/completions 200" in logged, "the access log is on"
    assert "GET /v1/models 401" in logged
    for needle in (secret, secret[len("sk-lmaas-") :][:12], bad, ADMIN_TOKEN):
        assert needle not in logged
    assert "authorization" not in logged.lower()
