"""A reference speculative-decoding loop over a transformers target, and plain decoding.

Stands where the engine's step loop will: propose, verify in one target pass, keep the
accepted prefix of the target's cache. One request at a time; enough to check exactness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from lmaas.engine.speculation.proposer import Proposer, SpecSequence
from lmaas.engine.speculation.rejection import verify_greedy, verify_sampled
from lmaas.engine.speculation.sampling import sample_from, sampling_probs


def tiny_llama(
    seed: int, *, vocab: int = 128, layers: int = 2, dtype=torch.float64
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


@dataclass
class SpecRun:
    tokens: list[int]
    proposed: int = 0
    accepted: int = 0
    steps: int = 0
    per_step: list[tuple[int, int]] = field(default_factory=list)


def _crop(cache: DynamicCache, length: int) -> None:
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)


@torch.inference_mode()
def plain_decode(
    model: LlamaForCausalLM,
    prompt: list[int],
    max_new: int,
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[int]:
    cache = DynamicCache(config=model.config)
    tokens = list(prompt)
    feed = tokens
    for _ in range(max_new):
        logits = model(input_ids=torch.tensor([feed]), cache=cache).logits[0, -1]
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            p = sampling_probs(logits[None], temperature)
            nxt = int(sample_from(p, [generator])[0])
        tokens.append(nxt)
        feed = [nxt]
    return tokens[len(prompt) :]


@torch.inference_mode()
def speculative_decode(
    target: LlamaForCausalLM,
    proposer: Proposer,
    prompt: list[int],
    max_new: int,
    choose_k: Callable[[int], int],
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> SpecRun:
    cache = DynamicCache(config=target.config)
    tokens = list(prompt)
    in_cache = 0
    run = SpecRun(tokens=[])
    while len(tokens) - len(prompt) < max_new:
        k = choose_k(run.steps)
        seq = SpecSequence(0, tokens, temperature=temperature, generator=generator)
        proposal = proposer.propose([seq], [k])
        draft = proposal.token_ids[0]
        feed = tokens[in_cache:] + draft
        logits = target(input_ids=torch.tensor([feed]), cache=cache).logits[0]
        logits = logits[-(len(draft) + 1) :][None]  # (1, K+1, V)
        d, n = (
            torch.tensor([draft], dtype=torch.long).reshape(1, len(draft)),
            torch.tensor([len(draft)]),
        )
        if temperature <= 0:
            out = verify_greedy(logits, d, n)
        else:
            p = sampling_probs(logits, temperature)
            q = proposal.draft_probs(len(draft), logits.shape[-1])
            out = verify_sampled(p, d, n, q, [generator])
        new = out.tokens()[0]
        accepted = int(out.num_accepted[0])
        run.proposed += len(draft)
        run.accepted += accepted
        run.per_step.append((len(draft), accepted))
        run.steps += 1
        tokens.extend(new)
        in_cache = len(tokens) - 1  # the last new token is not in the target's cache yet
        _crop(cache, in_cache)
    run.tokens = tokens[len(prompt) : len(prompt) + max_new]
    return run
