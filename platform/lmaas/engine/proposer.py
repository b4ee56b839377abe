"""The hook for speculative decoding: a proposer attaches draft tokens, then verifies them.

The step loop calls `propose` before scheduling (drafts are scheduled with the decode
token, so one forward pass computes logits for every draft position) and `verify` for each
sequence that carried drafts. Without a proposer the engine decodes one token per step.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lmaas.engine.sampler import SamplingRow
from lmaas.engine.sequence import Sequence

__all__ = ["Proposer"]


class Proposer(Protocol):
    def propose(self, running: list[Sequence]) -> None:
        """Set `draft_token_ids` on the decoding sequences that should speculate."""

    def verify(
        self, seq: Sequence, logits: torch.Tensor, row: SamplingRow
    ) -> tuple[list[int], int]:
        """Given fp32 logits (1 + drafts, vocab) for `seq`'s last token and drafts: the tokens
        it generates (accepted drafts + one bonus or correction) and how many drafts it rejects."""
        ...

    def forget(self, seq: Sequence) -> None:
        """`seq` finished or was preempted: drop any state kept for it."""
