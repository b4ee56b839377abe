"""Who proposes: the `Proposer` interface, and the draft-model proposer over any draft forward.

A proposer turns a batch of sequences (prompt + output so far) and a k per sequence into
up to k proposed tokens each, plus — for sampled requests of a draft model — the
distribution q each token was drawn from (verification needs it; `None` = point masses).

`DraftModelProposer` runs a draft model through a `DraftBackend`: something that keeps a
KV cache per sequence and returns the logits after appending tokens. It keeps track of
which tokens each sequence's draft cache holds, so the engine only calls `propose()` and
`release()`: on each call the cache is rolled back to the longest prefix it shares with
the sequence (rejected proposals drop out), the tokens the target accepted or added since
are fed in one pass, then k−1 more single-token passes, batched over the sequences still
proposing. `HFDraftBackend` is the backend over a transformers model with one
`DynamicCache` per sequence (one forward per sequence: tests and small batches); the
engine's own paged backend batches them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = [
    "DraftBackend",
    "DraftModelProposer",
    "HFDraftBackend",
    "Proposal",
    "Proposer",
    "SpecSequence",
]


@dataclass
class SpecSequence:
    """A request as a proposer sees it. `temperature` 0 = greedy."""

    seq_id: Hashable
    token_ids: Sequence[int]  # prompt + output so far
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = field(default=None, repr=False)


@dataclass
class Proposal:
    """`token_ids[i]` (at most the k asked for) for sequence i; `probs[i]` (len, V) or None."""

    token_ids: list[list[int]]
    probs: list[torch.Tensor | None] | None = None

    @property
    def num_tokens(self) -> list[int]:
        return [len(t) for t in self.token_ids]

    def draft_probs(self, width: int, vocab_size: int, device: Any = "cpu") -> torch.Tensor | None:
        """q padded to (B, width, V) for `verify_sampled`; rows without q are point masses."""
        import torch

        if self.probs is None or all(p is None for p in self.probs):
            return None
        out = torch.zeros((len(self.token_ids), width, vocab_size), device=device)
        for b, (tokens, q) in enumerate(zip(self.token_ids, self.probs, strict=True)):
            if q is not None:
                out[b, : q.shape[0]] = q.to(device)
            elif tokens:
                out[b, torch.arange(len(tokens)), torch.as_tensor(tokens)] = 1.0
        return out


@runtime_checkable
class Proposer(Protocol):
    """Proposes tokens for a batch of sequences."""

    kind: str  # "draft" (its cost grows with k: sequential passes) or "ngram" (free)

    def propose(self, sequences: Sequence[SpecSequence], ks: Sequence[int]) -> Proposal:
        """Up to `ks[i]` tokens for `sequences[i]` (fewer, or none, when it has nothing)."""
        ...

    def release(self, seq_id: Hashable) -> None:
        """Forget a finished sequence."""
        ...


class DraftBackend(Protocol):
    """A draft model with a KV cache per sequence."""

    def forward(
        self, seq_ids: Sequence[Hashable], new_tokens: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Append `new_tokens[i]` to sequence i's cache; logits after its last new token (B, V)."""
        ...

    def truncate(self, seq_id: Hashable, length: int) -> None:
        """Keep only the first `length` tokens of a sequence's cache."""
        ...

    def release(self, seq_id: Hashable) -> None: ...


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of `a` and `b`. Draft caches differ from their sequence
    only in the last few tokens (rejected proposals), so whole-slice comparisons (C speed)
    settle all but a short tail, which is scanned."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    start = max(0, n - 64)
    if a[:start] != b[:start]:
        start = 0
    for i in range(start, n):
        if a[i] != b[i]:
            return i
    return n


class DraftModelProposer:
    """Proposes by running a draft model `k` times (see the module docstring)."""

    kind = "draft"

    def __init__(self, backend: DraftBackend) -> None:
        self.backend = backend
        self._cached: dict[Hashable, list[int]] = {}  # tokens each draft cache holds

    def release(self, seq_id: Hashable) -> None:
        self._cached.pop(seq_id, None)
        self.backend.release(seq_id)

    def catch_up_tokens(self, seq_id: Hashable, token_ids: Sequence[int]) -> int:
        """How many tokens beyond the usual one the draft would feed `seq_id` before its
        first proposal now (what its draft cache has not seen: the whole prompt the first
        time, the steps it did not propose at since): the catch-up the controller weighs."""
        cached = self._cached.get(seq_id, [])
        common = min(_common_prefix(cached, token_ids), len(token_ids) - 1)
        return max(0, len(token_ids) - common - 1)

    def _catch_up(self, seq: SpecSequence) -> list[int]:
        """Roll the draft cache back to what it shares with `seq`; the tokens to feed."""
        cached = self._cached.setdefault(seq.seq_id, [])
        tokens = list(seq.token_ids)
        if not tokens:
            raise ValueError(f"sequence {seq.seq_id!r} has no tokens to continue")
        common = _common_prefix(cached, tokens)
        common = min(common, len(tokens) - 1)  # always feed at least the last token
        if common < len(cached):
            self.backend.truncate(seq.seq_id, common)
            del cached[common:]
        return tokens[common:]

    def propose(self, sequences: Sequence[SpecSequence], ks: Sequence[int]) -> Proposal:
        import torch

        from lmaas.engine.speculation.sampling import (
            GREEDY_TEMPERATURE,
            sample_from,
            sampling_probs,
        )

        if len(sequences) != len(ks):
            raise ValueError(f"{len(sequences)} sequences but {len(ks)} values of k")
        out: list[list[int]] = [[] for _ in sequences]
        probs: list[list[torch.Tensor]] = [[] for _ in sequences]
        active = [i for i, k in enumerate(ks) if k > 0]
        feed = {i: self._catch_up(sequences[i]) for i in active}
        step = 0
        while active:
            ids = [sequences[i].seq_id for i in active]
            logits = self.backend.forward(ids, [feed[i] for i in active])
            seqs = [sequences[i] for i in active]
            q = sampling_probs(
                logits,
                torch.tensor([s.temperature for s in seqs]),
                torch.tensor([s.top_k for s in seqs]),
                torch.tensor([s.top_p for s in seqs]),
            )
            greedy = [s.temperature <= GREEDY_TEMPERATURE for s in seqs]
            if all(greedy):
                tokens = logits.argmax(dim=-1).tolist()
            else:
                tokens = sample_from(q, [s.generator for s in seqs]).tolist()
            for row, i in enumerate(active):
                self._cached[sequences[i].seq_id].extend(feed[i])
                out[i].append(int(tokens[row]))
                if not greedy[row]:
                    probs[i].append(q[row])
                feed[i] = [int(tokens[row])]
            step += 1
            active = [i for i in active if ks[i] > step]
        has_q = any(probs)
        return Proposal(
            token_ids=out,
            probs=[torch.stack(p) if p else None for p in probs] if has_q else None,
        )


class HFDraftBackend:
    """`DraftBackend` over a transformers causal LM, one `DynamicCache` per sequence."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._caches: dict[Hashable, Any] = {}

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def forward(
        self, seq_ids: Sequence[Hashable], new_tokens: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        import torch
        from transformers import DynamicCache

        rows = []
        with torch.inference_mode():
            for seq_id, tokens in zip(seq_ids, new_tokens, strict=True):
                if not tokens:
                    raise ValueError(f"no new tokens for sequence {seq_id!r}")
                cache = self._caches.get(seq_id)
                if cache is None:
                    cache = self._caches[seq_id] = DynamicCache(config=self.model.config)
                ids = torch.tensor([list(tokens)], device=self.device)
                logits = self.model(input_ids=ids, cache=cache, use_cache=True).logits
                rows.append(logits[0, -1].float())
        return torch.stack(rows)

    def truncate(self, seq_id: Hashable, length: int) -> None:
        cache = self._caches.get(seq_id)
        if cache is None:
            return
        remove = cache.get_seq_length() - length
        if remove > 0:
            cache.crop(-remove)

    def release(self, seq_id: Hashable) -> None:
        self._caches.pop(seq_id, None)
