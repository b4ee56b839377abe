"""Turn a Hugging Face causal LM into a QFT model, and back into plain fp weights.

Every `nn.Linear` and `nn.Embedding` becomes a QFT layer over a `QuantWeight` (dense int8 +
fp32 outliers); tied weights (SmolLM2's embedding = lm_head) become one `QuantWeight` used
by both layers. The embedding is quantized and trained like the linear layers: it is 21% of
SmolLM2-135M, and leaving it fp32 would cost more memory than every other state together.
What is left — RMSNorm weights and biases, ~0.05% of a Llama — stays fp32 ("small
parameters", trained by fp32 Lion). The HF model object is modified in place; its fp32
linear weights are released as each layer is converted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmaas.finetune.qft.layers import QFTEmbedding, QFTLinear
from lmaas.finetune.qft.quant import QuantWeight

__all__ = ["QFTModel", "default_compute_dtype", "quantize_model"]


def default_compute_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 where matmuls support it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
    except (AttributeError, RuntimeError):
        pass
    return torch.float32


@dataclass
class QFTModel:
    """A converted model: the HF module tree plus handles on its integer weights."""

    model: nn.Module
    weights: dict[str, QuantWeight]
    small_params: dict[str, nn.Parameter]
    compute_dtype: torch.dtype
    tied: dict[str, str] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(w.numel for w in self.weights.values()) + sum(
            p.numel() for p in self.small_params.values()
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor that defines the trained model (integer weights + small params)."""
        out: dict[str, torch.Tensor] = {}
        for name, w in self.weights.items():
            for key, t in w.state_tensors().items():
                out[f"{name}.{key}"] = t
        for name, p in self.small_params.items():
            out[name] = p.detach()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, w in self.weights.items():
            w.load_state_tensors(
                {k: tensors[f"{name}.{k}"] for k in ("q", "scale", "outlier_idx", "outlier_val")}
            )
        with torch.no_grad():
            for name, p in self.small_params.items():
                p.copy_(tensors[name])

    def dequantized_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """A plain state dict (HF names) with the current weights, tied keys included."""
        out = {name: w.dequantize(torch.float32).to(dtype) for name, w in self.weights.items()}
        for alias, name in self.tied.items():
            out[alias] = out[name]
        for name, p in self.small_params.items():
            out[name] = p.detach().to(dtype).clone()
        return out


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, module)


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    *,
    outlier_fraction: float = 0.01,
    block_size: int = 64,
    compute_dtype: torch.dtype | None = None,
    fused: bool = False,
) -> QFTModel:
    """Replace the linear and embedding layers of `model` with QFT layers (in place).

    `fused` runs the quantization kernels compiled (`torch.compile`): much faster on real
    models, at a one-time compile cost.
    """
    device = next(model.parameters()).device
    dtype = compute_dtype or default_compute_dtype(device)
    by_param: dict[int, tuple[str, QuantWeight]] = {}
    weights: dict[str, QuantWeight] = {}
    tied: dict[str, str] = {}
    targets = [
        (path, m) for path, m in model.named_modules() if isinstance(m, nn.Linear | nn.Embedding)
    ]
    while targets:
        path, module = targets.pop(0)
        param = module.weight
        key = f"{path}.weight"
        if id(param) in by_param:
            first, qweight = by_param[id(param)]
            tied[key] = first
        else:
            qweight = QuantWeight.from_float(
                param, outlier_fraction=outlier_fraction, block_size=block_size, fused=fused
            )
            by_param[id(param)] = (key, qweight)
            weights[key] = qweight
        if isinstance(module, nn.Linear):
            new: nn.Module = QFTLinear(qweight, module.bias, dtype)
        else:
            new = QFTEmbedding(qweight, dtype, module.padding_idx)
        _set_module(model, path, new)
        del module, param  # let the fp32 weight go as soon as no layer holds it
    by_param.clear()
    small = {name: p for name, p in model.named_parameters()}
    for p in small.values():
        # a copy: a loaded parameter may be a view of the checkpoint file's memory map, which
        # would otherwise stay mapped (and resident) for the whole run
        p.data = p.data.to(torch.float32, copy=True)
        p.requires_grad_(True)
    return QFTModel(model, weights, small, dtype, tied)
