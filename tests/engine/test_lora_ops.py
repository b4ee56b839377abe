"""The batched shrink/expand against the reference loops of their "Semantics:" docstrings."""

from __future__ import annotations

import random

import pytest
import torch

from lmaas.engine.lora.mapping import LoraMapping
from lmaas.engine.lora.ops import lora_expand, lora_shrink

SLOTS, RANK, IN, OUT = 6, 8, 24, 40


def reference_shrink(x, a, slots):
    h = torch.zeros(x.shape[0], a.shape[1], dtype=a.dtype)
    for t, s in enumerate(slots):
        if s >= 0:
            h[t] = x[t].to(a.dtype) @ a[s].T
    return h


def reference_expand(y, h, b, slots):
    y = y.clone()
    for t, s in enumerate(slots):
        if s >= 0:
            y[t] += (h[t] @ b[s]).to(y.dtype)
    return y


def per_token(buffer, mapping: LoraMapping, rank: int) -> torch.Tensor:
    """Expand with identity B to read the shrink result back per token."""
    eye = torch.eye(rank).expand(SLOTS, rank, rank).contiguous()
    out = torch.zeros(mapping.num_tokens, rank)
    lora_expand(out, buffer, eye, mapping)
    return out


CASES = {
    "decode, one adapter each, dense": [0, 1, 2, 3, 4, 5],
    "decode, sorted pairs": [1, 1, 2, 2, 3, 3],
    "uneven groups with base tokens": [2, 2, 2, 4, -1, 5, -1],
    "sparse slots (gathered weights)": [0, 5, 5],
    "long segment + decodes": [3] * 20 + [0, 1, -1, 1],
    "unsorted, segment split": [1, 4, 1, 4, 1] + [2] * 12 + [1] * 9,
    "all base": [-1, -1, -1],
}


@pytest.mark.parametrize("slots", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shrink_and_expand_match_the_reference_loops(slots, dtype) -> None:
    gen = torch.Generator().manual_seed(len(slots))
    x = torch.randn(len(slots), IN, generator=gen).to(dtype)
    a = torch.randn(SLOTS, RANK, IN, generator=gen)
    b = torch.randn(SLOTS, RANK, OUT, generator=gen)
    y = torch.randn(len(slots), OUT, generator=gen).to(dtype)
    mapping = LoraMapping(slots)
    if not mapping.is_active:
        return
    h = lora_shrink(x, a, mapping)
    torch.testing.assert_close(per_token(h, mapping, RANK), reference_shrink(x, a, slots))
    out = y.clone()
    lora_expand(out, h, b, mapping)
    expected = reference_expand(y, reference_shrink(x, a, slots), b, slots)
    tol = 1e-4 if dtype is torch.float32 else 0.1
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


def test_expand_into_a_column_slice_of_a_fused_output() -> None:
    slots = [0, 0, 3, -1]
    x = torch.randn(4, IN)
    a = torch.randn(SLOTS, RANK, IN)
    b = torch.randn(SLOTS, RANK, OUT)
    fused = torch.zeros(4, 10 + OUT + 5)
    mapping = LoraMapping(slots)
    lora_expand(fused[:, 10 : 10 + OUT], lora_shrink(x, a, mapping), b, mapping)
    expected = reference_expand(torch.zeros(4, OUT), reference_shrink(x, a, slots), b, slots)
    torch.testing.assert_close(fused[:, 10 : 10 + OUT], expected)
    assert fused[:, :10].abs().sum() == 0 and fused[:, 10 + OUT :].abs().sum() == 0


def test_random_mappings() -> None:
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 40)
        slots = [rng.choice([-1, *range(SLOTS)]) for _ in range(n)]
        if rng.random() < 0.5:
            slots.sort()
        x = torch.randn(n, IN)
        a, b = torch.randn(SLOTS, RANK, IN), torch.randn(SLOTS, RANK, OUT)
        mapping = LoraMapping(slots, segment_threshold=rng.randint(1, 10))
        if not mapping.is_active:
            continue
        out = torch.zeros(n, OUT)
        lora_expand(out, lora_shrink(x, a, mapping), b, mapping)
        expected = reference_expand(torch.zeros(n, OUT), reference_shrink(x, a, slots), b, slots)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_dense_decode_layout_needs_no_copies() -> None:
    mapping = LoraMapping([0, 1, 2, 3, -1])
    packed = mapping.packed
    assert packed is not None and packed.dst is None and packed.src == slice(0, 4)
    assert packed.weight_range == slice(0, 4) and not mapping.segments
