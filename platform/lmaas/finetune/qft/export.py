"""Export a QFT-trained model: a full model folder, or a LoRA adapter from its weight delta.

`export_full_model` writes a folder transformers loads as any base model (config,
safetensors, tokenizer with its chat template), in the base model's dtype.

`export_lora_adapter` writes a peft adapter: for each linear layer of the decoder, the
delta between the trained weight and the weight training started from is factored by
truncated SVD, ΔW ≈ B·A with B = U_r·√S_r, A = √S_r·V_rᵀ (lora_alpha = r, so peft's
scale is 1). The rank is the smallest that keeps `energy` of Σσ² in every layer, capped
at `max_rank`; one rank for all layers so that any LoRA runtime can batch it. The delta is
taken against the quantized starting point (the base weights quantized exactly as
training did), so the int8 rounding of the base is not mistaken for learning. Changes to
the embedding and norms have no place in a LoRA adapter and are dropped; the details
report how large they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmaas.finetune.method import attach_lora
from lmaas.finetune.qft.convert import QFTModel
from lmaas.finetune.qft.quant import QuantWeight

__all__ = ["choose_rank", "export_full_model", "export_lora_adapter", "svd_factors"]


def _copy_tokenizer(base_dir: Path, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)


def export_full_model(qft: QFTModel, base_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write the trained model as a Hugging Face folder at `out_dir`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir)
    dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = qft.dequantized_state_dict(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in qft.tied and "rotary" not in k]
    if missing or unexpected:
        raise RuntimeError(f"exported weights do not fit the model: {missing[:3]} {unexpected[:3]}")
    model.tie_weights()
    model.save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizer(base_dir, out_dir)
    return {"dtype": str(dtype).removeprefix("torch."), "parameters": qft.num_parameters}


def choose_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest r with Σ_{i<r} σ² ≥ energy · Σ σ² (0 for a zero matrix)."""
    power = singular_values.double() ** 2
    total = float(power.sum())
    if total == 0.0:
        return 0
    kept = torch.cumsum(power, 0) / total
    return int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype))) + 1


def svd_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A, retained energy) with B·A the best rank-`rank` approximation of `delta`."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return _factors(u, s, vh, rank)


def _factors(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    b = u[:, :rank] * root
    a = root[:, None] * vh[:rank]
    total = float((s.double() ** 2).sum())
    kept = float((s[:rank].double() ** 2).sum()) / total if total > 0 else 1.0
    return b.float(), a.float(), kept


def export_lora_adapter(
    qft: QFTModel,
    base_dir: Path,
    out_dir: Path,
    *,
    energy: float = 0.9,
    max_rank: int = 64,
    outlier_fraction: float = 0.01,
    block_size: int = 64,
) -> dict[str, Any]:
    """Write a peft LoRA adapter approximating the trained deltas of the linear layers.

    `outlier_fraction` and `block_size` must be those training used: they rebuild the
    quantized starting point the deltas are measured from.
    """
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    head = base.get_output_embeddings()
    linear = {
        f"{path}.weight"
        for path, m in base.named_modules()
        if isinstance(m, nn.Linear) and m is not head
    }
    truncated: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    dropped: dict[str, float] = {}
    needed = 0
    for name, weight in qft.weights.items():
        start = QuantWeight.from_float(
            base.get_parameter(name), outlier_fraction=outlier_fraction, block_size=block_size
        ).dequantize()
        delta = weight.dequantize().cpu() - start
        if name not in linear:
            dropped[name] = float(delta.norm() / start.norm().clamp_min(1e-30))
            continue
        u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
        needed = max(needed, choose_rank(s, energy))
        keep = min(max_rank, s.numel())
        truncated[name] = (u[:, :keep], s, vh[:keep])
    rank = max(1, min(needed, max_rank))
    targets = sorted({name.rsplit(".", 2)[-2] for name in linear})
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0)
    peft_model = attach_lora(base, config)
    retained: dict[str, float] = {}
    with torch.no_grad():
        for name, (u, s, vh) in truncated.items():
            b, a, retained[name] = _factors(u, s, vh, rank)
            layer = peft_model.get_submodule("base_model.model." + name.removesuffix(".weight"))
            lora_a, lora_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            lora_a.zero_()
            lora_b.zero_()
            lora_a[: a.shape[0]] = a
            lora_b[:, : b.shape[1]] = b
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return {
        "rank": rank,
        "rank_needed": needed,
        "energy_target": energy,
        "min_retained_energy": min(retained.values()) if retained else 1.0,
        "dropped_relative_deltas": dropped,
        "target_modules": targets,
    }
