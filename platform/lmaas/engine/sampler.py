"""Choosing next tokens from logits: greedy, temperature, top-k, top-p, seeds, logprobs.

One call serves the whole batch. Greedy rows take the argmax. Sampled rows are scaled by
their temperature, cut to their top-k and top-p, and drawn with the exponential-race trick
(argmax of p / E with E ~ Exp(1)), which needs one vector of noise per row: a request with a
seed draws its noise from its own `torch.Generator`, so its output does not depend on what
else is in the batch. Log-probabilities are those of the model's distribution (before
temperature and truncation), as OpenAI reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Sampler", "SamplerOutput", "SamplingRow"]


@dataclass
class SamplingRow:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    generator: torch.Generator | None = None
    num_logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float] | None  # of the chosen token, per row (None when no row asked)
    top_logprobs: list[list[tuple[int, float]]] | None


class Sampler:
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        """Sample one token per row of `logits` (rows, vocab), fp32."""
        n, vocab = logits.shape
        if n != len(rows):
            raise ValueError(f"{n} logit rows for {len(rows)} sampling rows")
        chosen = torch.empty(n, dtype=torch.long, device=logits.device)
        greedy = [i for i, r in enumerate(rows) if r.greedy]
        sampled = [i for i, r in enumerate(rows) if not r.greedy]
        if greedy:
            if len(greedy) == n:
                chosen = logits.argmax(dim=-1)
            else:
                index = torch.tensor(greedy, device=logits.device)
                chosen[index] = logits.index_select(0, index).argmax(dim=-1)
        if sampled:
            index = torch.tensor(sampled, device=logits.device)
            chosen[index] = self._sample(logits.index_select(0, index), [rows[i] for i in sampled])
        token_ids = chosen.tolist()
        if not any(r.num_logprobs is not None for r in rows):
            return SamplerOutput(token_ids, None, None)
        logprobs = torch.log_softmax(logits, dim=-1)
        picked = logprobs.gather(1, chosen[:, None])[:, 0].tolist()
        k = max(r.num_logprobs or 0 for r in rows)
        tops: list[list[tuple[int, float]]] = [[] for _ in rows]
        if k:
            values, ids = logprobs.topk(min(k, vocab), dim=-1)
            values_l, ids_l = values.tolist(), ids.tolist()
            for i, r in enumerate(rows):
                m = r.num_logprobs or 0
                tops[i] = list(zip(ids_l[i][:m], values_l[i][:m], strict=True))
        return SamplerOutput(token_ids, picked, tops)

    @staticmethod
    def _sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        device = logits.device
        temps = torch.tensor([r.temperature for r in rows], device=device)
        logits = logits / temps[:, None]
        top_k = [r.top_k for r in rows]
        top_p = [r.top_p for r in rows]
        if any(0 < k < logits.shape[-1] for k in top_k) or any(p < 1.0 for p in top_p):
            logits = _truncate(logits, top_k, top_p)
        probs = torch.softmax(logits, dim=-1)
        noise = torch.empty_like(probs)
        shared = [i for i, r in enumerate(rows) if r.generator is None]
        if shared:
            noise[shared] = torch.empty(len(shared), probs.shape[-1], device=device).exponential_()
        for i, r in enumerate(rows):
            if r.generator is not None:
                noise[i].exponential_(generator=r.generator)
        return (probs / noise).argmax(dim=-1)


def _truncate(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask (−inf) what falls outside each row's top-k and top-p."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    positions = torch.arange(vocab, device=logits.device)[None, :]
    ks = torch.tensor([k if 0 < k < vocab else vocab for k in top_k], device=logits.device)
    drop = positions >= ks[:, None]
    ps = torch.tensor(top_p, device=logits.device, dtype=logits.dtype)
    if bool((ps < 1.0).any()):
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
        drop |= before > ps[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
