"""A sequence: one request's tokens, its place in the paged KV cache and its progress.

Plain Python (no torch), so that paging and batching are unit-tested without a model.
A sequence's tokens are its prompt followed by what it generated; `num_computed_tokens`
of them have their keys and values in the cache blocks listed in `block_table`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sequence", "SequenceStatus"]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request being generated.

    `params` is the request's sampling parameters (`lmaas.protocol.SamplingParams`); the
    scheduler reads only `max_tokens` from the sequence itself.
    """

    seq_id: int
    prompt_token_ids: list[int]
    max_tokens: int
    block_size: int
    request_id: str = ""
    tenant_id: str = ""
    adapter_id: str | None = None
    params: Any = None
    token_ids: list[int] = field(init=False)
    num_prompt_tokens: int = field(init=False)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    lora_slot: int = -1
    draft_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    num_preemptions: int = 0
    prompt_charged: bool = False
    arrival_time: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError("a sequence needs at least one prompt token")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")
        self.token_ids = list(self.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def is_prefilling(self) -> bool:
        """Some prompt tokens still have no keys and values in the cache."""
        return self.num_computed_tokens < self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens (drafts included) whose keys and values the next forward pass must write."""
        return self.num_tokens + len(self.draft_token_ids) - self.num_computed_tokens

    @property
    def num_blocks(self) -> int:
        return len(self.block_table)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return (num_tokens + self.block_size - 1) // self.block_size

    def block_token_ids(self, index: int) -> list[int]:
        """The tokens of block `index` of this sequence (the last one may be partial)."""
        start = index * self.block_size
        return self.token_ids[start : start + self.block_size]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def reset_for_recompute(self) -> None:
        """Forget the cache (preemption by recompute): prompt and output are kept."""
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.block_table = []
        self.draft_token_ids = []
        self.lora_slot = -1
        self.status = SequenceStatus.WAITING
        self.num_preemptions += 1
