"""The device bank: every wrapped projection's LoRA weights, stacked by slot.

For each base projection the bank holds A of all its parts concatenated along the rank
(slots, parts·rank, in_features) — one shrink serves a fused q/k/v — and one B per part
(slots, rank, out_features) with the scaling folded in. The bank's rank is the largest
rank loaded so far; smaller adapters are zero-padded. A larger adapter grows the bank
(reallocate and copy, once). `slot_rank` holds each slot's own rank (0 = empty), so the
CPU kernel reads no padding rows.

On Linux CPUs all stacked tensors are views of one buffer backed by transparent huge pages
(madvise): a decode step with many adapters streams hundreds of MB of it, and with 4 KiB
pages every page would cost a TLB miss.
"""

from __future__ import annotations

import ctypes
import math
import sys
from dataclasses import dataclass, field

import torch

from lmaas.engine.lora.adapter import LoraAdapter

__all__ = ["LoraBank", "LoraWeights"]


@dataclass(eq=False)
class LoraWeights:
    """The stacked weights of one base projection (read by its `LoraLinear` every step)."""

    layer: int
    parts: list[tuple[str, int, int]]  # (target name, in_features, out_features)
    rank: int = 0
    a: torch.Tensor | None = None
    b: list[torch.Tensor] = field(default_factory=list)
    slot_rank: torch.Tensor | None = None  # the bank's (slots,) int64 rank per slot


class LoraBank:
    def __init__(self, num_slots: int, *, dtype: torch.dtype, device: torch.device) -> None:
        self.num_slots = num_slots
        self.dtype = dtype
        self.device = device
        self.rank = 0
        self.entries: list[LoraWeights] = []
        self.slot_adapter: list[str | None] = [None] * num_slots
        self.slot_rank = torch.zeros(num_slots, dtype=torch.int64)  # host: read by the CPU kernel

    def register(self, layer: int, parts: list[tuple[str, int, int]]) -> LoraWeights:
        entry = LoraWeights(layer=layer, parts=parts, slot_rank=self.slot_rank)
        self.entries.append(entry)
        return entry

    @property
    def num_bytes(self) -> int:
        total = 0
        for e in self.entries:
            if e.a is not None:
                total += e.a.nbytes + sum(b.nbytes for b in e.b)
        return total

    def bytes_for_rank(self, rank: int) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        per_slot = sum(rank * (i + o) for e in self.entries for _, i, o in e.parts)
        return per_slot * self.num_slots * element

    def ensure_rank(self, rank: int) -> None:
        """Grow every stacked tensor to `rank` (a multiple of 8), keeping loaded adapters."""
        if rank <= self.rank:
            return
        new = max(8, (rank + 7) // 8 * 8)
        old = self.rank
        shapes = []
        for e in self.entries:
            shapes.append((self.num_slots, len(e.parts) * new, e.parts[0][1]))
            shapes.extend((self.num_slots, new, out) for _, _, out in e.parts)
        views = iter(_zeros_views(shapes, self.dtype, torch.device(self.device)))
        for e in self.entries:
            n = len(e.parts)
            a = next(views)
            bs = [next(views) for _ in e.parts]
            if e.a is not None:
                for j in range(n):
                    a[:, j * new : j * new + old] = e.a[:, j * old : (j + 1) * old]
                    bs[j][:, :old] = e.b[j]
            e.a, e.b, e.rank = a, bs, new
        self.rank = new

    def load(self, slot: int, adapter: LoraAdapter) -> None:
        """Copy `adapter` into `slot` (zeros where it has no weights)."""
        self.ensure_rank(adapter.rank)
        r_bank = self.rank
        for e in self.entries:
            stacked_a = e.a
            if stacked_a is None:  # no entry is left without tensors by ensure_rank
                continue
            stacked_a[slot].zero_()
            for j, (target, _, _) in enumerate(e.parts):
                e.b[j][slot].zero_()
                pair = adapter.weights.get((e.layer, target))
                if pair is None:
                    continue
                a, b = pair
                r = a.shape[0]
                stacked_a[slot, j * r_bank : j * r_bank + r].copy_(a, non_blocking=True)
                e.b[j][slot, :r].copy_(b.T, non_blocking=True)
        self.slot_adapter[slot] = adapter.adapter_id
        self.slot_rank[slot] = adapter.rank

    def clear(self, slot: int) -> None:
        for e in self.entries:
            if e.a is not None:
                e.a[slot].zero_()
                for b in e.b:
                    b[slot].zero_()
        self.slot_adapter[slot] = None
        self.slot_rank[slot] = 0


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def _zeros_views(
    shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """Zeroed contiguous tensors of `shapes`, as views of one buffer (huge pages on Linux)."""
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(sizes)
    if device.type == "cpu" and sys.platform.startswith("linux") and total > 0:
        element = torch.empty((), dtype=dtype).element_size()
        raw = torch.empty(total * element + _HUGE_PAGE, dtype=torch.uint8)
        start = -raw.data_ptr() % _HUGE_PAGE
        try:  # before the first touch, so that the kernel backs it with huge pages
            libc = ctypes.CDLL(None, use_errno=True)
            length = (raw.numel() - start) // _HUGE_PAGE * _HUGE_PAGE
            libc.madvise(
                ctypes.c_void_p(raw.data_ptr() + start), ctypes.c_size_t(length), _MADV_HUGEPAGE
            )
        except (OSError, AttributeError):
            pass  # an optimisation only
        flat = raw[start : start + total * element].view(dtype).zero_()
    else:
        flat = torch.zeros(total, dtype=dtype, device=device)
    views, offset = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        views.append(flat[offset : offset + size].view(shape))
        offset += size
    return views
