"""Batches for training: which examples each step sees, packed into few padded rows.

A step takes `batch_size` examples (OpenAI's meaning of batch size) in an order drawn from
(seed, epoch), so step s of any run with the same seed sees the same examples: that is what
makes resuming from a checkpoint exact. The examples of a step are packed first-fit into
rows of at most `max_len` tokens; position ids restart at 0 for each example, which makes
transformers build a block-diagonal causal mask (no attention across examples). Targets
are shifted: ``targets[r, t]`` is the token predicted at position t, or -100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmaas.finetune.data import TokenizedExample

__all__ = ["IGNORE_INDEX", "Batch", "EpochPlan", "pack_examples"]

IGNORE_INDEX = -100


@dataclass
class Batch:
    """One step's token rows; `targets` is -100 where the loss does not look."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    num_tokens: int
    num_loss_tokens: int

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.targets.to(device),
            self.num_tokens,
            self.num_loss_tokens,
        )


def pack_examples(examples: Sequence[TokenizedExample], max_len: int, pad_id: int = 0) -> Batch:
    """Pack `examples` first-fit (longest first) into rows of at most `max_len` tokens."""
    if not examples:
        raise ValueError("a batch needs at least one example")
    rows: list[list[TokenizedExample]] = []
    fill: list[int] = []
    for ex in sorted(examples, key=lambda e: -e.num_tokens):
        n = min(ex.num_tokens, max_len)
        for r, used in enumerate(fill):
            if used + n <= max_len:
                rows[r].append(ex)
                fill[r] += n
                break
        else:
            rows.append([ex])
            fill.append(n)
    width = max(fill)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    tgt = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    num_tokens = 0
    for r, row in enumerate(rows):
        at = 0
        for ex in row:
            n = min(ex.num_tokens, max_len)
            seq = torch.tensor(ex.input_ids[:n], dtype=torch.long)
            mask = torch.tensor(ex.loss_mask[:n], dtype=torch.bool)
            ids[r, at : at + n] = seq
            pos[r, at : at + n] = torch.arange(n)
            # position t predicts token t+1 of the same example, if the loss sees it
            shifted = torch.where(mask[1:], seq[1:], IGNORE_INDEX)
            tgt[r, at : at + n - 1] = shifted
            at += n
            num_tokens += n
        pos[r, at:] = torch.arange(width - at)
    num_loss = int((tgt != IGNORE_INDEX).sum())
    return Batch(ids, pos, tgt, num_tokens, num_loss)


@dataclass(frozen=True)
class EpochPlan:
    """The deterministic order of examples: step → example indices."""

    num_examples: int
    batch_size: int
    n_epochs: int
    seed: int

    def __post_init__(self) -> None:
        if self.num_examples < 1 or self.batch_size < 1 or self.n_epochs < 1:
            raise ValueError("an epoch plan needs examples, a batch size and epochs ≥ 1")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.n_epochs

    def epoch_of(self, step: int) -> int:
        """The 0-based epoch of 0-based `step`."""
        return step // self.steps_per_epoch

    def indices(self, step: int) -> list[int]:
        """Example indices of 0-based `step`."""
        if not 0 <= step < self.total_steps:
            raise IndexError(f"step {step} is outside 0..{self.total_steps - 1}")
        epoch, i = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        return [int(x) for x in order[i * self.batch_size : (i + 1) * self.batch_size]]
