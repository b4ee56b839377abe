"""Proposers (prompt lookup, draft model) and exact speculative decoding on a tiny Llama."""

from __future__ import annotations

import random

import pytest
import torch

from lmaas.engine.speculation.prompt_lookup import (
    NgramIndex,
    PromptLookupProposer,
    ngram_propose,
    ngram_propose_batch,
)
from lmaas.engine.speculation.proposer import (
    DraftModelProposer,
    HFDraftBackend,
    Proposer,
    SpecSequence,
)
from tests.speculation.reference_loop import plain_decode, speculative_decode, tiny_llama

# --- prompt lookup ------------------------------------------------------------------------


def _brute_force(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    length = len(tokens)
    for n in range(max_n, min_n - 1, -1):
        if length <= n:
            continue
        pattern = tokens[length - n :]
        for j in range(length - n - 1, -1, -1):
            if tokens[j : j + n] == pattern:
                out: list[int] = []
                for i in range(k):
                    idx = j + n + i
                    out.append(tokens[idx] if idx < length else out[idx - length])
                return out
    return []


def test_prompt_lookup_longest_most_recent_match() -> None:
    text = [5, 6, 7, 8, 1, 2, 3, 9, 9, 5, 6, 7, 4, 4, 1, 2, 3]
    # "1 2 3" occurred before, followed by 9 9 5 6.
    assert ngram_propose(text, 4, max_n=3) == [9, 9, 5, 6]
    # Nothing to match: no proposal.
    assert ngram_propose([1, 2, 3, 4], 3) == []
    # A loop is proposed whole, past the end of the text.
    assert ngram_propose([7, 1, 2, 1, 2], 5, max_n=2) == [1, 2, 1, 2, 1]
    # min_n bounds the shortest pattern.
    assert ngram_propose([1, 5, 2, 3, 1], 2, min_n=2) == []
    assert ngram_propose([1, 5, 2, 3, 1], 2, min_n=1) == [5, 2]


def test_batch_index_and_brute_force_agree() -> None:
    rng = random.Random(0)
    seqs = [[rng.randint(0, 6) for _ in range(rng.randint(0, 60))] for _ in range(200)]
    ks = [rng.randint(0, 6) for _ in seqs]
    batch = ngram_propose_batch(seqs, ks, min_n=1, max_n=3)
    for seq, k, got in zip(seqs, ks, batch, strict=True):
        want = _brute_force(seq, k, 1, 3) if k else []
        assert got == want
        assert NgramIndex(seq, min_n=1, max_n=3).propose(k) == want


def test_prompt_lookup_proposer_follows_growing_and_restarted_sequences() -> None:
    proposer = PromptLookupProposer(max_n=3)
    assert isinstance(proposer, Proposer)
    rng = random.Random(1)
    tokens = [rng.randint(0, 4) for _ in range(10)]
    for _ in range(30):
        got = proposer.propose([SpecSequence("a", tokens)], [4]).token_ids[0]
        assert got == _brute_force(tokens, 4, 1, 3)
        tokens = tokens + [rng.randint(0, 4) for _ in range(rng.randint(1, 3))]
    tokens = [*tokens[:5], 9, 9]  # preempted and recomputed differently
    assert proposer.propose([SpecSequence("a", tokens)], [2]).token_ids[0] == [9, 9]
    proposer.release("a")


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="min_n"):
        ngram_propose([1, 2], 2, min_n=3, max_n=2)
    with pytest.raises(ValueError, match="values of k"):
        ngram_propose_batch([[1, 2]], [1, 2])


# --- draft model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target():
    return tiny_llama(0)


@pytest.fixture(scope="module")
def draft(target):
    """A perturbed copy of the target: agrees often, not always."""
    model = tiny_llama(0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * p.std() * 0.1)
    return model


def test_draft_proposer_matches_the_drafts_own_greedy_decoding(draft) -> None:
    proposer = DraftModelProposer(HFDraftBackend(draft))
    prompt = [3, 14, 15, 92, 65]
    want = plain_decode(draft, prompt, 6)
    got = proposer.propose([SpecSequence("s", prompt)], [6]).token_ids[0]
    assert got == want
    # The sequence moves on with 2 of them accepted and a correction: the cache rolls back.
    seq = prompt + want[:2] + [7]
    assert proposer.propose([SpecSequence("s", seq)], [3]).token_ids[0] == plain_decode(
        draft, seq, 3
    )


def test_draft_proposer_batches_sequences_with_different_k(draft) -> None:
    proposer = DraftModelProposer(HFDraftBackend(draft))
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5], [4]]
    out = proposer.propose([SpecSequence(i, p) for i, p in enumerate(prompts)], [2, 0, 4])
    assert out.token_ids == [
        plain_decode(draft, prompts[0], 2),
        [],
        plain_decode(draft, prompts[2], 4),
    ]
    assert out.probs is None  # greedy requests carry no distribution
    sampled = proposer.propose(
        [SpecSequence(7, [1, 2], temperature=0.8, generator=torch.Generator().manual_seed(0))], [3]
    )
    q = sampled.probs[0]
    assert q.shape == (3, draft.config.vocab_size)
    assert torch.allclose(q.sum(-1), torch.ones(3, dtype=q.dtype))
    assert all(float(q[j, t]) > 0 for j, t in enumerate(sampled.token_ids[0]))


@pytest.mark.parametrize("proposer_kind", ["draft", "ngram"])
def test_greedy_speculation_equals_plain_greedy_decoding(target, draft, proposer_kind: str) -> None:
    rng = random.Random(2)
    for trial in range(2):
        proposer = (
            DraftModelProposer(HFDraftBackend(draft))
            if proposer_kind == "draft"
            else PromptLookupProposer(max_n=3)
        )
        prompt = [rng.randint(0, 127) for _ in range(rng.randint(1, 12))]
        want = plain_decode(target, prompt, 30)
        run = speculative_decode(target, proposer, prompt, 30, lambda step: rng.randint(0, 5))
        assert run.tokens == want, f"trial {trial}"
        assert run.proposed > 0
        if proposer_kind == "draft":
            assert 0 < run.accepted < run.proposed  # a real mix of accepts and rejections


def test_sampled_speculation_with_a_seed_is_reproducible(target, draft) -> None:
    def once() -> list[int]:
        g = torch.Generator().manual_seed(11)
        proposer = DraftModelProposer(HFDraftBackend(draft))
        return speculative_decode(
            target, proposer, [1, 2, 3], 20, lambda s: 3, temperature=0.9, generator=g
        ).tokens

    assert once() == once()
