"""Chat and text completions: outputs, streaming, exact usage, and refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.gateway.conftest import MODEL, Api

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def _chat(api: Api, headers: dict, **body) -> dict:  # type: ignore[no-untyped-def]
    r = api.client.post(
        "/v1/chat/completions", headers=headers, json={"model": MODEL, "messages": MESSAGES, **body}
    )
    assert r.status_code == 200, r.text
    return r.json()


def _events(api: Api, path: str, headers: dict, body: dict) -> list:  # type: ignore[no-untyped-def]
    with api.client.stream("POST", path, headers=headers, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_chat_usage_is_exact(api: Api, tiny_model_dir: Path) -> None:
    headers = api.tenant("acme")
    out = _chat(api, headers, max_tokens=6, temperature=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    num_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    usage = out["usage"]
    assert usage["prompt_tokens"] == num_prompt
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 6
    else:
        assert choice["finish_reason"] == "stop" and usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert out["object"] == "chat.completion" and out["model"] == MODEL

    rows = api.client.get("/v1/usage", headers=headers).json()["data"]
    assert [
        (r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows
    ] == [(MODEL, 1, usage["prompt_tokens"], usage["completion_tokens"])]


def test_greedy_and_seeded_outputs_repeat(api: Api) -> None:
    headers = api.tenant("acme")
    first = _chat(api, headers, max_tokens=8, temperature=0)["choices"][0]["message"]["content"]
    assert (
        _chat(api, headers, max_tokens=8, temperature=0)["choices"][0]["message"]["content"]
        == first
    )
    a = _chat(api, headers, max_tokens=8, temperature=1.0, seed=7)["choices"][0]["message"]
    b = _chat(api, headers, max_tokens=8, temperature=1.0, seed=7)["choices"][0]["message"]
    assert a == b
    # A request's own speculation policy (`extra_body` of the openai client) changes how it
    # is computed, never what greedy decoding answers.
    for policy in ("off", "fixed:3", "smartspec"):
        out = _chat(api, headers, max_tokens=8, temperature=0, speculation=policy)
        assert out["choices"][0]["message"]["content"] == first, policy


def test_stop_strings_end_the_output(api: Api) -> None:
    headers = api.tenant("acme")
    for seed in range(10):
        sampled = {"max_tokens": 24, "temperature": 1.0, "seed": seed}
        full = _chat(api, headers, **sampled)["choices"][0]["message"]["content"]
        stop = next((ch for ch in full[1:] if ch.isascii() and ch.isalnum()), None)
        if stop is not None:
            break
    else:
        pytest.fail("the random model never produced an ASCII letter or digit")
    out = _chat(api, headers, **sampled, stop=[stop])
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == full[: full.index(stop)]


def test_chat_streams_with_and_without_usage(api: Api) -> None:
    headers = api.tenant("acme")
    whole = _chat(api, headers, max_tokens=6, temperature=0)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 6, "temperature": 0, "stream": True}
    chunks = _events(api, "/v1/chat/completions", headers, body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert len({c["id"] for c in chunks}) == 1

    chunks = _events(
        api, "/v1/chat/completions", headers, {**body, "stream_options": {"include_usage": True}}
    )
    *content, last = chunks
    assert all(c["usage"] is None for c in content)
    assert last["choices"] == [] and last["usage"] == whole["usage"]

    rows = api.client.get("/v1/usage", headers=headers).json()
    assert rows["data"][0]["requests"] == 3
    assert rows["total_tokens"] == 3 * whole["usage"]["total_tokens"]


def test_text_completions(api: Api) -> None:
    headers = api.tenant("acme")
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
    r = api.client.post("/v1/completions", headers=headers, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion"
    assert out["usage"]["prompt_tokens"] > 0
    chunks = _events(
        api,
        "/v1/completions",
        headers,
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert (
        "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        == out["choices"][0]["text"]
    )
    assert chunks[-1]["usage"] == out["usage"]

    ids = api.client.post(
        "/v1/completions", headers=headers, json={**body, "prompt": [5, 6, 7]}
    ).json()
    assert ids["usage"]["prompt_tokens"] == 3


def _error(r, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_bad_requests_get_clear_errors(api: Api) -> None:
    headers = api.tenant("acme")
    c = api.client
    r = c.post(
        "/v1/chat/completions",
        headers={**headers, "Content-Type": "application/json"},
        content=b'{"model": "tiny-llama", "messages": [',
    )
    assert _error(r, 400)["code"] == "invalid_json"

    err = _error(c.post("/v1/chat/completions", headers=headers, json={"model": MODEL}), 400)
    assert err["param"] == "messages"

    err = _error(
        c.post(
            "/v1/chat/completions", headers=headers, json={"model": "gpt-9", "messages": MESSAGES}
        ),
        404,
    )
    assert err["code"] == "model_not_found" and "gpt-9" in err["message"]

    err = _error(
        c.post(
            "/v1/chat/completions",
            headers=headers,
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 100_000},
        ),
        400,
    )
    assert err["code"] == "context_length_exceeded" and "256" in err["message"]

    err = _error(
        c.post("/v1/completions", headers=headers, json={"model": MODEL, "prompt": "x" * 2000}),
        400,
    )
    assert err["code"] == "context_length_exceeded"

    for extra, param in [
        ({"n": 2}, "n"),
        ({"temperature": 5}, "temperature"),
        ({"logprobs": True}, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"speculation": "fixed:99"}, "speculation"),
        ({"speculation": "turbo"}, "speculation"),
    ]:
        body = {"model": MODEL, "messages": MESSAGES, **extra}
        err = _error(c.post("/v1/chat/completions", headers=headers, json=body), 400)
        assert err["param"] == param, (extra, err)

    err = _error(
        c.post("/v1/completions", headers=headers, json={"model": MODEL, "prompt": ["one", "two"]}),
        400,
    )
    assert err["param"] == "prompt"
    body = {"model": MODEL, "prompt": "x", "speculation": "turbo"}
    err = _error(c.post("/v1/completions", headers=headers, json=body), 400)
    assert err["param"] == "speculation" and "'fixed:3'" in err["message"], err
    err = _error(c.post("/v1/nowhere", headers=headers, json={}), 404)
    assert "no such endpoint" in err["message"]
    assert c.get("/v1/usage", headers=headers).json()["data"] == [], "refusals use no tokens"


def test_a_client_that_leaves_frees_the_runtime(
    tmp_path: Path, database_url: str, runtime_url: str
) -> None:
    """Real HTTP: the client drops a long stream; the gateway releases everything and meters
    what was generated."""
    import time

    import httpx

    from lmaas.gateway import create_app
    from tests.conftest import free_port
    from tests.gateway.conftest import gateway_settings
    from tests.helpers.servers import serve_in_thread

    settings = gateway_settings(tmp_path, database_url, runtime_url)
    with serve_in_thread(create_app(settings), free_port()) as url:
        admin = {"Authorization": "Bearer lmaas-admin-test-token"}
        httpx.post(f"{url}/admin/tenants", headers=admin, json={"name": "acme"})
        key = httpx.post(f"{url}/admin/tenants/acme/keys", headers=admin).json()["key"]
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers=headers, json=body) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        deadline = time.monotonic() + 30
        while True:
            gateway = httpx.get(f"{url}/metrics").text
            runtime = httpx.get(f"{runtime_url}/metrics").text
            idle = "lmaas_gateway_generations_in_flight 0.0" in gateway and (
                "lmaas_runtime_running_requests 0.0" in runtime
            )
            usage = httpx.get(f"{url}/v1/usage", headers=headers).json()["data"]
            if idle and usage:
                break
            assert time.monotonic() < deadline, "the dropped stream still holds resources"
            time.sleep(0.2)
        assert 0 < usage[0]["completion_tokens"] < 200, "metered what was generated, no more"
        assert 'lmaas_runtime_requests_total{outcome="cancelled"}' in runtime
