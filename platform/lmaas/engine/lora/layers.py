"""Where LoRA attaches: a wrapper around a base projection (composition, not subclassing).

`LoraLinear` computes the base projection, then adds the batched LoRA term of every token
whose sequence uses an adapter, for each part of a fused projection (q/k/v, gate/up): on
CPU through the compiled kernel (`lora.kernel`, one call for all parts) when it is
available, else — and for long prompt chunks — through `lora.ops`. The
model code calls it exactly like the `Linear` it wraps; `attach_lora` swaps the wrappers in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lmaas.engine.lora import kernel
from lmaas.engine.lora.bank import LoraBank, LoraWeights
from lmaas.engine.lora.ops import lora_expand, lora_shrink
from lmaas.engine.model.layers import Linear

if TYPE_CHECKING:
    from lmaas.engine.forward_batch import ForwardBatch

__all__ = ["LoraLinear", "attach_lora"]

# The fused projections of a decoder layer and where they live.
_PROJECTIONS = {"self_attn": ("qkv_proj", "o_proj"), "mlp": ("gate_up_proj", "down_proj")}


class LoraLinear(nn.Module):
    def __init__(self, base: Linear, weights: LoraWeights) -> None:
        super().__init__()
        self.base = base
        self.weights = weights
        self._call: kernel.Call | None = None  # the kernel's fixed arguments, per B tensors

    @property
    def output_slices(self) -> list[tuple[str, int, int]]:
        return self.base.output_slices

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        y = self.base(x, batch)
        mapping, w = batch.lora, self.weights
        if mapping is None or not mapping.is_active or w.a is None:
            return y
        if w.slot_rank is not None and y.dtype == x.dtype and kernel.wanted(x, w.a):
            plan, segments = mapping.kernel_split()
            if plan.num_groups:
                kernel.run(x, w.a, self._kernel_call(), w.rank, y, w.slot_rank, plan)
            if segments.segments:
                self._torch_path(x, y, segments)
            return y
        self._torch_path(x, y, mapping)
        return y

    def _torch_path(self, x: torch.Tensor, y: torch.Tensor, mapping) -> None:
        w = self.weights
        h = lora_shrink(x, w.a, mapping)
        r = w.rank
        for j, (_, offset, size) in enumerate(self.base.output_slices):
            lora_expand(
                y[:, offset : offset + size], h.columns(j * r, (j + 1) * r), w.b[j], mapping
            )

    def _kernel_call(self) -> kernel.Call:
        b = self.weights.b
        if self._call is None or self._call.b is not b:  # the bank replaces the list on growth
            self._call = kernel.Call(b, [offset for _, offset, _ in self.base.output_slices])
        return self._call


def attach_lora(model: nn.Module, bank: LoraBank) -> None:
    """Wrap every decoder layer's projections of `model` with `LoraLinear` over `bank`
    (on CPU, the kernel is built now, at engine start, not in the first request's step)."""
    if bank.device.type == "cpu" and kernel.enabled():
        kernel.load()
    for index, layer in enumerate(model.model.layers):
        for block_name, names in _PROJECTIONS.items():
            block = getattr(layer, block_name)
            for name in names:
                base = getattr(block, name)
                if isinstance(base, LoraLinear):
                    continue
                parts = [(target, base.in_features, size) for target, _, size in base.output_slices]
                setattr(block, name, LoraLinear(base, bank.register(index, parts)))
