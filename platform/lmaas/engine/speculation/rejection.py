"""Verification of proposals: which to keep, and the one token the target adds after them.

A batch of B requests, request b having proposed `num_proposed[b]` ≤ K tokens (padded to
K), and the target's distributions at the K+1 positions (after the context, after each
proposal):

- greedy: accept proposals while each equals the target's argmax; the first mismatch is
  replaced by the argmax (the correction); if all are accepted the argmax after the last
  one is the bonus. The tokens are exactly those of plain greedy decoding.
- sampled: accept proposal x with probability min(1, p(x)/q(x)); at the first rejection
  draw from norm(max(0, p − q)); if all are accepted draw the bonus from p. The output
  then follows the target distribution p exactly, whatever q is. A proposer without a
  distribution (prompt lookup) is a point mass q = δ_x: x is accepted with probability
  p(x), and a rejection draws from p with x removed.

A request with its own `torch.Generator` (a seeded request) draws all its random numbers
from it, exactly as many as its own proposals need: given the same speculation lengths
(`off`, `fixed:K`), its output does not depend on the rest of the batch.

Semantics (the loop the batched code computes, per request b):
    for j in range(num_proposed[b]):
        if not accept(j): return proposals[:j] + [draw(residual(j))]
    return proposals + [draw(p[num_proposed[b]])]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmaas.engine.speculation.sampling import sample_from

__all__ = ["VerifyOutput", "pad_proposals", "verify", "verify_greedy", "verify_sampled"]


@dataclass
class VerifyOutput:
    """`token_ids[b, :num_accepted[b] + 1]` are request b's new tokens; the rest is -1."""

    token_ids: torch.Tensor  # (B, K+1) long
    num_accepted: torch.Tensor  # (B,) long

    @property
    def num_emitted(self) -> torch.Tensor:
        return self.num_accepted + 1

    def tokens(self) -> list[list[int]]:
        """The new tokens of each request, as lists."""
        counts = self.num_emitted.tolist()
        rows = self.token_ids.tolist()
        return [row[:n] for row, n in zip(rows, counts, strict=True)]


def pad_proposals(
    proposals: Sequence[Sequence[int]],
    *,
    width: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals of different lengths → (tokens (B, K) padded with 0, num_proposed (B,))."""
    width = max((len(p) for p in proposals), default=0) if width is None else width
    tokens = torch.zeros((len(proposals), width), dtype=torch.long)
    for b, p in enumerate(proposals):
        if len(p) > width:
            raise ValueError(f"proposal {b} has {len(p)} tokens, more than the width {width}")
        tokens[b, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    num = torch.tensor([len(p) for p in proposals], dtype=torch.long)
    return tokens.to(device), num.to(device)


def _check(target: torch.Tensor, draft_tokens: torch.Tensor, num_proposed: torch.Tensor) -> None:
    if target.dim() != 3 or draft_tokens.dim() != 2:
        raise ValueError("target must be (B, K+1, V) and draft_tokens (B, K)")
    b, k1, _ = target.shape
    if draft_tokens.shape != (b, k1 - 1) or num_proposed.shape != (b,):
        raise ValueError(
            f"shapes disagree: target {tuple(target.shape)}, draft_tokens "
            f"{tuple(draft_tokens.shape)}, num_proposed {tuple(num_proposed.shape)}"
        )
    if b and (int(num_proposed.min()) < 0 or int(num_proposed.max()) > k1 - 1):
        raise ValueError(f"num_proposed must be within 0..{k1 - 1}")


def _assemble(
    draft_tokens: torch.Tensor, num_accepted: torch.Tensor, last: torch.Tensor
) -> VerifyOutput:
    b, k = draft_tokens.shape
    positions = torch.arange(k + 1, device=draft_tokens.device)[None, :]
    out = torch.full((b, k + 1), -1, dtype=torch.long, device=draft_tokens.device)
    out[:, :k] = torch.where(positions[:, :k] < num_accepted[:, None], draft_tokens, -1)
    out.scatter_(1, num_accepted[:, None], last[:, None])
    return VerifyOutput(token_ids=out, num_accepted=num_accepted)


def _num_accepted(accept: torch.Tensor, num_proposed: torch.Tensor) -> torch.Tensor:
    k = accept.shape[1]
    valid = torch.arange(k, device=accept.device)[None, :] < num_proposed[:, None]
    return (accept & valid).long().cumprod(dim=1).sum(dim=1)


def verify_greedy(
    target_logits: torch.Tensor, draft_tokens: torch.Tensor, num_proposed: torch.Tensor
) -> VerifyOutput:
    """Greedy verification; `target_logits` (B, K+1, V) (logits or probabilities)."""
    _check(target_logits, draft_tokens, num_proposed)
    argmax = target_logits.argmax(dim=-1)  # (B, K+1)
    num_accepted = _num_accepted(draft_tokens == argmax[:, :-1], num_proposed)
    last = argmax.gather(1, num_accepted[:, None]).squeeze(1)
    return _assemble(draft_tokens, num_accepted, last)


def _uniforms(
    num_proposed: torch.Tensor,
    width: int,
    generators: Sequence[torch.Generator | None] | None,
    device: torch.device,
) -> torch.Tensor:
    """(B, width) uniforms; a seeded row draws exactly its own `num_proposed` from its generator."""
    u = torch.rand((num_proposed.shape[0], width), device=device)
    if generators is not None and any(g is not None for g in generators):
        counts = num_proposed.tolist()
        for b, g in enumerate(generators):
            if g is not None and counts[b]:
                u[b, : counts[b]] = torch.rand(counts[b], generator=g, device=device)
    return u


def verify_sampled(
    target_probs: torch.Tensor,
    draft_tokens: torch.Tensor,
    num_proposed: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
) -> VerifyOutput:
    """Rejection-sampling verification.

    `target_probs` (B, K+1, V) is p at every position, `draft_probs` (B, K, V) the q each
    proposal was drawn from (None: point masses), `generators[b]` request b's generator.
    """
    _check(target_probs, draft_tokens, num_proposed)
    b, k1, _ = target_probs.shape
    k = k1 - 1
    device = target_probs.device
    if generators is not None and len(generators) != b:
        raise ValueError(f"{len(generators)} generators for {b} requests")
    index = draft_tokens[..., None]
    p_x = target_probs[:, :k].gather(-1, index).squeeze(-1).float()
    if draft_probs is not None:
        if draft_probs.shape != (b, k, target_probs.shape[2]):
            raise ValueError(f"draft_probs must be {(b, k, target_probs.shape[2])}")
        q_x = draft_probs.gather(-1, index).squeeze(-1).float()
    else:
        q_x = torch.ones_like(p_x)
    u = _uniforms(num_proposed, k, generators, device)
    num_accepted = _num_accepted(u * q_x < p_x, num_proposed)

    rows = torch.arange(b, device=device)
    p_m = target_probs[rows, num_accepted].float()  # (B, V): p where we stopped
    rejected = num_accepted < num_proposed
    if bool(rejected.any()):
        at = num_accepted.clamp(max=max(k - 1, 0))
        if draft_probs is not None:
            q_m = draft_probs[rows, at].float()
        else:
            q_m = torch.zeros_like(p_m).scatter_(1, draft_tokens[rows, at][:, None], 1.0)
        residual = (p_m - q_m).clamp_(min=0.0)
        mass = residual.sum(dim=1, keepdim=True)
        # p == q leaves no residual, and then no rejection can happen: keep p for safety.
        residual = torch.where(mass > 1e-12, residual / mass.clamp(min=1e-12), p_m)
        p_m = torch.where(rejected[:, None], residual, p_m)
    last = sample_from(p_m, list(generators) if generators is not None else None)
    return _assemble(draft_tokens, num_accepted, last)


def verify(
    target_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    num_proposed: torch.Tensor,
    *,
    greedy: torch.Tensor,
    target_probs: torch.Tensor | None = None,
    draft_probs: torch.Tensor | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
) -> VerifyOutput:
    """A mixed batch: rows where `greedy` (B,) is true verify greedily on `target_logits`,
    the others by rejection sampling on `target_probs` (required if any row samples)."""
    if bool(greedy.all()):
        return verify_greedy(target_logits, draft_tokens, num_proposed)
    if target_probs is None:
        raise ValueError("target_probs is required when some requests sample")
    out = verify_sampled(target_probs, draft_tokens, num_proposed, draft_probs, generators)
    if bool(greedy.any()):
        exact = verify_greedy(target_logits, draft_tokens, num_proposed)
        out.token_ids = torch.where(greedy[:, None], exact.token_ids, out.token_ids)
        out.num_accepted = torch.where(greedy, exact.num_accepted, out.num_accepted)
    return out
