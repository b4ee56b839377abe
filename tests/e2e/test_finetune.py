"""End to end, issue 6: `lmaas up` with a tiny model; the official `openai` client uploads a
chat file, fine-tunes (LoRA, then QFT), follows the events until the job succeeds, and
chats with each result — the worker trains for real, the gateway serves the results."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import Platform
from tests.finetune.helpers import arithmetic_chats

QUESTION = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "3 + 4?"},
]
TERMINAL = ("succeeded", "failed", "cancelled")


def _wait_for(client: OpenAI, job_id: str, timeout_s: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {timeout_s}s"
        time.sleep(1)
    return job


@pytest.mark.slow
def test_fine_tune_with_the_openai_client_and_chat_with_the_results(
    tiny_platform: Platform, tmp_path: Path
) -> None:
    p = tiny_platform
    p.lmaas("tenant", "create", "acme")
    key = p.lmaas("key", "create", "acme").strip().splitlines()[-1]
    client = OpenAI(base_url=f"{p.url}/v1", api_key=key, max_retries=0, timeout=240)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_chats(16)))

    with data.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="fine-tune")
    assert uploaded.status == "processed" and uploaded.bytes == data.stat().st_size
    base = client.chat.completions.create(
        model="tiny-llama", messages=QUESTION, max_tokens=8, temperature=0
    )

    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=uploaded.id,
        suffix="adder",
        hyperparameters={
            "n_epochs": 4,
            "batch_size": 4,
            "lora_rank": 4,
            "learning_rate_multiplier": 25,
            "checkpoint_every": 8,
        },
    )
    assert job.status == "queued"
    job = _wait_for(client, job.id, timeout_s=300)
    assert job.status == "succeeded", (job.error, p.logs()[-3000:])
    assert job.fine_tuned_model == f"ft:tiny-llama:acme:adder:{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    progress = [e.data for e in events if e.type == "metrics"]
    assert progress and progress[0]["step"] == progress[0]["total_steps"] == 16
    assert progress[0]["train_loss"] < progress[-1]["train_loss"], "the loss went down"
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data, "checkpoints are listed"

    models = {m.id: m for m in client.models.list()}
    assert models[job.fine_tuned_model].model_extra["parent"] == "tiny-llama"
    tuned = client.chat.completions.create(
        model=job.fine_tuned_model, messages=QUESTION, max_tokens=8, temperature=0
    )
    assert tuned.model == job.fine_tuned_model and tuned.usage.completion_tokens > 0
    assert tuned.choices[0].message.content != base.choices[0].message.content

    # The same from a shell: `lmaas jobs create --follow` shows the progress to the end.
    out = p.lmaas(
        "jobs",
        "create",
        "--file",
        str(data),
        "--model",
        "tiny-llama",
        "--suffix",
        "cli",
        "--api-key",
        key,
        "--url",
        p.url,
        "--follow",
    )
    assert "16 examples" in out and "succeeded" in out
    assert "chat with model ft:tiny-llama:acme:cli:ftjob-" in out
    assert "ft:tiny-llama:acme:cli:" in p.lmaas("jobs", "list", "--api-key", key, "--url", p.url)

    # QFT: a full model of the tenant's own, served by its own runtime, to it alone.
    full = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=uploaded.id,
        suffix="full",
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body={"method": "qft"},
    )
    full = _wait_for(client, full.id, timeout_s=300)
    assert full.status == "succeeded", (full.error, p.logs()[-3000:])
    assert full.model_extra["training_method"] == "qft"
    answer = client.chat.completions.create(
        model=full.fine_tuned_model, messages=QUESTION, max_tokens=8, temperature=0
    )
    assert answer.model == full.fine_tuned_model and answer.usage.completion_tokens > 0

    p.lmaas("tenant", "create", "globex")
    other_key = p.lmaas("key", "create", "globex").strip().splitlines()[-1]
    other = {"Authorization": f"Bearer {other_key}"}
    listed = httpx.get(f"{p.url}/v1/models", headers=other).json()["data"]
    assert [m["id"] for m in listed] == ["tiny-llama"]
    body = {"model": full.fine_tuned_model, "messages": QUESTION, "max_tokens": 2}
    r = httpx.post(f"{p.url}/v1/chat/completions", headers=other, json=body, timeout=60)
    assert r.status_code == 404
