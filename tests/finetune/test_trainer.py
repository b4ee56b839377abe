"""TrainingRun: hyperparameters, progress, cancel, checkpoints, exact resume (also after
SIGKILL), idempotence."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lmaas.finetune.checkpoint import CheckpointError
from lmaas.finetune.data import DataFileError
from lmaas.finetune.hyperparameters import (
    HyperparameterError,
    learning_rate_at,
    parse_hyperparameters,
    resolve,
)
from lmaas.finetune.trainer import CheckpointInfo, Progress, TrainingRun

PEFT_DEPRECATION = "ignore:.*is_gradient_checkpointing.*:FutureWarning"  # peft → transformers
pytestmark = pytest.mark.filterwarnings(PEFT_DEPRECATION)

HP = {"n_epochs": 2, "batch_size": 4, "checkpoint_every": 2, "compute_dtype": "float32"}


def make_run(base: Path, data: Path, work: Path, method: str, **kw: Any) -> TrainingRun:
    hp = {**HP, "learning_rate_multiplier": 20 if method == "qft" else 5, **kw.pop("hp", {})}
    return TrainingRun(
        base_model=base,
        training_file=data,
        validation_file=data,
        work_dir=work,
        hyperparameters=hp,
        method=method,
        model_cache_dir=work.parent / "cache",
        **kw,
    )


def test_hyperparameters_name_the_bad_field() -> None:
    with pytest.raises(HyperparameterError, match="n_epochs"):
        parse_hyperparameters({"n_epochs": 0})
    with pytest.raises(HyperparameterError, match="nonsense"):
        parse_hyperparameters({"nonsense": 1})
    with pytest.raises(HyperparameterError, match="method"):
        parse_hyperparameters({}, method="full")
    hp = parse_hyperparameters({"learning_rate_multiplier": 2}, method="qft")
    resolved = resolve(hp, num_examples=5000)
    assert (resolved.n_epochs, resolved.batch_size) == (3, 10)
    assert resolved.learning_rate == pytest.approx(4e-5)
    assert resolve(parse_hyperparameters(None), 3).batch_size == 1


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    lrs = [learning_rate_at(s, 100, 1.0, 0.05) for s in range(100)]
    assert lrs[0] < lrs[4] < lrs[5] == 1.0
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in itertools.pairwise(lrs[5:]))


def test_bad_data_fails_with_the_line_number(tiny_llama_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DataFileError, match="line 1: has no assistant message"):
        make_run(tiny_llama_dir, bad, tmp_path / "job", "lora").run()


def test_cancel_stops_within_one_step(tiny_llama_dir: Path, chat_file, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seen: list[Progress] = []
    run = make_run(
        tiny_llama_dir,
        chat_file(16),
        tmp_path / "job",
        "lora",
        on_progress=seen.append,
        should_cancel=lambda: len(seen) >= 3,
    )
    result = run.run()
    assert result.status == "cancelled" and result.steps == 3 == len(seen)
    assert result.output_dir is None and not (tmp_path / "job" / "output").exists()
    assert not (tmp_path / "job" / "result.json").exists()


def test_checkpoints_are_written_pruned_and_reported(
    tiny_llama_dir: Path, chat_file, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    saved: list[CheckpointInfo] = []
    events: list[str] = []
    run = make_run(
        tiny_llama_dir,
        chat_file(16),
        tmp_path / "job",
        "qft",
        on_checkpoint=saved.append,
        on_event=lambda level, message, data: events.append(message),
    )
    result = run.run()
    assert result.steps == 8
    assert [c.step for c in saved] == [2, 4, 6]  # none at the end: the export is the result
    folder = tmp_path / "job" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step-00000004", "step-00000006"]
    assert (folder / "latest").read_text() == "step-00000006"
    meta = json.loads((folder / "step-00000006" / "meta.json").read_text())
    assert meta["step"] == 6 and meta["trained_tokens"] == saved[-1].metrics["trained_tokens"]
    assert {"tensors.safetensors", "state.pt", "meta.json"} <= {
        p.name for p in (folder / "step-00000006").iterdir()
    }
    assert any("exported a full model" in e for e in events)
    assert not any(str(tmp_path) in e for e in events), "events reach the tenant: no local paths"
    # a second run on the finished folder returns the result without training
    again: list[Progress] = []
    repeat = make_run(
        tiny_llama_dir, chat_file(16), tmp_path / "job", "qft", on_progress=again.append
    )
    assert repeat.run() == result and again == []


class Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["lora", "qft"])
def test_resume_after_a_crash_ends_exactly_like_an_uninterrupted_run(
    method: str, tiny_llama_dir: Path, chat_file, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = chat_file(16)
    ref: list[Progress] = []
    reference = make_run(
        tiny_llama_dir, data, tmp_path / "ref", method, on_progress=ref.append
    ).run()

    first: list[Progress] = []

    def crash_at_5(p: Progress) -> None:
        first.append(p)
        if p.step == 5:
            raise Crash

    with pytest.raises(Crash):
        make_run(tiny_llama_dir, data, tmp_path / "job", method, on_progress=crash_at_5).run()
    assert [p.train_loss for p in first] == [p.train_loss for p in ref[:5]]  # deterministic

    events: list[str] = []
    later: list[Progress] = []
    resumed = make_run(
        tiny_llama_dir,
        data,
        tmp_path / "job",
        method,
        on_progress=later.append,
        on_event=lambda level, message, data: events.append(message),
    ).run()
    assert "resumed from the checkpoint at step 4" in events
    assert [p.step for p in later] == [5, 6, 7, 8]
    assert [p.train_loss for p in later] == pytest.approx([p.train_loss for p in ref[4:]], rel=1e-6)
    assert resumed.train_loss == pytest.approx(reference.train_loss, rel=1e-6)
    assert resumed.val_loss == pytest.approx(reference.val_loss, rel=1e-6)
    assert resumed.trained_tokens == reference.trained_tokens


def test_a_checkpoint_of_another_run_is_refused(
    tiny_llama_dir: Path, chat_file, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = chat_file(16)
    seen: list[Progress] = []
    make_run(
        tiny_llama_dir,
        data,
        tmp_path / "job",
        "lora",
        on_progress=seen.append,
        should_cancel=lambda: len(seen) >= 2,
    ).run()
    other = make_run(tiny_llama_dir, data, tmp_path / "job", "lora", hp={"seed": 7})
    with pytest.raises(CheckpointError, match="belongs to another run"):
        other.run()


CHILD = """
import json, sys, time
from pathlib import Path
from lmaas.finetune.trainer import TrainingRun

args = json.loads(sys.argv[1])
marker = Path(args.pop("marker"))

def progress(p):
    marker.write_text(str(p.step))
    time.sleep(0.3)

TrainingRun(**args, on_progress=progress).run()
"""


def test_resume_after_sigkill_mid_training(tiny_llama_dir: Path, chat_file, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = chat_file(16)
    reference = make_run(tiny_llama_dir, data, tmp_path / "ref", "qft").run()
    marker = tmp_path / "step"
    args = {
        "base_model": str(tiny_llama_dir),
        "training_file": str(data),
        "validation_file": str(data),
        "work_dir": str(tmp_path / "job"),
        "hyperparameters": {**HP, "learning_rate_multiplier": 20},
        "method": "qft",
        "model_cache_dir": str(tmp_path / "cache"),
        "marker": str(marker),
    }
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], env=dict(os.environ))
    deadline = time.monotonic() + 240
    while not (marker.is_file() and marker.read_text() and int(marker.read_text()) >= 5):
        assert child.poll() is None, "the training process ended before it was killed"
        assert time.monotonic() < deadline, "the training process made no progress"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "job" / "result.json").exists()

    events: list[str] = []
    resumed = make_run(
        tiny_llama_dir,
        data,
        tmp_path / "job",
        "qft",
        on_event=lambda level, message, data: events.append(message),
    ).run()
    assert any(e.startswith("resumed from the checkpoint at step 4") for e in events)
    assert resumed.status == "succeeded" and resumed.steps == 8
    assert resumed.train_loss == pytest.approx(reference.train_loss, rel=1e-5)
    assert resumed.val_loss == pytest.approx(reference.val_loss, rel=1e-5)
