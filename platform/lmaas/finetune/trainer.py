"""`TrainingRun`: the training loop both methods share, built to be driven by a job.

It validates and tokenizes the data, decides the hyperparameters, builds the method
(LoRA or QFT), resumes from the newest checkpoint in its work folder if there is one, then
steps through a deterministic schedule: progress goes to `on_progress` after every step,
`should_cancel()` is asked before every step, a checkpoint is written every
`checkpoint_every` steps, and at the end the result is exported into ``output/`` and
summarised in ``result.json``. Running it again on a finished folder returns that result
without training (a redelivered job is harmless).

Work folder::

    <work_dir>/checkpoints/step-NNNNNNNN/   see `lmaas.finetune.checkpoint`
    <work_dir>/output/                      peft adapter folder or full model folder
    <work_dir>/result.json                  `TrainingResult` (written last)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lmaas.finetune.batching import Batch, EpochPlan, pack_examples
from lmaas.finetune.checkpoint import CheckpointStore, capture_rng, restore_rng
from lmaas.finetune.data import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_LINES,
    TokenizedExample,
    load_chat_jsonl,
    tokenize_examples,
)
from lmaas.finetune.hyperparameters import (
    Hyperparameters,
    Resolved,
    learning_rate_at,
    parse_hyperparameters,
    resolve,
)
from lmaas.finetune.method import (
    ExportResult,
    TrainingMethod,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)

__all__ = ["CheckpointInfo", "Progress", "TrainingError", "TrainingResult", "TrainingRun"]

log = logging.getLogger(__name__)

RECENT_LOSSES = 10


class TrainingError(ValueError):
    """Training cannot go on for a reason the user can fix (data, hyperparameters, model)."""


@dataclass(frozen=True)
class Progress:
    """After each step: `step` of `total_steps` done (1-based), losses, tokens so far."""

    step: int
    total_steps: int
    epoch: int
    train_loss: float
    val_loss: float | None
    trained_tokens: int
    learning_rate: float
    elapsed_s: float


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    metrics: dict[str, Any]


@dataclass
class TrainingResult:
    """The outcome of a run (also `result.json` of a finished work folder)."""

    status: Literal["succeeded", "cancelled"]
    method: str
    steps: int
    total_steps: int
    trained_tokens: int
    train_loss: float | None
    val_loss: float | None
    output_dir: Path | None = None
    output_kind: Literal["lora_adapter", "full_model"] | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir) if self.output_dir else None
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingResult:
        data = json.loads(text)
        data["output_dir"] = Path(data["output_dir"]) if data.get("output_dir") else None
        return cls(**data)


def _sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_identity(base_dir: Path) -> str:
    config = (base_dir / "config.json").read_text()
    weights = sorted((p.name, p.stat().st_size) for p in base_dir.glob("*.safetensors"))
    return hashlib.sha256(json.dumps([config, weights]).encode()).hexdigest()


class TrainingRun:
    """One fine-tune, from files to an exported result; see the module docstring."""

    def __init__(
        self,
        *,
        base_model: Path | str,
        training_file: Path | str,
        work_dir: Path | str,
        validation_file: Path | str | None = None,
        hyperparameters: Hyperparameters | dict[str, Any] | None = None,
        method: str | None = None,
        device: str | torch.device = "auto",
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[str, str, dict[str, Any] | None], None] | None = None,
        on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        max_file_bytes: int = DEFAULT_MAX_BYTES,
        max_lines: int = DEFAULT_MAX_LINES,
        keep_checkpoints: int = 2,
        model_cache_dir: Path | str | None = None,
    ) -> None:
        if isinstance(hyperparameters, Hyperparameters):
            hp = hyperparameters
            if method is not None and method != hp.method:
                hp = hp.model_copy(update={"method": method})
        else:
            hp = parse_hyperparameters(hyperparameters, method)
        self.hp = hp
        self.base_model = Path(base_model)
        self.training_file = Path(training_file)
        self.validation_file = Path(validation_file) if validation_file else None
        self.work_dir = Path(work_dir)
        self.device = resolve_device(device)
        self.on_progress = on_progress or (lambda p: None)
        self.on_event = on_event or (lambda level, message, data: None)
        self.on_checkpoint = on_checkpoint or (lambda c: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.limits = {"max_bytes": max_file_bytes, "max_lines": max_lines}
        self.keep_checkpoints = keep_checkpoints
        self.model_cache_dir = model_cache_dir

    # Setup -------------------------------------------------------------------------

    def _base_dir(self) -> Path:
        from lmaas.engine.model_files import materialize_model

        cache = self.model_cache_dir
        if cache is None:
            from lmaas.config import get_settings

            cache = get_settings().home / "models"
        return materialize_model(self.base_model, cache)

    def _load(self, path: Path, tokenizer: Any, what: str) -> list[TokenizedExample]:
        examples = load_chat_jsonl(path, **self.limits)
        sequences, dropped = tokenize_examples(tokenizer, examples, self.hp.max_seq_len)
        if dropped:
            self.on_event(
                "warning",
                f"{dropped} {what} example(s) had no assistant token within max_seq_len="
                f"{self.hp.max_seq_len} and were skipped",
                {"dropped": dropped},
            )
        if not sequences:
            raise TrainingError(f"no usable {what} example: raise max_seq_len or shorten them")
        return sequences

    def _build_method(self, base_dir: Path, resolved: Resolved) -> TrainingMethod:
        dtype = resolve_dtype(self.hp.compute_dtype, self.device)
        if self.hp.method == "lora":
            from lmaas.finetune.lora_train import LoraMethod

            return LoraMethod(base_dir, resolved, self.device, dtype)
        from lmaas.finetune.qft_train import QFTMethod

        return QFTMethod(base_dir, resolved, self.device, dtype)

    # The loop ----------------------------------------------------------------------

    def run(self) -> TrainingResult:
        """Train (or resume) to the end, or until `should_cancel()`; see the module doc."""
        result_file = self.work_dir / "result.json"
        if result_file.is_file():
            return TrainingResult.from_json(result_file.read_text())
        self.work_dir.mkdir(parents=True, exist_ok=True)
        base_dir = self._base_dir()
        tokenizer = load_tokenizer(base_dir)
        train = self._load(self.training_file, tokenizer, "training")
        val = (
            self._load(self.validation_file, tokenizer, "validation")
            if self.validation_file
            else []
        )
        resolved = resolve(self.hp, len(train))
        plan = EpochPlan(len(train), resolved.batch_size, resolved.n_epochs, self.hp.seed)
        total = plan.total_steps
        fingerprint = hashlib.sha256(
            json.dumps(
                [
                    resolved.as_dict(),
                    _sha256(self.training_file),
                    _sha256(self.validation_file),
                    _model_identity(base_dir),
                ],
                sort_keys=True,
            ).encode()
        ).hexdigest()
        store = CheckpointStore(self.work_dir / "checkpoints", fingerprint, self.keep_checkpoints)

        torch.manual_seed(self.hp.seed)
        random.seed(self.hp.seed)
        method = self._build_method(base_dir, resolved)
        self.on_event(
            "info",
            f"training {self.hp.method} on {len(train)} examples: {total} steps "
            f"({resolved.n_epochs} epochs × {plan.steps_per_epoch}), lr {resolved.learning_rate:g}",
            {"total_steps": total, "hyperparameters": resolved.as_dict()},
        )
        step, tokens, recent = 0, 0, []
        last_val: float | None = None
        latest = store.latest()
        if latest is not None:
            ckpt = store.load(latest, self.device)
            method.restore_state(ckpt.tensors, ckpt.state["method"])
            restore_rng(ckpt.state["rng"])
            step, tokens = ckpt.step, int(ckpt.meta["trained_tokens"])
            recent, last_val = list(ckpt.meta["recent_losses"]), ckpt.meta.get("val_loss")
            self.on_event("info", f"resumed from the checkpoint at step {step}", {"step": step})

        val_batches = self._val_batches(val, resolved)
        started = time.monotonic()
        while step < total:
            if self.should_cancel():
                self.on_event("info", f"cancelled before step {step + 1}", {"step": step})
                return self._result("cancelled", resolved, step, total, tokens, recent, last_val)
            batch = pack_examples([train[i] for i in plan.indices(step)], self.hp.max_seq_len).to(
                self.device
            )
            lr = learning_rate_at(step, total, resolved.learning_rate, self.hp.warmup_fraction)
            loss = method.train_step(batch, lr)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss} at step {step + 1}: lower learning_rate_multiplier"
                )
            step += 1
            tokens += batch.num_tokens
            recent = [*recent, loss][-RECENT_LOSSES:]
            val_loss = None
            if val_batches and (step % resolved.eval_every == 0 or step == total):
                val_loss = last_val = self._evaluate(method, val_batches)
            self.on_progress(
                Progress(
                    step,
                    total,
                    plan.epoch_of(step - 1) + 1,
                    loss,
                    val_loss,
                    tokens,
                    lr,
                    time.monotonic() - started,
                )
            )
            if step % self.hp.checkpoint_every == 0 and step < total:
                metrics = {"train_loss": loss, "val_loss": last_val, "trained_tokens": tokens}
                tensors, state = method.checkpoint_state()
                path = store.save(
                    step,
                    tensors,
                    {"method": state, "rng": capture_rng()},
                    {**metrics, "recent_losses": recent},
                )
                self.on_checkpoint(CheckpointInfo(step, path, metrics))

        out = self._export(method)
        result = self._result("succeeded", resolved, step, total, tokens, recent, last_val)
        result.output_dir, result.output_kind = out.path, out.kind
        result.details = {**out.details, "state_bytes": method.state_bytes()}
        tmp = result_file.with_suffix(".tmp")
        tmp.write_text(result.to_json())
        os.replace(tmp, result_file)
        log.info("exported a %s to %s", out.kind, out.path)
        # Events reach the tenant: they name what was exported, never a path of this machine.
        self.on_event("info", f"exported a {out.kind.replace('_', ' ')}", None)
        return result

    def _result(
        self,
        status: Literal["succeeded", "cancelled"],
        resolved: Resolved,
        step: int,
        total: int,
        tokens: int,
        recent: list[float],
        val_loss: float | None,
    ) -> TrainingResult:
        return TrainingResult(
            status=status,
            method=self.hp.method,
            steps=step,
            total_steps=total,
            trained_tokens=tokens,
            train_loss=sum(recent) / len(recent) if recent else None,
            val_loss=val_loss,
            hyperparameters=resolved.as_dict(),
        )

    def _val_batches(self, val: list[TokenizedExample], resolved: Resolved) -> list[Batch]:
        size = resolved.batch_size
        batches = [
            pack_examples(val[i : i + size], self.hp.max_seq_len).to(self.device)
            for i in range(0, len(val), size)
        ]
        return batches[: self.hp.max_eval_batches]

    @staticmethod
    def _evaluate(method: TrainingMethod, batches: list[Batch]) -> float:
        total = sum(b.num_loss_tokens for b in batches)
        return sum(method.eval_loss(b) * b.num_loss_tokens for b in batches) / total

    def _export(self, method: TrainingMethod) -> ExportResult:
        final = self.work_dir / "output"
        tmp = Path(tempfile.mkdtemp(prefix=".output.", dir=self.work_dir))
        shutil.rmtree(tmp)
        try:
            out = method.export(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ExportResult(out.kind, final, out.details)
