"""The files and fine-tuning API as the official `openai` client uses it, on SQLite and
PostgreSQL, against the in-process gateway.

What these tests do NOT cover: no worker runs here, so no job trains. Job creation is checked
up to the Celery message — read back from the deployment's real broker (kombu's SQLite
transport under LMAAS_HOME) by a plain consumer — and the worker's side of the contract
(status, events, checkpoints, result rows) is written into the database by the tests exactly
as the worker writes it. Training end to end is in tests/e2e/test_finetune.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from lmaas.finetune.naming import fine_tuned_model_name
from lmaas.store import Database
from lmaas.store.models import Adapter, FineTuneJob, JobCheckpoint, JobEvent, ServedModel, Tenant
from lmaas.tasks import FINETUNE_RUN_JOB
from tests.gateway.conftest import MODEL, Api, gateway_settings
from tests.helpers.broker import take_queued_tasks


def chat_line(question: str = "hi", answer: str = "hello") -> bytes:
    record = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }
    return json.dumps(record).encode() + b"\n"


GOOD = chat_line("hi", "hello") + chat_line("2+2?", "4") + chat_line("sky?", "blue")


def openai_client(api: Api, headers: dict[str, str]) -> OpenAI:
    key = headers["Authorization"].removeprefix("Bearer ")
    return OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=api.client, max_retries=0
    )


def upload(api: Api, headers: dict[str, str], data: bytes, purpose: str = "fine-tune"):  # type: ignore[no-untyped-def]
    return api.client.post(
        "/v1/files",
        headers=headers,
        files={"file": ("train.jsonl", data, "application/jsonl")},
        data={"purpose": purpose},
    )


def create_job(api: Api, headers: dict[str, str], **body):  # type: ignore[no-untyped-def]
    return api.client.post("/v1/fine_tuning/jobs", headers=headers, json={"model": MODEL, **body})


@pytest.fixture
def db(api: Api) -> Iterator[Database]:
    database = Database(api.settings.resolved_database_url, run_migrations=False)
    yield database
    database.dispose()


def stored_files(api: Api) -> list[Path]:
    root = Path(api.settings.resolved_artifact_url)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_openai_client_files_and_jobs(api: Api, db: Database) -> None:
    client = openai_client(api, api.tenant("acme"))

    uploaded = client.files.create(file=("train.jsonl", GOOD), purpose="fine-tune")
    assert uploaded.object == "file" and uploaded.purpose == "fine-tune"
    assert uploaded.bytes == len(GOOD) and uploaded.filename == "train.jsonl"
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert [f.id for f in client.files.list()] == [uploaded.id]
    assert client.files.content(uploaded.id).content == GOOD
    assert take_queued_tasks(api.settings) == [], "an upload queues nothing"

    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=uploaded.id,
        suffix="terse",
        hyperparameters={"n_epochs": "2", "qft_export": "lora"},
        extra_body={"method": "qft"},
    )
    assert job.object == "fine_tuning.job" and job.status == "queued"
    assert (job.model, job.training_file, job.fine_tuned_model) == (MODEL, uploaded.id, None)
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == "auto"
    assert job.user_provided_suffix == "terse"
    assert job.model_extra["training_method"] == "qft"
    assert take_queued_tasks(api.settings) == [(FINETUNE_RUN_JOB, [job.id])]
    with db.session() as session:
        row = session.get(FineTuneJob, job.id)
        assert row is not None
        assert (row.method, row.status, row.suffix) == ("qft", "queued", "terse")
        assert row.hyperparameters == {"n_epochs": 2, "qft_export": "lora"}
        tenant = session.get(Tenant, row.tenant_id)
        assert tenant is not None
        name = fine_tuned_model_name(row.model, tenant.name, row.suffix, row.id)
        assert name == f"ft:{MODEL}:acme:terse:{job.id}"

    second = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=uploaded.id,
        validation_file=uploaded.id,
        extra_body={
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2}}}
        },
    )
    assert second.model_extra["training_method"] == "lora"
    assert second.hyperparameters.batch_size == 2 and second.validation_file == uploaded.id
    assert take_queued_tasks(api.settings) == [(FINETUNE_RUN_JOB, [second.id])]

    metrics = api.client.get("/metrics").text
    assert 'lmaas_gateway_finetune_jobs_total{method="qft"} 1.0' in metrics
    assert 'lmaas_gateway_finetune_jobs_total{method="lora"} 1.0' in metrics

    assert [j.id for j in client.fine_tuning.jobs.list()] == [second.id, job.id]
    page = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [second.id] and page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1, after=second.id)] == [job.id]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"

    with pytest.raises(openai.ConflictError, match="used by fine-tuning job"):
        client.files.delete(uploaded.id)

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled", "cancel is idempotent"
    events = client.fine_tuning.jobs.list_events(job.id)
    assert [e.message for e in events.data] == [
        "Job cancelled before it started.",
        f"Created fine-tuning job: {job.id}",
    ]
    with db.session() as session:
        row = session.get(FineTuneJob, job.id)
        assert row is not None and row.cancel_requested and row.status == "cancelled"

    client.fine_tuning.jobs.cancel(second.id)
    deleted = client.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    assert list(client.files.list()) == []
    assert stored_files(api) == []
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_cancel_of_a_running_job_asks_the_worker(api: Api, db: Database) -> None:
    headers = api.tenant("acme")
    file_id = upload(api, headers, GOOD).json()["id"]
    job_id = create_job(api, headers, training_file=file_id).json()["id"]
    with db.session() as session:
        session.get(FineTuneJob, job_id).status = "running"  # type: ignore[union-attr]
    r = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "running"
    with db.session() as session:
        row = session.get(FineTuneJob, job_id)
        assert row is not None and row.cancel_requested and row.status == "running"
        row.status = "succeeded"
    r = api.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=headers)
    assert r.status_code == 400 and "already succeeded" in r.json()["error"]["message"]


def test_worker_progress_reads_as_openai_events_and_checkpoints(api: Api, db: Database) -> None:
    headers = api.tenant("acme")
    client = openai_client(api, headers)
    file_id = upload(api, headers, GOOD).json()["id"]
    job_id = create_job(api, headers, training_file=file_id, suffix="s").json()["id"]
    with db.session() as session:  # what the worker writes
        job = session.get(FineTuneJob, job_id)
        assert job is not None
        job.status, job.step, job.total_steps, job.trained_tokens = "running", 2, 4, 120
        session.add(
            JobEvent(
                job_id=job_id,
                message="Fine-tuning job started",
                data={"worker": "celery@node-7:4242", "attempt": 1},
            )
        )
        for step, loss in ((1, 2.5), (2, 2.1)):
            session.add(
                JobEvent(
                    job_id=job_id, message=f"Step {step}/4", data={"step": step, "train_loss": loss}
                )
            )
            session.add(
                JobCheckpoint(
                    job_id=job_id, step=step, uri=f"file:///ck/{step}", metrics={"train_loss": loss}
                )
            )
    events = client.fine_tuning.jobs.list_events(job_id, limit=2)
    assert [e.data for e in events.data] == [
        {"step": 2, "train_loss": 2.1},
        {"step": 1, "train_loss": 2.5},
    ]
    assert [e.type for e in events.data] == ["metrics", "metrics"] and events.has_more
    older = client.fine_tuning.jobs.list_events(job_id, after=events.data[-1].id)
    assert [e.message for e in older.data] == [
        "Fine-tuning job started",
        f"Created fine-tuning job: {job_id}",
    ]
    assert older.data[0].data == {"attempt": 1}, "the worker's host is not the tenant's business"
    assert older.data[0].type == "message"

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id)
    assert [c.step_number for c in checkpoints.data] == [2, 1]
    assert checkpoints.data[0].metrics.train_loss == 2.1
    assert checkpoints.data[0].fine_tuned_model_checkpoint == (
        f"ft:{MODEL}:acme:s:{job_id}:ckpt-step-2"
    )
    assert checkpoints.data[0].fine_tuning_job_id == job_id
    page = client.fine_tuning.jobs.checkpoints.list(job_id, after=checkpoints.data[0].id)
    assert [c.step_number for c in page.data] == [1]
    shown = client.fine_tuning.jobs.retrieve(job_id)
    assert (shown.status, shown.trained_tokens) == ("running", 120)
    assert (shown.model_extra["step"], shown.model_extra["total_steps"]) == (2, 4)

    with db.session() as session:
        job = session.get(FineTuneJob, job_id)
        assert job is not None
        job.status, job.error = "failed", {"code": "invalid_data", "message": "line 3: too long"}
    failed = client.fine_tuning.jobs.retrieve(job_id)
    assert failed.status == "failed" and failed.error.message == "line 3: too long"


BAD_FILES = {
    "malformed JSON": (chat_line() + b'{"messages": [}\n', 400, "line 2: is not valid JSON"),
    "wrong role": (
        chat_line() + chat_line() + b'{"messages": [{"role": "bot", "content": "x"}]}\n',
        400,
        "line 3: messages[0] has role 'bot'; use one of system, user, assistant",
    ),
    "empty": (b"", 400, "the file has no examples (it is empty)"),
    "blank lines only": (b"\n\n", 400, "the file has no examples"),
    "no assistant": (
        b'{"messages": [{"role": "user", "content": "x"}]}\n',
        400,
        "line 1: has no assistant message to learn from",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_refused_and_nothing_is_stored(api: Api, case: str) -> None:
    data, status, message = BAD_FILES[case]
    headers = api.tenant("acme")
    r = upload(api, headers, data)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == "file"
    assert error["type"] == "invalid_request_error"
    assert api.client.get("/v1/files", headers=headers).json()["data"] == []
    assert stored_files(api) == []


def test_openai_client_sees_the_line_of_a_bad_file(api: Api) -> None:
    client = openai_client(api, api.tenant("acme"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("t.jsonl", chat_line() + b"nope\n"), purpose="fine-tune")
    assert caught.value.status_code == 400 and "line 2" in caught.value.message


def test_wrong_purpose_and_oversize(tmp_path: Path, database_url: str, runtime_url: str) -> None:
    from lmaas.gateway import create_app

    settings = gateway_settings(tmp_path, database_url, runtime_url, max_file_bytes=300)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        headers = api.tenant("acme")
        r = upload(api, headers, chat_line(), purpose="assistants")
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
        assert "purpose=fine-tune" in r.json()["error"]["message"]
        big = chat_line("x" * 400, "y")
        r = upload(api, headers, big)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "file_too_large"
        assert "LMAAS_MAX_FILE_BYTES" in r.json()["error"]["message"]
        huge = chat_line("x" * 200_000, "y")  # over the streaming limit: refused while read
        r = upload(api, headers, huge)
        assert r.status_code == 413 and "300 bytes" in r.json()["error"]["message"]
        assert upload(api, headers, chat_line()).status_code == 200
        assert len(client.get("/v1/files", headers=headers).json()["data"]) == 1


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"model": "no-such-model"}, 404, "model", "does not exist"),
        ({"training_file": "file-missing"}, 404, "training_file", "No such File object"),
        ({"validation_file": "file-missing"}, 404, "validation_file", "No such File object"),
        ({"method": "dpo"}, 400, "method", "'lora'"),
        ({"method": {"type": "reinforcement"}}, 400, "method", "not supported"),
        ({"method": {"type": ["lora"]}}, 400, "method", "must be a string"),
        ({"method": {"type": "qft", "qft": "fast"}}, 400, "method", "must be an object"),
        ({"hyperparameters": {"n_epochs": 0}}, 400, "hyperparameters", "n_epochs"),
        ({"hyperparameters": {"lora_rank": 9999}}, 400, "hyperparameters", "lora_rank"),
        ({"hyperparameters": {"epochs": 3}}, 400, "hyperparameters", "epochs"),
        ({"suffix": "no spaces please"}, 400, "suffix", "invalid"),
        (
            {
                "hyperparameters": {"n_epochs": 2},
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 3}},
                },
            },
            400,
            "hyperparameters",
            "set twice",
        ),
    ],
)
def test_invalid_jobs_are_refused_and_queue_nothing(
    api: Api, body: dict, status: int, param: str, message: str
) -> None:
    headers = api.tenant("acme")
    file_id = upload(api, headers, GOOD).json()["id"]
    r = create_job(api, headers, **{"training_file": file_id, **body})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param and message in r.json()["error"]["message"]
    assert api.client.get("/v1/fine_tuning/jobs", headers=headers).json()["data"] == []
    assert take_queued_tasks(api.settings) == []


def test_another_tenants_files_and_jobs_answer_404_like_missing_ones(api: Api) -> None:
    owner = api.tenant("acme")
    other = api.tenant("globex")
    file_id = upload(api, owner, GOOD).json()["id"]
    job_id = create_job(api, owner, training_file=file_id).json()["id"]
    missing_file, missing_job = "file-000000000000000000000000", "ftjob-000000000000000000000000"

    def same_as_missing(method: str, path: str, missing_path: str, **kw) -> None:  # type: ignore[no-untyped-def]
        theirs = api.client.request(method, path, headers=other, **kw)
        absent = api.client.request(method, missing_path, headers=other, **kw)
        assert theirs.status_code == absent.status_code, (path, theirs.text)
        assert theirs.status_code in (400, 404), (path, theirs.text)
        mask = theirs.text.replace(file_id, "ID").replace(job_id, "ID")
        assert mask == absent.text.replace(missing_file, "ID").replace(missing_job, "ID")

    for method, suffix in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
        same_as_missing(method, f"/v1/files/{file_id}{suffix}", f"/v1/files/{missing_file}{suffix}")
    for method, suffix in (
        ("GET", ""),
        ("POST", "/cancel"),
        ("GET", "/events"),
        ("GET", "/checkpoints"),
    ):
        same_as_missing(
            method,
            f"/v1/fine_tuning/jobs/{job_id}{suffix}",
            f"/v1/fine_tuning/jobs/{missing_job}{suffix}",
        )
    same_as_missing("GET", f"/v1/files?after={file_id}", f"/v1/files?after={missing_file}")
    same_as_missing(
        "GET", f"/v1/fine_tuning/jobs?after={job_id}", f"/v1/fine_tuning/jobs?after={missing_job}"
    )
    for field in ("training_file", "validation_file"):
        body = {"model": MODEL, "training_file": upload(api, other, GOOD).json()["id"]}
        theirs = api.client.post(
            "/v1/fine_tuning/jobs", headers=other, json={**body, field: file_id}
        )
        absent = api.client.post(
            "/v1/fine_tuning/jobs", headers=other, json={**body, field: missing_file}
        )
        assert theirs.status_code == absent.status_code == 404
        assert theirs.text.replace(file_id, "ID") == absent.text.replace(missing_file, "ID")
    assert api.client.get("/v1/files", headers=other).json()["data"] != []  # only its own
    assert file_id not in api.client.get("/v1/files", headers=other).text
    assert api.client.get("/v1/fine_tuning/jobs", headers=other).json()["data"] == []
    # Nothing of the owner's changed.
    assert api.client.get(f"/v1/files/{file_id}", headers=owner).status_code == 200
    assert (
        api.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=owner).json()["status"] == "queued"
    )


def test_concurrent_job_quota(api: Api, db: Database) -> None:
    headers = api.tenant("acme", max_concurrent_jobs=2)
    client = openai_client(api, headers)
    file_id = upload(api, headers, GOOD).json()["id"]
    first = client.fine_tuning.jobs.create(model=MODEL, training_file=file_id)
    second = client.fine_tuning.jobs.create(model=MODEL, training_file=file_id)
    take_queued_tasks(api.settings)
    with pytest.raises(openai.RateLimitError) as caught:
        client.fine_tuning.jobs.create(model=MODEL, training_file=file_id)
    assert caught.value.status_code == 429
    assert "2 fine-tuning job(s) queued or running" in caught.value.message
    assert "max_concurrent_jobs" in caught.value.message
    assert take_queued_tasks(api.settings) == [], "a refused job queues nothing"
    assert len(client.fine_tuning.jobs.list().data) == 2

    with db.session() as session:  # the worker finishes the first job
        session.get(FineTuneJob, first.id).status = "succeeded"  # type: ignore[union-attr]
    third = client.fine_tuning.jobs.create(model=MODEL, training_file=file_id)
    client.fine_tuning.jobs.cancel(second.id)
    fourth = client.fine_tuning.jobs.create(model=MODEL, training_file=file_id)
    assert {third.status, fourth.status} == {"queued"}
    other = openai_client(api, api.tenant("globex", max_concurrent_jobs=1))
    other_file = other.files.create(file=("t.jsonl", GOOD), purpose="fine-tune")
    assert (
        other.fine_tuning.jobs.create(model=MODEL, training_file=other_file.id).status == "queued"
    )


def test_results_show_in_models_only_to_their_owner(api: Api, db: Database) -> None:
    owner = api.tenant("acme")
    other = api.tenant("globex")
    lora_name = f"ft:{MODEL}:acme:cats:ftjob-1a2b3c4d5e6f7a8b9c0d1e2f"
    full_name = f"ft:{MODEL}:acme:full:ftjob-5e6f7a8b9c0d1e2f3a4b5c6d"
    with db.session() as session:  # what the worker registers on success
        tenant = session.query(Tenant).filter_by(name="acme").one()
        session.add(
            Adapter(
                tenant_id=tenant.id,
                name=lora_name,
                base_model=MODEL,
                rank=4,
                uri="file:///nowhere",
                source="finetune",
            )
        )
        session.add(ServedModel(id=full_name, tenant_id=tenant.id, parent=MODEL, uri="file:///x"))
    mine = {m["id"]: m for m in api.client.get("/v1/models", headers=owner).json()["data"]}
    assert mine[lora_name]["parent"] == MODEL and mine[full_name]["parent"] == MODEL
    assert mine[full_name]["owned_by"] == "acme" and mine[MODEL]["owned_by"] == "lmaas"
    assert api.client.get(f"/v1/models/{full_name}", headers=owner).status_code == 200
    theirs = [m["id"] for m in api.client.get("/v1/models", headers=other).json()["data"]]
    assert theirs == [MODEL]
    for name in (lora_name, full_name):
        assert api.client.get(f"/v1/models/{name}", headers=other).status_code == 404
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = api.client.post("/v1/chat/completions", headers=other, json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        job = create_job(api, other, model=name, training_file="file-x")
        assert job.status_code == 404 and job.json()["error"]["param"] == "model"
    client = openai_client(api, owner)
    own_file = client.files.create(file=("t.jsonl", GOOD), purpose="fine-tune")
    again = client.fine_tuning.jobs.create(model=full_name, training_file=own_file.id)
    assert again.model == full_name, "a tenant may fine-tune its own full fine-tune"
    r = create_job(api, owner, model=lora_name, training_file=own_file.id)
    assert r.status_code == 400 and "is a LoRA adapter" in r.json()["error"]["message"]


def test_unauthenticated_requests_are_refused(api: Api) -> None:
    for method, path in (("GET", "/v1/files"), ("POST", "/v1/fine_tuning/jobs")):
        assert api.client.request(method, path).status_code == 401


def test_the_quota_holds_under_concurrent_creations(
    tmp_path: Path, database_url: str, runtime_url: str
) -> None:
    """Simultaneous creations over real HTTP: exactly `max_concurrent_jobs` of them win."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from lmaas.gateway import create_app
    from tests.conftest import free_port
    from tests.helpers.servers import serve_in_thread

    settings = gateway_settings(tmp_path, database_url, runtime_url)
    with (
        serve_in_thread(create_app(settings), free_port()) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        api = Api(http, settings)  # type: ignore[arg-type]
        headers = api.tenant("acme", max_concurrent_jobs=2)
        file_id = upload(api, headers, GOOD).json()["id"]

        def create(_: int) -> int:
            body = {"model": MODEL, "training_file": file_id}
            with httpx.Client(base_url=url, timeout=60) as own:
                return own.post("/v1/fine_tuning/jobs", headers=headers, json=body).status_code

        with ThreadPoolExecutor(6) as pool:
            codes = sorted(pool.map(create, range(6)))
        assert codes == [200, 200, 429, 429, 429, 429]
        assert len(http.get("/v1/fine_tuning/jobs", headers=headers).json()["data"]) == 2


def test_deleting_fine_tuned_models(api: Api, db: Database, tmp_path: Path) -> None:
    """OpenAI's `client.models.delete`: the owner deletes its results (rows and files);
    another tenant gets the 404 of a missing model; a shared base model is not deletable."""
    from lmaas.store.artifacts import ArtifactStore

    owner, other = api.tenant("acme"), api.tenant("globex")
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    store = ArtifactStore(api.settings.resolved_artifact_url)
    lora_name = f"ft:{MODEL}:acme::ftjob-1a2b3c4d5e6f7a8b9c0d1e2f"
    full_name = f"ft:{MODEL}:acme::ftjob-5e6f7a8b9c0d1e2f3a4b5c6d"
    with db.session() as session:
        tenant = session.query(Tenant).filter_by(name="acme").one()
        adapter = Adapter(
            id="adp-1", tenant_id=tenant.id, name=lora_name, base_model=MODEL, rank=4, uri=""
        )
        adapter.uri = store.put_folder(folder, f"tenants/{tenant.id}/adapters/adp-1")
        session.add(adapter)
        uri = store.put_folder(folder, f"tenants/{tenant.id}/models/ftjob-5e6f")
        session.add(ServedModel(id=full_name, tenant_id=tenant.id, parent=MODEL, uri=uri))
    assert len(stored_files(api)) == 2

    for name in (lora_name, full_name):
        theirs = api.client.delete(f"/v1/models/{name}", headers=other)
        absent = api.client.delete(f"/v1/models/{name}x", headers=other)
        assert theirs.status_code == absent.status_code == 404
        assert theirs.text.replace(name, "N") == absent.text.replace(name + "x", "N")
    base = api.client.delete(f"/v1/models/{MODEL}", headers=owner)
    assert base.status_code == 403 and base.json()["error"]["code"] == "model_not_deletable"

    client = openai_client(api, owner)
    for name in (full_name, lora_name):
        deleted = client.models.delete(name)
        assert (deleted.id, deleted.deleted) == (name, True)
    assert [m.id for m in client.models.list()] == [MODEL]
    assert stored_files(api) == []
    with pytest.raises(openai.NotFoundError):
        client.models.delete(full_name)
