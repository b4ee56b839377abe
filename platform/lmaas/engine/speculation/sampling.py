"""The distribution a request samples from: logits → probabilities under its sampling params.

Verification is exact only if the target distribution p it uses is the one plain decoding
would sample from, and the draft distribution q is the one the proposals were drawn from.
Both come from this function (temperature, then top-k, then top-p, as OpenAI and vLLM
order them, with the engine sampler's conventions: top-k 0 = off, top-p keeps each token
whose higher-ranked mass is at most p); temperature ≤ 1e-5 means greedy: a point mass on
the argmax.
"""

from __future__ import annotations

import torch

__all__ = ["GREEDY_TEMPERATURE", "sample_from", "sampling_probs"]

GREEDY_TEMPERATURE = 1e-5  # at or below: greedy (as the engine's sampler decides)


def _per_row(
    value: float | torch.Tensor, shape: torch.Size, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    rows = shape[:-1].numel()
    if not isinstance(value, torch.Tensor):
        return torch.full((rows,), value, device=device, dtype=dtype)
    value = value.to(device=device, dtype=dtype)
    if value.numel() == rows:
        return value.reshape(rows)
    if len(shape) == 3 and value.numel() == shape[0]:  # one value per request of (B, T, V)
        return value.reshape(-1, 1).expand(shape[0], shape[1]).reshape(rows)
    raise ValueError(f"{value.numel()} sampling parameters for logits of shape {tuple(shape)}")


def sampling_probs(
    logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Probabilities of shape `logits.shape` (float32), parameters per row of the leading dims.

    `temperature`, `top_k` (0 = off) and `top_p` are scalars, or tensors with one value per
    row (the product of the leading dimensions) or, for (B, T, V) logits, per request.
    """
    shape = logits.shape
    flat = logits.reshape(-1, shape[-1]).float()
    vocab = flat.shape[1]
    device = flat.device
    temp = _per_row(temperature, shape, device, torch.float32)
    k = _per_row(top_k, shape, device, torch.long)
    p = _per_row(top_p, shape, device, torch.float32)
    greedy = temp <= GREEDY_TEMPERATURE
    scaled = flat / torch.where(greedy, torch.ones_like(temp), temp)[:, None]
    if bool((k > 0).any()) or bool((p < 1).any()):
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=device)[None, :]
        drop = (k[:, None] > 0) & (ranks >= k[:, None])
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        sorted_probs = sorted_logits.softmax(dim=-1)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly above each token
        drop = before > p[:, None]
        drop[:, 0] = False  # always keep the most likely token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
    probs = scaled.softmax(dim=-1)
    if bool(greedy.any()):
        onehot = torch.zeros_like(probs).scatter_(-1, flat.argmax(dim=-1, keepdim=True), 1.0)
        probs = torch.where(greedy[:, None], onehot, probs)
    return probs.reshape(shape)


def sample_from(
    probs: torch.Tensor, generators: list[torch.Generator | None] | None = None
) -> torch.Tensor:
    """One token per row of `probs` (B, V), each row drawn with its own generator if given.

    Exponential race (argmax p/E with E ~ Exp(1)): one batched argmax, with the noise of a
    seeded row drawn from that row's generator so that its output does not depend on the
    other requests of the batch.
    """
    noise = torch.empty_like(probs, dtype=torch.float32)
    seeded = [i for i, g in enumerate(generators or []) if g is not None]
    if len(seeded) < probs.shape[0]:
        noise.exponential_()
    for i in seeded:
        noise[i].exponential_(generator=generators[i])  # type: ignore[index]
    return (probs.float() / noise.clamp_(min=1e-30)).argmax(dim=-1)
