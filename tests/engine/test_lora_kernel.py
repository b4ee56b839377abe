"""The compiled CPU LoRA kernel (through `LoraLinear`) against the reference loop of the
`lora.ops` docstrings: y[t] += (x[t] · A[slot]ᵀ) · B[slot] per part, for every token whose
slot is not −1 — with adapters of different ranks in one bank, base-only tokens, unsorted
slots, decode groups and long prompt chunks in one step, float32 and bfloat16."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from lmaas.engine.lora import kernel
from lmaas.engine.lora.adapter import LoraAdapter
from lmaas.engine.lora.bank import LoraBank
from lmaas.engine.lora.layers import LoraLinear
from lmaas.engine.lora.mapping import KERNEL_MAX_GROUP, LoraMapping
from lmaas.engine.model.layers import Linear

IN = 96
PARTS = [("q_proj", 128), ("k_proj", 40), ("v_proj", 72)]  # fused, sizes not multiples of 64
RANKS = [16, 8, 4, 3, 16]  # one slot per adapter; the bank's rank is 16

pytestmark = pytest.mark.skipif(kernel.load() is None, reason="no C++ compiler for the kernel")


def make_layer(dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    base = Linear(IN, PARTS, bias=False, dtype=dtype, device=torch.device("cpu"))
    base.weight.copy_(torch.randn(base.weight.shape, generator=gen) * 0.1)
    bank = LoraBank(len(RANKS) + 1, dtype=dtype, device=torch.device("cpu"))
    layer = LoraLinear(base, bank.register(0, [(name, IN, size) for name, size in PARTS]))
    adapters = []
    for slot, rank in enumerate(RANKS):
        weights = {
            (0, name): (
                torch.randn(rank, IN, generator=gen).to(dtype),
                torch.randn(size, rank, generator=gen).to(dtype),
            )
            for name, size in PARTS
            if not (slot == 2 and name == "k_proj")  # an adapter without one target
        }
        adapter = LoraAdapter(f"a{slot}", rank, None, weights)
        bank.load(slot, adapter)
        adapters.append(adapter)
    return layer, adapters


def reference(x: torch.Tensor, layer: LoraLinear, adapters, slots: list[int]) -> torch.Tensor:
    y = (x.double() @ layer.base.weight.double().T).clone()
    for t, slot in enumerate(slots):
        if slot < 0 or slot >= len(adapters):  # base only, or an empty slot (zeros)
            continue
        for name, offset, size in layer.base.output_slices:
            pair = adapters[slot].weights.get((0, name))
            if pair is not None:
                a, b = pair
                y[t, offset : offset + size] += (x[t].double() @ a.double().T) @ b.double().T
    return y


def run_layer(layer, x, slots, monkeypatch, setting: str) -> torch.Tensor:
    monkeypatch.setenv("LMAAS_LORA_KERNEL", setting)
    calls = []
    real = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a: calls.append(1) or real(*a))
    y = layer(x, SimpleNamespace(lora=LoraMapping(slots)))
    used = bool(calls)
    monkeypatch.setattr(kernel, "run", real)
    return y, used


CASES = {
    "decode, one token per adapter": [0, 1, 2, 3, 4],
    "decode with base-only tokens, unsorted": [3, -1, 0, 4, -1, 1, 2, 0],
    "shared adapters (groups of several tokens)": [1, 1, 1, 4, 4, 0, 3, 3, 2, 2, 2, 2],
    "a prompt chunk (segment) with decodes": [2] * (KERNEL_MAX_GROUP + 9) + [0, -1, 4, 1],
    "two segments, interleaved": [0, 3] * (KERNEL_MAX_GROUP + 1) + [-1],
    "one long prompt of a rank-3 adapter": [3] * 70,
    "an empty slot (rank 0) and base tokens": [5, -1, 5, 1],
}


@pytest.mark.parametrize("slots", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_matches_the_reference_loop(slots, dtype, monkeypatch) -> None:
    layer, adapters = make_layer(dtype)
    x = torch.randn(len(slots), IN, generator=torch.Generator().manual_seed(len(slots))).to(dtype)
    y, used = run_layer(layer, x, slots, monkeypatch, "on")
    assert used == any(s >= 0 and slots.count(s) <= KERNEL_MAX_GROUP for s in slots)
    expected = reference(x, layer, adapters, slots)
    if dtype is torch.float32:
        torch.testing.assert_close(y.double(), expected, atol=1e-4, rtol=1e-4)
    else:  # bf16: y is rounded to bf16 (and h too on the torch path for segments)
        scale = expected.abs().max().item()
        torch.testing.assert_close(y.double(), expected, atol=0.01 * scale, rtol=0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_and_torch_paths_agree_on_random_steps(dtype, monkeypatch) -> None:
    layer, _ = make_layer(dtype, seed=1)
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 90)
        slots = [rng.choice([-1, *range(len(RANKS) + 1)]) for _ in range(n)]
        if rng.random() < 0.5:
            slots.sort()
        x = torch.randn(n, IN, generator=torch.Generator().manual_seed(n)).to(dtype)
        fast, _ = run_layer(layer, x, slots, monkeypatch, "on")
        slow, torch_used_kernel = run_layer(layer, x, slots, monkeypatch, "off")
        assert not torch_used_kernel
        tol = 1e-4 if dtype is torch.float32 else 0.01 * slow.float().abs().max().item()
        torch.testing.assert_close(fast.float(), slow.float(), atol=tol, rtol=0.02)


def test_kernel_reads_no_padding_rows(monkeypatch) -> None:
    """A slot's rows past its own rank are never read (the bank keeps them zero; here they
    are poisoned to show it)."""
    layer, adapters = make_layer(torch.float32)
    w = layer.weights
    for slot, rank in enumerate(RANKS):
        for j in range(len(PARTS)):
            w.a[slot, j * w.rank + rank : (j + 1) * w.rank] = float("nan")
            w.b[j][slot, rank:] = float("nan")
    slots = [0, 1, 2, 3, 4, 1, 1]
    x = torch.randn(len(slots), IN)
    y, used = run_layer(layer, x, slots, monkeypatch, "on")
    assert used and torch.isfinite(y).all()
    torch.testing.assert_close(
        y.double(), reference(x, layer, adapters, slots), atol=1e-4, rtol=1e-4
    )


def test_kernel_is_used_by_default_and_can_be_turned_off(monkeypatch) -> None:
    layer, _ = make_layer(torch.float32)
    x = torch.randn(3, IN)
    monkeypatch.delenv("LMAAS_LORA_KERNEL", raising=False)
    assert kernel.wanted(x, layer.weights.a)
    monkeypatch.setenv("LMAAS_LORA_KERNEL", "0")
    assert not kernel.wanted(x, layer.weights.a)
    assert not kernel.wanted(x.half(), layer.weights.a.half())  # float16: torch path


@pytest.mark.parametrize("slots", [[1] * 9, [0, 4, 4, -1, 2] * 7], ids=["one group", "many"])
def test_kernel_on_several_threads_matches_the_reference(slots, monkeypatch) -> None:
    layer, adapters = make_layer(torch.float32)
    x = torch.randn(len(slots), IN)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        y, used = run_layer(layer, x, slots, monkeypatch, "on")
    finally:
        torch.set_num_threads(before)
    assert used
    expected = reference(x, layer, adapters, slots)
    torch.testing.assert_close(y.double(), expected, atol=1e-4, rtol=1e-4)


def test_kernel_follows_the_bank_when_a_larger_adapter_grows_it(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(3)
    base = Linear(IN, PARTS, bias=False, dtype=torch.float32, device=torch.device("cpu"))
    base.weight.copy_(torch.randn(base.weight.shape, generator=gen) * 0.1)
    bank = LoraBank(2, dtype=torch.float32, device=torch.device("cpu"))
    layer = LoraLinear(base, bank.register(0, [(name, IN, size) for name, size in PARTS]))

    def adapter(name: str, rank: int) -> LoraAdapter:
        weights = {
            (0, part): (
                torch.randn(rank, IN, generator=gen),
                torch.randn(size, rank, generator=gen),
            )
            for part, size in PARTS
        }
        return LoraAdapter(name, rank, None, weights)

    small, large = adapter("small", 4), adapter("large", 24)
    bank.load(0, small)
    x = torch.randn(3, IN, generator=gen)
    run_layer(layer, x, [0, -1, 0], monkeypatch, "on")  # the kernel's arguments are cached
    bank.load(1, large)  # rank 8 → 24: every stacked tensor is reallocated
    slots = [0, 1, -1, 1]
    x = torch.randn(len(slots), IN, generator=gen)
    y, used = run_layer(layer, x, slots, monkeypatch, "on")
    assert used and bank.rank == 24
    expected = reference(x, layer, [small, large], slots)
    torch.testing.assert_close(y.double(), expected, atol=1e-4, rtol=1e-4)


def test_without_a_working_compiler_the_torch_path_serves(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setenv("LMAAS_HOME", str(tmp_path))  # an empty kernel cache
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    kernel.load.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="lmaas.engine.lora.kernel"):
            assert kernel.load() is None
        assert "torch path" in caplog.text
        layer, adapters = make_layer(torch.float32)
        slots = [0, -1, 3, 3]
        x = torch.randn(len(slots), IN)
        y, used = run_layer(layer, x, slots, monkeypatch, "on")
        assert not used
        expected = reference(x, layer, adapters, slots)
        torch.testing.assert_close(y.double(), expected, atol=1e-4, rtol=1e-4)
    finally:
        kernel.load.cache_clear()  # the next caller loads the real build again
