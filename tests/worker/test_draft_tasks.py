"""The draft jobs on a real worker, with a tiny model: an OSD round on recorded traffic makes a
new draft version whose acceptance on that traffic is higher; the offline build saves v1."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch
from celery.contrib.testing.worker import start_worker

from lmaas.config import Settings
from lmaas.engine.speculation.osd_buffer import OSDRecorder, list_osd_files
from lmaas.finetune.distill import agreement, measure_acceptance, speculation_walk
from lmaas.finetune.draft_builder import (
    build_draft,
    frequent_tokens,
    latest_draft_version,
    load_draft,
    save_draft_version,
)
from lmaas.finetune.draft_corpus import teacher_signals
from lmaas.finetune.draft_locations import DraftLocations
from lmaas.tasks import BUILD_DRAFT, OSD_ROUND, create_celery, send_task
from lmaas.worker import create_worker_app
from tests.speculation.reference_loop import plain_decode, tiny_llama

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def target():
    return tiny_llama(3, vocab=96, layers=4, dtype=torch.float32)


@pytest.fixture(scope="module")
def target_dir(target, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-target")
    target.save_pretrained(folder)
    return folder


@pytest.fixture
def settings(tmp_path: Path, target_dir: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_url=str(tmp_path / "artifacts"),
        base_model=str(target_dir),
        model_name="tiny",
        osd_steps=60,
    )


@pytest.fixture(scope="module")
def traffic(target):
    """A tenant's traffic: 8 prompts served 3 times each, with the target's greedy answers
    (a random tiny model has nothing to generalise: real traffic repeats its patterns)."""
    rng = random.Random(0)
    distinct = []
    for _ in range(8):
        prompt = [rng.randint(0, 95) for _ in range(rng.randint(4, 10))]
        distinct.append((prompt, plain_decode(target, prompt, 24)))
    return [(prompt, prompt + answer) for prompt, answer in distinct * 3]


def record(served, target, traffic, root: str, tenant: str) -> None:
    """What a runtime serving `served` with k = 4 records and flushes (`OSDRecorder`)."""
    seqs = [seq for _, seq in traffic]
    positions = [range(len(p), len(s)) for p, s in traffic]
    signals = teacher_signals(target, seqs, positions, top_k=16)
    recorder = OSDRecorder(root, "tiny", flush_tokens=10**9)
    for n, ((prompt, seq), agree) in enumerate(
        zip(traffic, agreement(served, seqs, signals), strict=True)
    ):
        for offset, proposed, accepted in speculation_walk(agree.tolist(), 4):
            recorder.observe(n, tenant, len(prompt) + offset, proposed, accepted)
        recorder.finish(n, seq, len(prompt))
    recorder.flush()


def acceptance(draft, target, traffic) -> float:
    seqs = [seq for _, seq in traffic]
    positions = [range(len(p), len(s)) for p, s in traffic]
    return measure_acceptance(draft, seqs, teacher_signals(target, seqs, positions)).greedy


def test_an_osd_round_on_a_real_worker_makes_a_better_draft(
    settings: Settings, target, traffic
) -> None:
    where = DraftLocations.from_settings(settings)
    # The shared draft: two of four layers, a vocabulary that misses some of the traffic's.
    seqs = [seq for _, seq in traffic]
    shared = build_draft(target, [0, 3], frequent_tokens(seqs[:4], 96, 40))
    save_draft_version(shared, where.shared_drafts("tiny"))
    record(shared, target, traffic, where.osd, "acme")
    assert list_osd_files(where.osd, "acme", "tiny")

    sender = create_celery(settings)
    worker_app = create_worker_app(settings)
    options = {"lr": 2e-3, "bf16": False}
    acme = where.tenant_drafts("acme", "tiny")
    with start_worker(worker_app, perform_ping_check=False, pool="solo", shutdown_timeout=60):
        send_task(sender, OSD_ROUND, "zeta", "tiny", options)  # nothing recorded: nothing done
        send_task(sender, OSD_ROUND, "acme", "tiny", options)
        deadline = time.monotonic() + 120
        while (latest_draft_version(acme) or (0,))[0] < 2:
            assert time.monotonic() < deadline, "no new draft version in 120 s"
            time.sleep(0.2)

    version, url = latest_draft_version(acme)  # type: ignore[misc]
    assert version == 2  # v1: the shared draft it started from; v2: after the round
    before = acceptance(shared, target, traffic)
    after = acceptance(load_draft(url), target, traffic)
    assert after > before + 0.1, (before, after)
    assert list_osd_files(where.osd, "acme", "tiny") == []  # the records were consumed
    # The shared draft is untouched; the tenant without records got no draft of its own.
    assert latest_draft_version(where.shared_drafts("tiny"))[0] == 1  # type: ignore[index]
    assert latest_draft_version(where.tenant_drafts("zeta", "tiny")) is None


def test_osd_round_without_a_draft_and_with_bad_options(settings: Settings) -> None:
    app = create_worker_app(settings)
    where = DraftLocations.from_settings(settings)
    assert "no records" in app.tasks[OSD_ROUND].apply(args=["acme", "tiny"]).get()["skipped"]
    OSDRecorder(where.osd, "tiny").finish("r", [1, 2, 3], 1)  # nothing observed: no record
    recorder = OSDRecorder(where.osd, "tiny")
    recorder.observe("r", "acme", 2, 1, 0)
    recorder.finish("r", [5, 6, 7, 8], 2)
    recorder.flush()
    result = app.tasks[OSD_ROUND].apply(args=["acme", "tiny"]).get()
    assert "build_draft" in result["skipped"]
    with pytest.raises(ValueError, match="unknown options"):
        app.tasks[OSD_ROUND].apply(args=["acme", "tiny", {"stpes": 3}]).get()
    with pytest.raises(ValueError, match="base model"):
        app.tasks[BUILD_DRAFT].apply(args=["other-model", {"steps": 1}]).get()


def test_build_draft_saves_the_first_shared_version(
    settings: Settings, tiny_model_dir: Path
) -> None:
    settings = settings.model_copy(update={"base_model": str(tiny_model_dir)})  # a tokenizer
    app = create_worker_app(settings)
    options = {
        "num_train": 6,
        "num_heldout": 2,
        "max_new_tokens": 8,
        "steps": 5,
        "depths": [1],
        "vocab_size": 64,
        "bf16": False,
    }
    report = app.tasks[BUILD_DRAFT].apply(args=["tiny", options]).get()
    where = DraftLocations.from_settings(settings)
    version, url = latest_draft_version(where.shared_drafts("tiny"))  # type: ignore[misc]
    assert report["version"] == version == 1
    draft = load_draft(url)
    assert draft.info.source_layers == report["layers"] == [0]
    assert set(report["after"]) == {"chat", "grounded"}
