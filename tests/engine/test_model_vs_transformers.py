"""The engine's forward pass against transformers, on tiny random models of each layout.

Tolerance: fp32 logits within 1e-4 (absolute) of transformers' at every sampled position,
through chunked prefill, mixed prefill/decode steps, padded decode groups and preemption.
"""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import (
    LAYOUTS,
    cache_bytes,
    load_peft_reference,
    make_engine,
    reference_logits,
)

TOLERANCE = 1e-4


def _prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = [3, 17, 9, 1, 30, 5, 12, 22][:n]
    return [torch.randint(0, vocab - 7, (k,), generator=gen).tolist() for k in lengths]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_logits_match_transformers_step_by_step(tiny_models, layout, device) -> None:
    """Drive scheduler and runner directly and compare every sampled row's logits."""
    from lmaas.engine.sequence import Sequence

    folder = tiny_models(layout)
    engine = make_engine(
        folder, device, max_batched_tokens=24, kv_cache_bytes=cache_bytes(folder, 20)
    )
    reference = load_peft_reference(folder, {}, device)
    vocab = engine.runner.model_config.vocab_size
    seqs = [Sequence(i, p, max_tokens=6, block_size=4) for i, p in enumerate(_prompts(6, vocab))]
    for seq in seqs:
        engine.scheduler.add(seq)
    checked = preempted = 0
    while engine.scheduler.has_work():
        batch = engine.scheduler.schedule()
        preempted += len(batch.preempted)
        fb, logits = engine.runner.forward(batch.seqs)
        for item, offset in zip(fb.items, fb.logits_offsets, strict=True):
            tokens: list[int] = []
            if item.num_logits:
                ref = reference_logits(reference, item.seq.token_ids, None, device)
                diff = (logits[offset] - ref).abs().max().item()
                assert diff < TOLERANCE, f"seq {item.seq.seq_id} at {item.seq.num_tokens}: {diff}"
                checked += 1
                tokens = [int(ref.argmax())]
            engine.scheduler.advance(item, tokens)
            if item.seq.num_output_tokens >= item.seq.max_tokens:
                engine.scheduler.finish(item.seq, "length")
    assert checked >= 6 * 6
    assert preempted > 0, "the cache was sized to force preemption"


def test_logits_of_several_positions_per_sequence(tiny_models, device) -> None:
    """Draft-style steps: one sequence contributes several query tokens, all with logits."""
    from lmaas.engine.sequence import Sequence

    folder = tiny_models("llama-tied")
    engine = make_engine(folder, device)
    reference = load_peft_reference(folder, {}, device)
    prompts = _prompts(3, engine.runner.model_config.vocab_size, seed=3)
    seqs = [Sequence(i, p, max_tokens=8, block_size=4) for i, p in enumerate(prompts)]
    for seq in seqs:
        engine.scheduler.add(seq)
    batch = engine.scheduler.schedule()
    _, logits = engine.runner.forward(batch.seqs)
    for item in batch.seqs:
        engine.scheduler.advance(item, [5])
    drafts = {0: [7, 8, 9], 1: [10], 2: []}
    for seq in seqs:
        seq.draft_token_ids = drafts[seq.seq_id]
    batch = engine.scheduler.schedule()
    fb, logits = engine.runner.forward(batch.seqs)
    for item, offset in zip(fb.items, fb.logits_offsets, strict=True):
        seq = item.seq
        assert item.num_logits == 1 + len(seq.draft_token_ids)
        full = seq.token_ids + seq.draft_token_ids
        for j in range(item.num_logits):
            upto = len(seq.token_ids) + j
            ref = reference_logits(reference, full[:upto], None, device)
            assert (logits[offset + j] - ref).abs().max().item() < TOLERANCE
