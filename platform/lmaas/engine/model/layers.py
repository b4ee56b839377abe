"""Building blocks of the transformer: RMSNorm, (fused) linear projections, SwiGLU.

Every projection takes the step's `ForwardBatch` next to its input, so that a wrapper
(`lmaas.engine.lora.layers.LoraLinear`) can replace it and read the batch's LoRA mapping
without the model code knowing about LoRA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from lmaas.engine.forward_batch import ForwardBatch

__all__ = ["Linear", "RMSNorm", "silu_and_mul"]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(
            torch.ones(size, dtype=dtype, device=device), requires_grad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As transformers does: normalise in fp32, scale in the model dtype.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class Linear(nn.Module):
    """`y = x Wᵀ + b`. A fused projection names its parts in `output_slices`.

    `output_slices` lists `(name, offset, size)` of each part of the output (for example
    q_proj, k_proj, v_proj of a fused qkv projection); the loader fills the weight part by
    part and LoRA targets the parts by name.
    """

    def __init__(
        self,
        in_features: int,
        parts: list[tuple[str, int]],
        *,
        bias: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.output_slices: list[tuple[str, int, int]] = []
        offset = 0
        for name, size in parts:
            self.output_slices.append((name, offset, size))
            offset += size
        self.out_features = offset
        self.weight = nn.Parameter(
            torch.empty(offset, in_features, dtype=dtype, device=device), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.zeros(offset, dtype=dtype, device=device), requires_grad=False)
            if bias
            else None
        )

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU: `silu(gate) * up` for a fused (tokens, 2·intermediate) projection."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
