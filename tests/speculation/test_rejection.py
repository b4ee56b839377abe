"""Verification: greedy is plain greedy decoding; sampling follows the target distribution."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from lmaas.engine.speculation.rejection import (
    pad_proposals,
    verify,
    verify_greedy,
    verify_sampled,
)
from lmaas.engine.speculation.sampling import sample_from, sampling_probs

V = 5


def _chain(seed: int, sharpness: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(V, V, generator=g, dtype=torch.float64) * sharpness).softmax(-1)


P = _chain(0, 1.0)  # the target: a Markov chain over V tokens
Q = _chain(1, 1.5)  # the draft: a different chain


def _speculate_pairs(
    num: int, ks: torch.Tensor, *, point_mass: bool, seed: int, start: int = 0
) -> torch.Tensor:
    """Run `num` independent requests from token `start` until each has 2 new tokens.

    Request b proposes ks[b] tokens per step from the draft chain Q (or, with
    `point_mass`, always the token after the current one, deterministically), and the
    target chain P verifies. Returns the first two new tokens of each request (num, 2).
    """
    torch.manual_seed(seed)
    out = torch.full((num, 2), -1, dtype=torch.long)
    have = torch.zeros(num, dtype=torch.long)
    last = torch.full((num,), start, dtype=torch.long)
    k = int(ks.max())
    gens = [
        torch.Generator().manual_seed(seed * 100_000 + b) if b % 7 == 0 else None
        for b in range(num)
    ]
    while bool((have < 2).any()):
        draft = torch.zeros((num, k), dtype=torch.long)
        q = torch.zeros((num, k, V), dtype=torch.float64)
        prev = last.clone()
        for j in range(k):
            if point_mass:
                tok = (prev + 1) % V
            else:
                q[:, j] = Q[prev]
                tok = torch.multinomial(Q[prev], 1).squeeze(1)
            draft[:, j] = tok
            prev = tok
        # Target distributions after the context and after each proposal.
        context = torch.cat([last[:, None], draft], dim=1)  # (num, k+1)
        p = P[context]  # (num, k+1, V)
        res = verify_sampled(p, draft, ks, None if point_mass else q, gens)
        for b, toks in enumerate(res.tokens()):
            for t in toks:
                if have[b] < 2:
                    out[b, have[b]] = t
                    have[b] += 1
            last[b] = toks[-1]
    return out


def _pair_counts(pairs: torch.Tensor) -> torch.Tensor:
    return torch.bincount(pairs[:, 0] * V + pairs[:, 1], minlength=V * V).double()


def _expected_pairs(start: int) -> torch.Tensor:
    return (P[start][:, None] * P).reshape(-1)


@pytest.mark.parametrize("point_mass", [False, True])
def test_sampled_outputs_follow_the_target_distribution(point_mass: bool) -> None:
    num = 30_000
    ks = torch.arange(num) % 4  # 0..3 proposals, mixed in one padded batch
    pairs = _speculate_pairs(num, ks, point_mass=point_mass, seed=3)
    observed = _pair_counts(pairs)
    expected = _expected_pairs(0) * num
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3
    # The test has power: the draft's own distribution is clearly rejected.
    wrong = (Q[0][:, None] * Q).reshape(-1) * num
    assert chisquare(observed.numpy(), wrong.numpy()).pvalue < 1e-9


def test_greedy_accepts_the_argmax_prefix_and_corrects() -> None:
    logits = torch.zeros(3, 4, 6)
    argmax = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [5, 5, 5, 5]])
    logits.scatter_(2, argmax[..., None], 1.0)
    draft, num = pad_proposals([[1, 2, 0], [1, 9 % 6, 3], [5, 5, 5]])
    out = verify_greedy(logits, draft, num)
    assert out.tokens() == [[1, 2, 3], [1, 2], [5, 5, 5, 5]]
    assert out.num_accepted.tolist() == [2, 1, 3]
    # Different k per request, padded: k = 0 is plain decoding.
    draft, num = pad_proposals([[1], [], [5, 5]], width=3)
    assert verify_greedy(logits, draft, num).tokens() == [[1, 2], [1], [5, 5, 5]]


def test_mixed_batch_verifies_greedy_rows_exactly() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 7)
    probs = sampling_probs(logits, torch.tensor([0.0, 1.0, 0.0, 0.7]))
    draft = logits.argmax(-1)[:, :2]
    num = torch.tensor([2, 2, 1, 0])
    out = verify(
        logits, draft, num, greedy=torch.tensor([True, False, True, False]), target_probs=probs
    )
    greedy = verify_greedy(logits, draft, num)
    assert out.tokens()[0] == greedy.tokens()[0]
    assert out.tokens()[2] == greedy.tokens()[2]
    with pytest.raises(ValueError, match="target_probs"):
        verify(logits, draft, num, greedy=torch.tensor([True, False, True, False]))


def test_seeded_requests_reproduce_whatever_the_batch() -> None:
    torch.manual_seed(1)
    p = torch.randn(1, 4, 9).softmax(-1)
    draft, num = pad_proposals([[3, 1, 4]])

    def run(batch_extra: int) -> list[int]:
        extra = torch.randn(batch_extra, 6, 9).softmax(-1)
        pp = torch.zeros(1 + batch_extra, 6, 9)
        pp[0, :4] = p[0]
        pp[1:] = extra
        dd = torch.zeros(1 + batch_extra, 5, dtype=torch.long)
        dd[0, :3] = draft[0]
        nn = torch.cat([num, torch.full((batch_extra,), 5)])
        gens = [torch.Generator().manual_seed(42)] + [None] * batch_extra
        return verify_sampled(pp, dd, nn, None, gens).tokens()[0]

    assert run(0) == run(3) == run(7)


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        verify_greedy(
            torch.zeros(2, 3, 5),
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, dtype=torch.long),
        )
    with pytest.raises(ValueError, match="num_proposed"):
        verify_greedy(torch.zeros(1, 3, 5), torch.zeros(1, 2, dtype=torch.long), torch.tensor([3]))


def test_sampling_probs_applies_temperature_top_k_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 4))
    probs = sampling_probs(
        logits,
        temperature=torch.tensor([1.0, 0.0, 1.0, 1.0]),
        top_k=torch.tensor([0, 0, 2, 0]),
        top_p=torch.tensor([1.0, 1.0, 1.0, 0.75]),
    )
    assert torch.allclose(probs[0], torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert probs[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert torch.allclose(probs[2], torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(probs[3], torch.tensor([0.625, 0.375, 0.0, 0.0]))
    draws = sample_from(probs[3:].expand(20_000, 4).contiguous())
    assert set(draws.tolist()) == {0, 1}
