"""QFT numerics: int8 storage error bounds, outliers, stochastic rounding, Lion vs fp32 Lion."""

from __future__ import annotations

import pytest
import torch

from lmaas.finetune.qft import BlockInt8, QFTLion, QuantWeight, lion_reference, stochastic_round
from lmaas.finetune.qft.kernels import hash_uniforms, mix_key
from lmaas.finetune.qft.lion import DenseGrad
from lmaas.finetune.qft.quant import pick_block_size


def heavy_tailed(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    spikes = torch.rand(rows, cols, generator=g) < 0.005
    return torch.where(spikes, w * 40, w)


def lion_steps(weight: QuantWeight, grads: list[torch.Tensor], **kw) -> QFTLion:  # type: ignore[no-untyped-def]
    opt = QFTLion({"w": weight}, lr=kw.pop("lr"), **kw)
    for g in grads:
        opt.begin_step()
        opt.note_use(weight)
        opt.receive_grad(weight, DenseGrad(g))
        opt.end_step()
    return opt


def test_block_size_divides_rows() -> None:
    assert pick_block_size(576, 64) == 64
    assert pick_block_size(576, 128) == 96  # largest divisor of 576 not above 128
    assert pick_block_size(100, 64) == 50
    assert pick_block_size(13, 64) == 13  # prime: one block per row


def test_round_to_nearest_error_is_at_most_half_a_quantum() -> None:
    x = torch.randn(48, 192) * torch.logspace(-4, 0, 48)[:, None]  # rows of very different size
    q = BlockInt8.quantize(x, 64)
    quantum = (x.view(48, 3, 64).abs().amax(-1) / 127).repeat_interleave(64, dim=1)
    err = (q.dequantize() - x).abs()
    assert (err <= quantum / 2 + 1e-7 * x.abs()).all()
    assert q.nbytes == 48 * 192 + 48 * 3 * 4  # int8 + one fp32 scale per 64 entries


def test_outliers_are_kept_exactly_and_shrink_the_dense_error() -> None:
    w = heavy_tailed(64, 256)
    qw = QuantWeight.from_float(w, outlier_fraction=0.01, block_size=64)
    plain = QuantWeight.from_float(w, outlier_fraction=0.0, block_size=64)
    k = round(0.01 * w.numel())
    top = w.abs().view(-1).topk(k).indices
    out = qw.dequantize()
    assert torch.equal(out.view(-1)[top], w.view(-1)[top])  # outliers preserved bit for bit
    assert qw.outlier_idx.numel() == k and qw.outlier_idx.dtype == torch.int32
    assert (out - w).norm() < 0.5 * (plain.dequantize() - w).norm()
    # ≈ 1 byte + scales (4/64) + 1% × (4-byte index + 4-byte value) per weight
    assert qw.nbytes / w.numel() == pytest.approx(1 + 4 / 64 + 0.08, abs=0.01)


def test_stochastic_rounding_is_unbiased_and_exact_on_integers() -> None:
    x = torch.full((200_000,), 2.3)
    r = stochastic_round(x, key=mix_key(1, 2))
    assert set(r.unique().tolist()) == {2.0, 3.0}
    assert float(r.mean()) == pytest.approx(2.3, abs=0.005)
    # one element over many keys (steps): unbiased in time too
    one = torch.tensor([-0.04])
    draws = torch.stack([stochastic_round(one, key=mix_key(7, s)) for s in range(4000)])
    assert float(draws.mean()) == pytest.approx(-0.04, abs=0.01)
    ints = torch.arange(-5.0, 6.0)
    assert torch.equal(stochastic_round(ints, key=3), ints)
    assert torch.equal(
        stochastic_round(torch.tensor([0.49, 0.51]), key=None), torch.tensor([0.0, 1.0])
    )


def test_hash_noise_is_uniform_and_streams_independent() -> None:
    index = torch.arange(1_000_000)
    low, high = hash_uniforms(index, torch.tensor(mix_key(0, 1)))
    other, _ = hash_uniforms(index, torch.tensor(mix_key(0, 2)))
    for u in (low, high):
        assert float(u.mean()) == pytest.approx(0.5, abs=0.002)
        assert float(u.var()) == pytest.approx(1 / 12, abs=0.001)
        assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    for a, b in ((low, high), (low, other), (low[1:], low[:-1])):
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.005


def test_tiny_lion_steps_survive_int8_storage() -> None:
    """Trap 1: a step of 0.04 quantum is lost by round-to-nearest, kept by stochastic rounding."""
    w = torch.randn(32, 128) * 0.05
    qw = QuantWeight.from_float(w, outlier_fraction=0.0, block_size=64)
    start = qw.dequantize()
    lr = 0.04 * float(qw.dense.scale.mean())
    lion_steps(qw, [torch.ones_like(w)] * 100, lr=lr)
    moved = qw.dequantize() - start
    assert float(moved.mean()) == pytest.approx(-100 * lr, rel=0.1)
    # the same steps with round-to-nearest never leave the grid point
    q = qw.dense.data.float()
    assert torch.equal(torch.round(q - 0.04), q)


def test_blockwise_scales_keep_small_gradients_alive() -> None:
    """Trap 2: one scale per tensor rounds most small-row entries to zero; blocks do not."""
    g = torch.randn(64, 256) * torch.logspace(-4, 0, 64)[:, None]
    blocked = BlockInt8.quantize(g, 64).data
    per_tensor = torch.round(g / (g.abs().max() / 127))
    assert float((blocked != 0).float().mean()) > 0.95
    assert float((per_tensor != 0).float().mean()) < 0.5


def test_lion_matches_fp32_lion_up_to_quantization_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    w = heavy_tailed(64, 128, seed=1)
    qw = QuantWeight.from_float(w, outlier_fraction=0.01, block_size=64)
    start = qw.dequantize()
    base = torch.randn(64, 128, generator=gen)
    grads = [base + 0.7 * torch.randn(64, 128, generator=gen) for _ in range(30)]
    lr = 3.0 * float(qw.dense.scale.mean())  # stochastic rounding noise: ~√30/2 quanta
    lion_steps(qw, grads, lr=lr, weight_decay=0.1)
    ref, m = start.clone(), torch.zeros_like(start)
    for g in grads:
        lion_reference(ref, g, m, lr=lr, weight_decay=0.1)
    got, want = qw.dequantize() - start, ref - start
    assert float((got - want).norm() / want.norm()) < 0.1
    assert float((got - want).mean().abs()) < 0.02 * float(want.abs().mean())  # unbiased
    # the fp32 outliers follow the reference exactly, up to momentum rounding flipping a sign
    idx = qw.outlier_idx.long()
    assert float((got.view(-1)[idx] - want.view(-1)[idx]).abs().max()) <= 2 * lr * 1.01


def test_first_step_moves_every_weight_against_the_gradient_sign() -> None:
    w = torch.randn(16, 64) * 0.05
    qw = QuantWeight.from_float(w, outlier_fraction=0.02, block_size=64)
    start = qw.dequantize()
    g = torch.randn(16, 64)
    lr = 2.0 * float(qw.dense.scale.max())  # two quanta or more everywhere
    lion_steps(qw, [g], lr=lr)
    moved = qw.dequantize() - start
    assert torch.equal(torch.sign(moved), -torch.sign(g))
    idx = qw.outlier_idx.long()
    torch.testing.assert_close(moved.view(-1)[idx], -lr * torch.sign(g.view(-1)[idx]))


def test_momentum_and_state_bytes_are_int8() -> None:
    qw = QuantWeight.from_float(torch.randn(128, 256) * 0.02, outlier_fraction=0.01)
    opt = lion_steps(qw, [torch.randn(128, 256)], lr=1e-3)
    m = opt.momentum["w"]
    assert m.data.dtype == torch.int8 and m.scale.shape == (128, 4)
    assert (m.data != 0).float().mean() > 0.9
    sizes = opt.state_bytes()
    per_param = (sizes["weights"] + sizes["optimizer"] + sizes["gradients"]) / qw.numel
    assert per_param < 2.3  # int8 weight + int8 momentum + scales + 1% outliers; no grad store


def test_momentum_is_blockwise_with_fresh_scales() -> None:
    qw = QuantWeight.from_float(torch.randn(4, 128) * 0.02, outlier_fraction=0.0)
    g = torch.randn(4, 128) * torch.tensor([[1e-4], [1e-2], [1.0], [10.0]])
    opt = lion_steps(qw, [g], lr=1e-3)
    momentum = opt.momentum["w"].dequantize()
    want = 0.01 * g  # (1 − β2)·g after one step from zero
    quantum = (want.view(4, 2, 64).abs().amax(-1) / 127).repeat_interleave(64, dim=1)
    assert ((momentum - want).abs() <= quantum * 1.0001).all()  # at most one quantum off
    assert (momentum[0] != 0).float().mean() > 0.9  # a tiny row keeps its own scale
