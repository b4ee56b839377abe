"""The LoRA method: peft adapters on every linear layer of the decoder, AdamW, fp32 adapters.

The base weights stay frozen in the compute dtype (bf16 where the hardware has it); the
adapter weights and their optimizer state are fp32. The result is a peft adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``) that peft and the lmaas runtime
load on top of the base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmaas.finetune.batching import Batch
from lmaas.finetune.hyperparameters import Resolved
from lmaas.finetune.loss import causal_lm_loss
from lmaas.finetune.method import ExportResult, TrainingMethod, attach_lora, load_base_model

__all__ = ["LoraMethod", "linear_module_names"]

MAX_GRAD_NORM = 1.0


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names of the decoder's linear layers (q_proj, …, down_proj); not the head."""
    head = model.get_output_embeddings()
    names = {
        path.rsplit(".", 1)[-1]
        for path, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head
    }
    return sorted(names)


class LoraMethod(TrainingMethod):
    """peft LoRA with AdamW (β 0.9/0.999, no weight decay, grad-norm clip 1.0)."""

    name = "lora"

    def __init__(
        self, base_dir: Path, hp: Resolved, device: torch.device, dtype: torch.dtype
    ) -> None:
        from peft import LoraConfig

        base = load_base_model(base_dir, device, dtype)
        for p in base.parameters():
            p.requires_grad_(False)
        targets = hp.hp.lora_target_modules
        if targets == "auto":
            targets = linear_module_names(base)
        config = LoraConfig(
            r=hp.hp.lora_rank,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.hp.lora_dropout,
            target_modules=list(targets),
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            self.model = attach_lora(base, config)
        except ValueError as exc:  # e.g. target modules not found in this model
            raise ValueError(f"cannot attach LoRA to this model: {exc}") from exc
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=hp.learning_rate, weight_decay=0.0)

    def train_step(self, batch: Batch, lr: float) -> float:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = causal_lm_loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        self.model.eval()
        return float(causal_lm_loss(self.model, batch))

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from peft import get_peft_model_state_dict

        tensors = get_peft_model_state_dict(self.model)
        return dict(tensors), {"optimizer": self.optimizer.state_dict()}

    def restore_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, tensors)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"checkpoint has adapter weights this model lacks: {unexpected[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])

    def export(self, out_dir: Path) -> ExportResult:
        self.model.save_pretrained(out_dir, safe_serialization=True)
        config = self.model.peft_config["default"]
        return ExportResult(
            "lora_adapter",
            out_dir,
            {
                "rank": config.r,
                "alpha": config.lora_alpha,
                "target_modules": sorted(config.target_modules),
            },
        )

    def state_bytes(self) -> dict[str, int]:
        frozen = sum(
            p.numel() * p.element_size() for p in self.model.parameters() if not p.requires_grad
        )
        trained = sum(p.numel() * p.element_size() for p in self.params)
        opt = sum(
            t.numel() * t.element_size()
            for s in self.optimizer.state.values()
            for t in s.values()
            if torch.is_tensor(t)
        )
        return {"weights": frozen + trained, "gradients": trained, "optimizer": opt}
