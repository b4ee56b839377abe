"""The batched LoRA maths: shrink x·A into a rank-sized buffer, expand buffer·B into y.

Both run over the whole batch at once, whatever mix of adapters it holds, laid out by the
step's `LoraMapping`: one batched matmul for the packed light slots plus one matmul per
heavy segment — never one call per token, never a loop over adapters per token.

Weights are stacked per bank slot: `a` is (slots, rank, in_features) — A transposed, so a
rank prefix is contiguous — and `b` is (slots, rank, out_features) with the adapter's
scaling already folded in. Slots of adapters with a smaller rank are zero-padded.

On CPU the compiled gather-GEMV (`lora.kernel`) does the same maths for every slot with up
to `mapping.KERNEL_MAX_GROUP` tokens; these functions then serve longer prompt chunks only,
and everything elsewhere (CUDA, no compiler, `LMAAS_LORA_KERNEL=0`).
"""

from __future__ import annotations

import torch

from lmaas.engine.lora.mapping import LoraMapping, Segments

__all__ = ["LoraBuffer", "lora_expand", "lora_shrink"]


class LoraBuffer:
    """The shrink result in the mapping's layout: packed (groups, size, rank) and segments."""

    def __init__(self, packed: torch.Tensor | None, segments: list[torch.Tensor]) -> None:
        self.packed = packed
        self.segments = segments

    def columns(self, start: int, stop: int) -> LoraBuffer:
        """The buffer restricted to rank columns [start, stop) (one part of a fused layer)."""
        packed = self.packed[..., start:stop] if self.packed is not None else None
        return LoraBuffer(packed, [s[:, start:stop] for s in self.segments])


def lora_shrink(x: torch.Tensor, a: torch.Tensor, mapping: LoraMapping | Segments) -> LoraBuffer:
    """Project every LoRA token onto its adapter's A.

    Semantics:
        for t in range(num_tokens):
            if slot[t] >= 0:
                h[t] = x[t] @ a[slot[t]].T
    """
    packed = None
    if mapping.packed is not None:
        groups = mapping.packed
        xs = groups.pack(x, a.dtype)
        packed = torch.bmm(xs, groups.weights(a).transpose(1, 2))
    segments = []
    for tokens, slot in mapping.segments:
        xs = x[tokens] if isinstance(tokens, slice) else x.index_select(0, tokens)
        segments.append(xs.to(a.dtype) @ a[slot].T)
    return LoraBuffer(packed, segments)


def lora_expand(
    y: torch.Tensor, h: LoraBuffer, b: torch.Tensor, mapping: LoraMapping | Segments
) -> None:
    """Add every LoRA token's up-projection to its output row (in place; y may be a slice).

    Semantics:
        for t in range(num_tokens):
            if slot[t] >= 0:
                y[t] += h[t] @ b[slot[t]]
    """
    if mapping.packed is not None and h.packed is not None:
        groups = mapping.packed
        weights = groups.weights(b)
        if groups.dst is None and y.dtype == b.dtype:  # dense: accumulate in place
            target = y[groups.src].view(groups.num_groups, groups.group_size, -1)
            target.baddbmm_(h.packed, weights)
        else:
            groups.add_to(y, torch.bmm(h.packed, weights))
    for (tokens, slot), hs in zip(mapping.segments, h.segments, strict=True):
        out = (hs @ b[slot]).to(y.dtype)
        if isinstance(tokens, slice):
            y[tokens] += out
        else:
            y.index_add_(0, tokens, out)
