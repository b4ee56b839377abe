"""Sampling: greedy, temperature, top-k, top-p, per-request seeds, logprobs."""

from __future__ import annotations

import torch

from lmaas.engine.sampler import Sampler, SamplingRow

VOCAB = 50


def logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_takes_the_argmax() -> None:
    x = logits(4)
    out = Sampler()(x, [SamplingRow(temperature=0)] * 4)
    assert out.token_ids == x.argmax(-1).tolist() and out.logprobs is None


def test_top_k_one_is_greedy_even_when_hot() -> None:
    x = logits(3)
    out = Sampler()(x, [SamplingRow(temperature=2.0, top_k=1)] * 3)
    assert out.token_ids == x.argmax(-1).tolist()


def test_top_k_and_top_p_keep_samples_inside_the_allowed_set() -> None:
    x = logits(1)[0]
    sampler = Sampler()
    top5 = set(x.topk(5).indices.tolist())
    probs = torch.softmax(x, -1)
    order = probs.argsort(descending=True)
    mass_before = probs[order].cumsum(0) - probs[order]
    nucleus = set(order[mass_before <= 0.6].tolist())  # ranked tokens whose prefix mass ≤ p
    for _ in range(200):
        assert sampler(x[None], [SamplingRow(top_k=5)]).token_ids[0] in top5
        assert sampler(x[None], [SamplingRow(top_p=0.6)]).token_ids[0] in nucleus


def test_sampling_follows_the_distribution() -> None:
    x = torch.tensor([[0.0, 1.0, 2.0]])
    gen = torch.Generator().manual_seed(1)
    sampler = Sampler()
    counts = torch.zeros(3)
    for _ in range(3000):
        counts[sampler(x, [SamplingRow(generator=gen)]).token_ids[0]] += 1
    expected = torch.softmax(x[0], -1) * 3000
    assert ((counts - expected).abs() / expected).max() < 0.12


def test_a_seed_reproduces_regardless_of_the_batch() -> None:
    x = logits(5, seed=2)
    sampler = Sampler()

    def run(rows_before: int) -> list[int]:
        gen = torch.Generator().manual_seed(1234)
        tokens = []
        for step in range(20):
            batch = torch.cat([logits(rows_before, seed=100 + step), x[:1]])
            others = [SamplingRow(temperature=1.0)] * rows_before
            out = sampler(batch, [*others, SamplingRow(temperature=0.9, generator=gen)])
            tokens.append(out.token_ids[-1])
        return tokens

    assert run(0) == run(3) == run(7)
    assert len(set(run(0))) > 1, "a hot sampler draws more than one token"


def test_logprobs_are_the_models_distribution() -> None:
    x = logits(2, seed=3)
    out = Sampler()(x, [SamplingRow(temperature=0, num_logprobs=3), SamplingRow(temperature=0)])
    assert out.logprobs is not None and out.top_logprobs is not None
    ref = torch.log_softmax(x, -1)
    assert abs(out.logprobs[0] - ref[0].max().item()) < 1e-6
    ids = [t for t, _ in out.top_logprobs[0]]
    assert ids == ref[0].topk(3).indices.tolist()
    assert out.top_logprobs[1] == []
