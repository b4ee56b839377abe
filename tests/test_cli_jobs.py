"""`lmaas jobs …` against a real gateway over HTTP, as a tenant with an API key.

No worker runs: a thread plays the worker's part of the contract on the database (status,
step/total, loss events, the result's name) while `follow` polls, so what is tested is the
command's side — the upload, the job it creates, the progress it shows and how it ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from lmaas.cli import app
from lmaas.store import Database
from lmaas.store.models import FineTuneJob, JobEvent
from tests.conftest import free_port
from tests.gateway.conftest import ADMIN_TOKEN, MODEL, gateway_settings
from tests.helpers.broker import take_queued_tasks
from tests.helpers.servers import serve_in_thread

DATA = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
)


@pytest.fixture
def gateway(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:  # type: ignore[type-arg]
    from lmaas.gateway import create_app

    # No runtime: the jobs commands never generate.
    settings = gateway_settings(tmp_path, database_url, "http://127.0.0.1:9")
    with serve_in_thread(create_app(settings), free_port()) as url:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        httpx.post(f"{url}/admin/tenants", json={"name": "acme"}, headers=admin).raise_for_status()
        key = httpx.post(f"{url}/admin/tenants/acme/keys", headers=admin).json()["key"]
        monkeypatch.setenv("LMAAS_GATEWAY_URL", url)
        monkeypatch.setenv("LMAAS_API_KEY", key)
        monkeypatch.setenv("COLUMNS", "200")
        yield {"url": url, "settings": settings}


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, ["jobs", *args])
    assert result.exit_code == code, result.output
    return result.output


def _play_worker(db_url: str, job_id: str, outcome: str) -> None:
    db = Database(db_url, run_migrations=False)
    try:
        for step in range(1, 4):
            time.sleep(0.3)
            with db.session() as session:
                job = session.get(FineTuneJob, job_id)
                assert job is not None
                job.status, job.step, job.total_steps = "running", step, 3
                session.add(
                    JobEvent(
                        job_id=job_id,
                        message=f"Step {step}/3: training loss={2.0 / step:.3f}",
                        data={"step": step, "train_loss": 2.0 / step},
                    )
                )
        with db.session() as session:
            job = session.get(FineTuneJob, job_id)
            assert job is not None
            job.status = outcome
            if outcome == "succeeded":
                job.fine_tuned_model, job.trained_tokens = f"ft:{MODEL}:acme:cli:abc", 42
            else:
                job.error = {"code": "training_failed", "message": "out of memory"}
            session.add(JobEvent(job_id=job_id, message=f"The job {outcome}."))
    finally:
        db.dispose()


def test_create_list_follow_cancel(gateway: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    data = tmp_path / "data.jsonl"
    data.write_bytes(DATA * 3)
    out = run("create", "--file", str(data), "--model", MODEL, "--method", "qft", "--suffix", "cli")
    assert "3 examples" in out and "created qft job" in out
    job_id = next(w for w in out.split() if w.startswith("ftjob-"))
    assert [t[1] for t in take_queued_tasks(gateway["settings"])] == [[job_id]]

    listing = run("list")
    assert job_id in listing and "qft" in listing and "queued" in listing

    worker = threading.Thread(
        target=_play_worker,
        args=(gateway["settings"].resolved_database_url, job_id, "succeeded"),
    )
    worker.start()
    out = run("follow", job_id, "--interval", "0.1")
    worker.join()
    assert "3/3" in out and "loss 0.6667" in out
    assert f"chat with model ft:{MODEL}:acme:cli:abc" in out and "The job succeeded." in out

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(DATA + b'{"messages": [{"role": "robot", "content": "x"}]}\n')
    out = run("create", "--file", str(bad), code=1)
    assert "line 2" in out and "robot" in out

    out = run("create", "--file", str(data), "--model", MODEL)
    second = next(w for w in out.split() if w.startswith("ftjob-"))
    assert "cancelled" in run("cancel", second)
    assert "was cancelled" in run("follow", second, code=1)
    assert "already succeeded" in run("cancel", job_id, code=1)


def test_follow_a_failing_job_and_errors(gateway: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    data = tmp_path / "data.jsonl"
    data.write_bytes(DATA)
    db_url = gateway["settings"].resolved_database_url

    def fail_the_next_job() -> None:
        db = Database(db_url, run_migrations=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with db.session() as session:
                job = session.query(FineTuneJob).one_or_none()
            if job is not None:
                break
            time.sleep(0.05)
        db.dispose()
        assert job is not None
        _play_worker(db_url, job.id, "failed")

    worker = threading.Thread(target=fail_the_next_job)
    worker.start()
    out = run("create", "--file", str(data), "--model", MODEL, "--follow", code=1)
    worker.join()
    assert "created lora job" in out and "failed: out of memory" in out
    assert "No fine-tuning job" in run("follow", "ftjob-nope", code=1)
    assert "401" in CliRunner().invoke(app, ["jobs", "list", "--api-key", "sk-lmaas-x"]).output
    out = CliRunner().invoke(app, ["jobs", "list", "--url", "http://127.0.0.1:9"]).output
    assert "cannot reach the gateway" in out
