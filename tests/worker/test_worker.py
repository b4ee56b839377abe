"""The worker runs `lmaas.adapters.verify` for real: over the embedded SQLite broker and
over Redis (a queue of its own per test), in-thread and as the `lmaas worker` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from lmaas.config import Settings
from lmaas.store import Adapter, Database
from lmaas.store.artifacts import ArtifactStore
from lmaas.store.tenants import create_tenant
from lmaas.tasks import FINETUNE_RUN_JOB, VERIFY_ADAPTER, create_celery, send_task
from lmaas.worker import create_worker_app
from tests.helpers.adapters import write_adapter_files

PREFIX = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture(params=["sqlite-broker", pytest.param("redis-broker", marks=pytest.mark.redis)])
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, redis_prefix: str
) -> Settings:
    if request.param == "sqlite-broker":
        broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    else:
        broker = request.getfixturevalue("redis_url")
    return Settings(
        home=tmp_path / "home",
        database_url=database_url,
        broker_url=broker,
        task_queue=f"lmaas-{redis_prefix}",
        artifact_url=str(tmp_path / "artifacts"),
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    yield database
    database.dispose()


def store_adapter(db: Database, settings: Settings, tmp_path: Path, *, poison: bool = False) -> str:
    values = [0.01] * 256
    if poison:
        values[-1] = float("inf")
    folder = write_adapter_files(
        tmp_path / f"adapter-{poison}",
        {f"{PREFIX}.lora_A.weight": ([4, 64], None), f"{PREFIX}.lora_B.weight": ([64, 4], values)},
        rank=4,
    )
    with db.session() as session:
        tenant = create_tenant(session, f"t-{int(poison)}", settings)
        adapter = Adapter(
            tenant_id=tenant.id, name="a", base_model="m", rank=4, target_modules=["q_proj"], uri=""
        )
        session.add(adapter)
        session.flush()
        store = ArtifactStore(settings.resolved_artifact_url)
        adapter.uri = store.put_folder(folder, f"tenants/{tenant.id}/adapters/{adapter.id}")
        return adapter.id


def wait_for(db: Database, adapter_id: str, timeout_s: float = 30) -> Adapter:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.session() as session:
            adapter = session.get(Adapter, adapter_id)
            assert adapter is not None
            if adapter.verified_at is not None or adapter.status == "failed":
                return adapter
        time.sleep(0.1)
    raise TimeoutError(f"adapter {adapter_id} was not verified in {timeout_s}s")


def test_verify_task_runs_on_a_real_worker(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    good = store_adapter(db, settings, tmp_path)
    bad = store_adapter(db, settings, tmp_path, poison=True)
    sender = create_celery(settings)  # what the gateway holds: no task code imported
    worker_app = create_worker_app(settings)
    assert FINETUNE_RUN_JOB in worker_app.tasks
    with start_worker(worker_app, perform_ping_check=False, pool="solo", shutdown_timeout=30):
        send_task(sender, VERIFY_ADAPTER, good)
        send_task(sender, VERIFY_ADAPTER, bad)
        send_task(sender, VERIFY_ADAPTER, "adp-deleted-meanwhile")
        verified = wait_for(db, good)
        failed = wait_for(db, bad)
    assert verified.status == "ready" and verified.verified_at is not None
    assert failed.status == "failed" and failed.verified_at is None
    with pytest.raises(ValueError, match="unknown task"):
        send_task(sender, "lmaas.nope", "x")


@pytest.mark.redis
def test_the_lmaas_worker_process(
    tmp_path: Path, redis_url: str, redis_prefix: str, database_url: str
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        database_url=database_url,
        broker_url=redis_url,
        task_queue=f"lmaas-{redis_prefix}",
        artifact_url=str(tmp_path / "artifacts"),
    )
    database = Database(settings.resolved_database_url)
    adapter_id = store_adapter(database, settings, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_")}
    env.update(
        LMAAS_HOME=str(settings.home),
        LMAAS_DATABASE_URL=database_url,
        LMAAS_BROKER_URL=redis_url,
        LMAAS_TASK_QUEUE=settings.task_queue,
        LMAAS_ARTIFACT_URL=str(tmp_path / "artifacts"),
    )
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "lmaas", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        send_task(create_celery(settings), VERIFY_ADAPTER, adapter_id)
        assert wait_for(database, adapter_id, timeout_s=60).verified_at is not None
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        log.close()
        database.dispose()
    assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]
