"""Per-step LoRA metadata: which slot each token uses, laid out for batched maths.

Built once per step from the token → slot list (−1 = base model only). Tokens are grouped
by slot. A slot with many tokens (a prompt chunk) is a *segment*: its tokens go through
one plain matmul with that slot's weights. The other slots' tokens are packed into a
padded (groups, tokens_per_group, features) tensor so that one batched matmul serves all
of them; the weights are a view of a contiguous range of bank slots when the used slots
are dense enough (no copy), else gathered. When the batch is ordered by slot (the step's
batch is) and every group is full, packing is a free view.

For the compiled CPU kernel (`lora.kernel`) the same tokens are laid out once more, lazily:
every slot with at most `KERNEL_MAX_GROUP` tokens is one kernel group (its tokens gathered
by index, nothing copied), and only longer prompt chunks stay segments for a matmul.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from lmaas.engine.lora.kernel import KernelPlan

__all__ = ["KERNEL_MAX_GROUP", "LoraMapping", "PackedGroups", "Segments"]

# Tokens of one slot up to which the kernel's gather-GEMV serves them (above: a matmul).
KERNEL_MAX_GROUP = 64


@dataclass
class PackedGroups:
    """Tokens of light slots packed as (num_groups, group_size): group g uses bank slot
    `weight_range.start + g` (or `weight_index[g]`)."""

    num_groups: int
    group_size: int
    src: slice | torch.Tensor
    dst: torch.Tensor | None
    weight_range: slice | None
    weight_index: torch.Tensor | None

    def weights(self, stacked: torch.Tensor) -> torch.Tensor:
        """The groups' weights from a bank tensor (slots, …): a view when a range suffices."""
        if self.weight_index is None:
            return stacked[self.weight_range]
        return stacked.index_select(0, self.weight_index)

    def pack(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(tokens, features) → (groups, group_size, features), zero-padded."""
        if self.dst is None:  # dense: src is a slice
            return x[self.src].to(dtype).view(self.num_groups, self.group_size, -1)
        rows = x[self.src] if isinstance(self.src, slice) else x.index_select(0, self.src)
        packed = x.new_zeros(self.num_groups * self.group_size, x.shape[-1], dtype=dtype)
        packed.index_copy_(0, self.dst, rows.to(dtype))
        return packed.view(self.num_groups, self.group_size, -1)

    def add_to(self, y: torch.Tensor, packed: torch.Tensor) -> None:
        """y[token] += packed[its place] for every packed token (y may be a column slice)."""
        if self.dst is None:  # dense: src is a slice
            target = y[self.src]
            target += packed.view(target.shape).to(y.dtype)
            return
        rows = packed.reshape(-1, packed.shape[-1]).index_select(0, self.dst).to(y.dtype)
        if isinstance(self.src, slice):
            y[self.src] += rows
        else:
            y.index_add_(0, self.src, rows)


@dataclass
class Segments:
    """Only the long per-slot runs of a step (what the kernel leaves to `lora.ops`)."""

    segments: list[tuple[slice | torch.Tensor, int]]
    packed: PackedGroups | None = field(default=None, init=False)


class LoraMapping:
    """Token → slot for one step, grouped for `lora.ops` (and, lazily, for the kernel)."""

    def __init__(
        self,
        token_slots: list[int],
        *,
        device: torch.device | str = "cpu",
        segment_threshold: int = 8,
        max_range_waste: float = 2.0,
    ) -> None:
        self.num_tokens = len(token_slots)
        self.token_slots = torch.tensor(token_slots, dtype=torch.long, device=device)
        by_slot: dict[int, list[int]] = {}
        for token, slot in enumerate(token_slots):
            if slot >= 0:
                by_slot.setdefault(slot, []).append(token)
        self.is_active = bool(by_slot)
        self._device = device
        self._by_slot = by_slot
        self._kernel: tuple[KernelPlan, Segments] | None = None
        self._segment_threshold = segment_threshold
        self._max_range_waste = max_range_waste

    # The torch path's layout is built on first use only: a step the kernel serves never
    # needs it.
    @cached_property
    def segments(self) -> list[tuple[slice | torch.Tensor, int]]:
        return [
            (_index(tokens, self._device), slot)
            for slot, tokens in sorted(self._by_slot.items())
            if len(tokens) > self._segment_threshold
        ]

    @cached_property
    def packed(self) -> PackedGroups | None:
        light = {s: t for s, t in self._by_slot.items() if len(t) <= self._segment_threshold}
        return _pack(light, self._device, self._max_range_waste) if light else None

    def kernel_split(self) -> tuple[KernelPlan, Segments]:
        """(the kernel's groups, the segments left to a matmul), built once per step."""
        if self._kernel is None:
            slots = sorted(self._by_slot.items())
            plan = KernelPlan(
                [(s, t) for s, t in slots if len(t) <= KERNEL_MAX_GROUP], torch.get_num_threads()
            )
            rest = [(_index(t, self._device), s) for s, t in slots if len(t) > KERNEL_MAX_GROUP]
            self._kernel = plan, Segments(rest)
        return self._kernel


def _index(tokens: list[int], device: torch.device | str) -> slice | torch.Tensor:
    if tokens[-1] - tokens[0] + 1 == len(tokens):
        return slice(tokens[0], tokens[-1] + 1)
    return torch.tensor(tokens, dtype=torch.long, device=device)


def _pack(
    light: dict[int, list[int]], device: torch.device | str, max_range_waste: float
) -> PackedGroups:
    used = sorted(light)
    group_size = max(len(t) for t in light.values())
    lo, hi = used[0], used[-1]
    if hi - lo + 1 <= max_range_waste * len(used):
        group_slots = list(range(lo, hi + 1))
        weight_range, weight_index = slice(lo, hi + 1), None
    else:
        group_slots = used
        weight_range = None
        weight_index = torch.tensor(used, dtype=torch.long, device=device)
    src: list[int] = []
    dst: list[int] = []
    for g, slot in enumerate(group_slots):
        for j, token in enumerate(light.get(slot, [])):
            src.append(token)
            dst.append(g * group_size + j)
    dense = src == list(range(src[0], src[0] + len(src))) and dst == list(range(len(dst)))
    dense = dense and len(dst) == len(group_slots) * group_size
    return PackedGroups(
        num_groups=len(group_slots),
        group_size=group_size,
        src=slice(src[0], src[0] + len(src)) if dense else _index_any(src, device),
        dst=None if dense else torch.tensor(dst, dtype=torch.long, device=device),
        weight_range=weight_range,
        weight_index=weight_index,
    )


def _index_any(tokens: list[int], device: torch.device | str) -> slice | torch.Tensor:
    if tokens == list(range(tokens[0], tokens[0] + len(tokens))):
        return slice(tokens[0], tokens[0] + len(tokens))
    return torch.tensor(tokens, dtype=torch.long, device=device)
