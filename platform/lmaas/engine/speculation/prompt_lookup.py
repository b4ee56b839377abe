"""Prompt lookup: propose the tokens that followed the last occurrence of the current n-gram.

For a sequence t[0..L) (prompt + output so far) and n from `max_n` down to `min_n`
(longest match first): the pattern is the last n tokens t[L-n..L); the match is its most
recent earlier occurrence, the largest j < L-n with t[j..j+n) == pattern; the proposal
is the k tokens that followed it, t[j+n], t[j+n+1], …, continued with the proposal itself
once it runs past the end (so a loop of period L-n-j keeps being proposed whole). No
match at any n → no proposal. Costs microseconds per sequence: the controller then only
decides how many of the k tokens are worth verifying.

Two implementations with exactly these semantics:

- `ngram_propose_batch`: stateless, vectorised over a padded batch with numpy (the
  reference, and the simplest thing to call);
- `NgramIndex`: incremental, O(max_n) work per new token and O(1) per lookup, for long
  contexts; `PromptLookupProposer` keeps one per sequence and resynchronises it from the
  sequence's tokens, so the engine needs no extra hooks but `release()`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from lmaas.engine.speculation.proposer import Proposal, SpecSequence

__all__ = ["NgramIndex", "PromptLookupProposer", "ngram_propose", "ngram_propose_batch"]


def _check_range(min_n: int, max_n: int) -> None:
    if not 1 <= min_n <= max_n:
        raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")


def _continue(tokens: Sequence[int], start: int, k: int) -> list[int]:
    """k tokens copied from `tokens[start:]`, continued with themselves past the end."""
    length = len(tokens)
    out: list[int] = []
    for i in range(k):
        idx = start + i
        out.append(int(tokens[idx]) if idx < length else out[idx - length])
    return out


def ngram_propose(tokens: Sequence[int], k: int, *, min_n: int = 1, max_n: int = 4) -> list[int]:
    """The proposal for one sequence (see the module docstring); [] when nothing matches."""
    return ngram_propose_batch([tokens], [k], min_n=min_n, max_n=max_n)[0]


def ngram_propose_batch(
    token_lists: Sequence[Sequence[int]],
    ks: Sequence[int],
    *,
    min_n: int = 1,
    max_n: int = 4,
) -> list[list[int]]:
    """Proposals for a batch of sequences, `ks[i]` tokens for `token_lists[i]`."""
    _check_range(min_n, max_n)
    if len(token_lists) != len(ks):
        raise ValueError(f"{len(token_lists)} sequences but {len(ks)} values of k")
    num = len(token_lists)
    out: list[list[int]] = [[] for _ in range(num)]
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    if num == 0 or lengths.max(initial=0) < 2:
        return out
    width = int(lengths.max())
    padded = np.full((num, width), -1, dtype=np.int64)
    for i, t in enumerate(token_lists):
        padded[i, : len(t)] = np.asarray(t, dtype=np.int64)
    todo = np.array([k > 0 for k in ks]) & (lengths >= 2)
    rows = np.arange(num)
    for n in range(max_n, min_n - 1, -1):
        active = todo & (lengths > n)
        if not active.any():
            continue
        windows = np.lib.stride_tricks.sliding_window_view(padded, n, axis=1)  # (B, W-n+1, n)
        tail_idx = (lengths - n)[:, None] + np.arange(n)[None, :]
        pattern = padded[rows[:, None], np.clip(tail_idx, 0, width - 1)]  # (B, n)
        hits = (windows == pattern[:, None, :]).all(axis=2)  # (B, W-n+1)
        starts = np.arange(hits.shape[1])[None, :]
        hits &= starts < (lengths - n)[:, None]  # earlier occurrences only
        hits &= active[:, None]
        found = hits.any(axis=1)
        last = hits.shape[1] - 1 - np.argmax(hits[:, ::-1], axis=1)
        for i in np.flatnonzero(found):
            t = padded[i, : lengths[i]]
            out[i] = _continue(t, int(last[i]) + n, ks[i])
        todo &= ~found
    return out


class NgramIndex:
    """The most recent start of every n-gram (min_n ≤ n ≤ max_n) of a growing sequence.

    Holds the n-grams that end before the last token, i.e. the candidates for the match
    of the sequence's current suffix.
    """

    __slots__ = ("_index", "max_n", "min_n", "tokens")

    def __init__(self, tokens: Sequence[int] = (), *, min_n: int = 1, max_n: int = 4) -> None:
        _check_range(min_n, max_n)
        self.min_n = min_n
        self.max_n = max_n
        self.tokens: list[int] = []
        self._index: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(min_n, max_n + 1)
        }
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def append(self, token: int) -> None:
        t = self.tokens
        length = len(t)
        for n, index in self._index.items():
            start = length - n  # the suffix that now becomes an earlier occurrence
            if start >= 0:
                index[tuple(t[start:length])] = start
        t.append(int(token))

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self.append(token)

    def propose(self, k: int) -> list[int]:
        """The proposal of k tokens for the sequence as it is now; [] when nothing matches."""
        t = self.tokens
        length = len(t)
        if k <= 0:
            return []
        for n in range(self.max_n, self.min_n - 1, -1):
            if length <= n:
                continue
            start = self._index[n].get(tuple(t[length - n :]))
            if start is not None:
                return _continue(t, start + n, k)
        return []


class PromptLookupProposer:
    """The n-gram proposer behind the `Proposer` interface; proposals carry no distribution."""

    kind = "ngram"

    def __init__(self, *, min_n: int = 1, max_n: int = 4) -> None:
        _check_range(min_n, max_n)
        self.min_n = min_n
        self.max_n = max_n
        self._indexes: dict[Hashable, NgramIndex] = {}

    def propose(self, sequences: Sequence[SpecSequence], ks: Sequence[int]) -> Proposal:
        if len(sequences) != len(ks):
            raise ValueError(f"{len(sequences)} sequences but {len(ks)} values of k")
        out: list[list[int]] = []
        for seq, k in zip(sequences, ks, strict=True):
            out.append(self._index_for(seq).propose(k) if k > 0 else [])
        return Proposal(token_ids=out)

    def release(self, seq_id: Hashable) -> None:
        self._indexes.pop(seq_id, None)

    def _index_for(self, seq: SpecSequence) -> NgramIndex:
        tokens = seq.token_ids
        index = self._indexes.get(seq.seq_id)
        known = 0 if index is None else len(index)
        # Sequences only grow; anything else (a preempted and restarted request) rebuilds.
        if (
            index is None
            or known > len(tokens)
            or (known and index.tokens[-1] != tokens[known - 1])
        ):
            index = NgramIndex(tokens, min_n=self.min_n, max_n=self.max_n)
            self._indexes[seq.seq_id] = index
        else:
            index.extend(tokens[known:])
        return index
