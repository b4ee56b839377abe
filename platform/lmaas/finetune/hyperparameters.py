"""Hyperparameters of a fine-tune job: what a tenant may set, defaults, and their meaning.

The OpenAI fields (`n_epochs`, `batch_size`, `learning_rate_multiplier`, each a number or
``"auto"``) plus lmaas extensions prefixed by method (`lora_*`, `qft_*`). Validation errors
name the field and the allowed range. `resolve` turns ``"auto"`` into numbers once the
dataset size is known. The learning rate is ``multiplier × base`` with a base per method:
2e-4 for LoRA with AdamW, 2e-5 for full-parameter Lion (every Lion step has size lr, so it
wants a smaller rate than AdamW on the same weights — 3-10× in the Lion paper, ~2× on the
short runs of bench/qft.py — and full tuning a smaller one than an adapter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "BASE_LEARNING_RATE",
    "HyperparameterError",
    "Hyperparameters",
    "Resolved",
    "learning_rate_at",
    "parse_hyperparameters",
    "resolve",
]

BASE_LEARNING_RATE = {"lora": 2e-4, "qft": 2e-5}
Auto = Literal["auto"]


class HyperparameterError(ValueError):
    """Hyperparameters that cannot be used; the message names the field."""


class Hyperparameters(BaseModel):
    """What a fine-tune job may set (unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["lora", "qft"] = "lora"
    n_epochs: int | Auto = Field(default="auto", description="Passes over the training file.")
    batch_size: int | Auto = Field(default="auto", description="Examples per optimizer step.")
    learning_rate_multiplier: float | Auto = Field(
        default="auto", description="Scales the method's base learning rate (LoRA 2e-4, QFT 2e-5)."
    )
    seed: int = Field(default=0, ge=0, lt=2**31, description="Same seed, same data: same run.")
    max_seq_len: int = Field(default=1024, ge=16, le=32768, description="Tokens per example.")
    warmup_fraction: float = Field(default=0.03, ge=0.0, le=0.5)
    checkpoint_every: int = Field(default=50, ge=1, description="Steps between checkpoints.")
    eval_every: int | Auto = Field(default="auto", description="Steps between validation losses.")
    max_eval_batches: int = Field(default=20, ge=1)
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    lora_rank: int = Field(default=16, ge=1, le=256)
    lora_alpha: float | Auto = Field(default="auto", description="auto = 2 × rank.")
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | Auto = Field(
        default="auto", description="auto = every linear layer of the decoder."
    )
    qft_outlier_fraction: float = Field(default=0.01, ge=0.0, le=0.1)
    qft_block_size: int = Field(default=64, ge=16, le=1024)
    qft_weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    qft_fused: bool | Auto = Field(
        default="auto", description="Compile the integer kernels (auto: for models ≥ 10M params)."
    )
    qft_export: Literal["full", "lora"] = "full"
    qft_export_energy: float = Field(default=0.9, gt=0.0, le=1.0)
    qft_export_max_rank: int = Field(default=64, ge=1, le=1024)

    @model_validator(mode="after")
    def _positive(self) -> Hyperparameters:
        for name in ("n_epochs", "batch_size", "eval_every"):
            value = getattr(self, name)
            if value != "auto" and value < 1:
                raise ValueError(f"{name} must be ≥ 1 or 'auto'")
        lr = self.learning_rate_multiplier
        if lr != "auto" and not (0.0 < lr <= 100.0):
            raise ValueError("learning_rate_multiplier must be in (0, 100] or 'auto'")
        if self.n_epochs != "auto" and self.n_epochs > 100:
            raise ValueError("n_epochs must be at most 100")
        return self


def parse_hyperparameters(
    data: dict[str, Any] | None, method: str | None = None
) -> Hyperparameters:
    """Validate a job's hyperparameters dict (and its `method`), or `HyperparameterError`."""
    fields = dict(data or {})
    if method is not None:
        fields["method"] = method
    try:
        return Hyperparameters.model_validate(fields)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "hyperparameters"
            problems.append(f"{where}: {err['msg']}")
        raise HyperparameterError("invalid hyperparameters: " + "; ".join(problems)) from None


@dataclass(frozen=True)
class Resolved:
    """Hyperparameters with every ``"auto"`` decided for a dataset of `num_examples`."""

    hp: Hyperparameters
    n_epochs: int
    batch_size: int
    learning_rate: float
    eval_every: int
    lora_alpha: float

    @property
    def method(self) -> str:
        return self.hp.method

    def as_dict(self) -> dict[str, Any]:
        out = self.hp.model_dump()
        out.update(
            n_epochs=self.n_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            eval_every=self.eval_every,
            lora_alpha=self.lora_alpha,
        )
        return out


def _resolve_total(n: int, epochs: int, batch: int) -> int:
    return math.ceil(n / batch) * epochs


def resolve(hp: Hyperparameters, num_examples: int) -> Resolved:
    """Decide every ``"auto"`` (OpenAI-like: 3 epochs, batches of ≈0.2% of the data, 1-16)."""
    n_epochs = 3 if hp.n_epochs == "auto" else hp.n_epochs
    if hp.batch_size == "auto":
        batch_size = max(1, min(16, round(0.002 * num_examples) or 1, num_examples))
    else:
        batch_size = min(hp.batch_size, max(1, num_examples))
    multiplier = 1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier
    total = _resolve_total(num_examples, n_epochs, batch_size)
    eval_every = max(1, total // 10) if hp.eval_every == "auto" else hp.eval_every
    alpha = 2.0 * hp.lora_rank if hp.lora_alpha == "auto" else float(hp.lora_alpha)
    return Resolved(
        hp=hp,
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=multiplier * BASE_LEARNING_RATE[hp.method],
        eval_every=eval_every,
        lora_alpha=alpha,
    )


def learning_rate_at(step: int, total_steps: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up to `peak` over the first steps, then linear decay to 10% of it.

    `step` is 0-based; the schedule depends on nothing else, so a resumed run matches.
    """
    warmup = math.ceil(warmup_fraction * total_steps)
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    span = max(1, total_steps - warmup)
    return peak * (1.0 - 0.9 * (step - warmup) / span)
