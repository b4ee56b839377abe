"""What a fine-tune method is to the training loop, and loading the base model for one.

`TrainingMethod` is the seam between `TrainingRun` (data order, schedule, checkpoints,
progress, cancel) and a way of updating weights (`LoraMethod`, `QFTMethod`): a method
takes a step on a batch at a learning rate, measures a loss without learning, gives and
takes back its full state for checkpoints, and exports its result.
"""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lmaas.finetune.batching import Batch
from lmaas.finetune.loss import causal_lm_loss

__all__ = [
    "ExportResult",
    "TrainingMethod",
    "attach_lora",
    "load_base_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
]


@dataclass(frozen=True)
class ExportResult:
    """What a method wrote: a peft adapter folder or a full model folder."""

    kind: Literal["lora_adapter", "full_model"]
    path: Path
    details: dict[str, Any] = field(default_factory=dict)


class TrainingMethod(abc.ABC):
    """One way of updating a model; the loop around it is `TrainingRun`."""

    name: str
    model: nn.Module

    @abc.abstractmethod
    def train_step(self, batch: Batch, lr: float) -> float:
        """Forward, backward and update on `batch` at learning rate `lr`; the loss."""

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        """The loss on `batch` without learning."""
        return float(causal_lm_loss(self.model, batch))

    @abc.abstractmethod
    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to continue exactly: (tensors, other state for torch.save)."""

    @abc.abstractmethod
    def restore_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Undo `checkpoint_state`."""

    @abc.abstractmethod
    def export(self, out_dir: Path) -> ExportResult:
        """Write the trained result into `out_dir` (which does not exist yet)."""

    @abc.abstractmethod
    def state_bytes(self) -> dict[str, int]:
        """Bytes held for model states: weights, gradients, optimizer."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 where the device computes it natively, else fp32."""
    if name == "auto":
        from lmaas.finetune.qft.convert import default_compute_dtype

        return default_compute_dtype(device)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_base_model(base_dir: Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The Hugging Face causal LM in `base_dir` on `device`, in `dtype`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    model.config.use_cache = False
    return model.to(device)


def load_tokenizer(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer in {base_dir} has no chat template: chat fine-tuning needs one"
        )
    return tokenizer


def attach_lora(model: nn.Module, config: Any) -> Any:
    """`peft.get_peft_model`, without the deprecation warning peft triggers in transformers."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        return get_peft_model(model, config)
