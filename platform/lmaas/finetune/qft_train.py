"""The QFT method: full-parameter tuning with integer weights, gradients and momentum.

The base model is loaded in fp32 once, converted layer by layer (`qft.quantize_model`),
and trained by `QFTLion`, whose updates happen inside backward. The result is a full model
folder (registered as a new base model) or, with ``qft_export: lora``, a LoRA adapter
extracted from the weight delta, with the full model beside it in ``full_model/`` (a job
registers both: the model and the smaller adapter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmaas.finetune.batching import Batch
from lmaas.finetune.hyperparameters import Resolved
from lmaas.finetune.loss import causal_lm_loss
from lmaas.finetune.method import ExportResult, TrainingMethod, load_base_model
from lmaas.finetune.qft.convert import quantize_model
from lmaas.finetune.qft.export import export_full_model, export_lora_adapter
from lmaas.finetune.qft.lion import QFTLion

__all__ = ["FUSE_MIN_PARAMETERS", "QFT_FULL_SUBFOLDER", "QFTMethod"]

FUSE_MIN_PARAMETERS = 10_000_000
QFT_FULL_SUBFOLDER = "full_model"


class QFTMethod(TrainingMethod):
    """Quantized Lion over a dense-and-sparse int8 copy of the base model."""

    name = "qft"

    def __init__(
        self, base_dir: Path, hp: Resolved, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.base_dir = Path(base_dir)
        self.hp = hp
        model = load_base_model(self.base_dir, device, torch.float32)
        fused = hp.hp.qft_fused
        if fused == "auto":
            fused = sum(p.numel() for p in model.parameters()) >= FUSE_MIN_PARAMETERS
        self.qft = quantize_model(
            model,
            outlier_fraction=hp.hp.qft_outlier_fraction,
            block_size=hp.hp.qft_block_size,
            compute_dtype=dtype,
            fused=bool(fused),
        )
        self.model = self.qft.model
        self.optimizer = QFTLion(
            self.qft.weights,
            self.qft.small_params,
            lr=hp.learning_rate,
            weight_decay=hp.hp.qft_weight_decay,
            seed=hp.hp.seed,
            fused=bool(fused),
        )

    def train_step(self, batch: Batch, lr: float) -> float:
        self.model.train()
        self.optimizer.lr = lr
        self.optimizer.begin_step()
        try:
            loss = causal_lm_loss(self.model, batch)
            loss.backward()
        except BaseException:
            self.optimizer.abort_step()
            raise
        self.optimizer.end_step()
        return float(loss.detach())

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        self.model.eval()
        return float(causal_lm_loss(self.model, batch))

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        opt = self.optimizer.state_dict()
        tensors = dict(self.qft.state_tensors())
        for key, value in opt.pop("tensors").items():  # type: ignore[union-attr]
            tensors[f"optimizer.{key}"] = value
        return tensors, {"optimizer": opt}

    def restore_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.qft.load_state_tensors(tensors)
        prefix = "optimizer."
        opt = dict(state["optimizer"])
        opt["tensors"] = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        self.optimizer.load_state_dict(opt)

    def export(self, out_dir: Path) -> ExportResult:
        hp = self.hp.hp
        if hp.qft_export == "lora":
            details = export_lora_adapter(
                self.qft,
                self.base_dir,
                out_dir,
                energy=hp.qft_export_energy,
                max_rank=hp.qft_export_max_rank,
                outlier_fraction=hp.qft_outlier_fraction,
                block_size=hp.qft_block_size,
            )
            full = export_full_model(self.qft, self.base_dir, out_dir / QFT_FULL_SUBFOLDER)
            return ExportResult("lora_adapter", out_dir, {**details, QFT_FULL_SUBFOLDER: full})
        details = export_full_model(self.qft, self.base_dir, out_dir)
        return ExportResult("full_model", out_dir, details)

    def state_bytes(self) -> dict[str, int]:
        return self.optimizer.state_bytes()
