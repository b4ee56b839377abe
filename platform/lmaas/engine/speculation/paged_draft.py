"""The draft model on the engine's own kernels: a paged KV cache, every sequence in one pass.

`PagedDraftBackend` is the `DraftBackend` the engine gives `DraftModelProposer`: the draft
is an engine `LlamaForCausalLM` (the target's tokenizer and vocabulary) with its OWN paged
KV cache and block manager, and each `forward` call lays out the new tokens of all the
sequences asked for as one flat batch (`build_forward_batch`, the target's layout: short
queries padded together, long catch-up prefills on their own) — so the k sequential draft
passes of a step are k forward passes whatever the batch size. `truncate` rolls a
sequence's draft cache back (rejected proposals) and frees the blocks past its end.

`load_paged_draft` loads a draft folder written by `finetune.draft_builder.save_draft` (or
a `DraftLM` in memory); a draft with a frequency-reduced output vocabulary has its logits
scattered back to the target's vocabulary (−inf elsewhere: such tokens are never proposed).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lmaas.engine.block_manager import BlockManager
from lmaas.engine.forward_batch import build_forward_batch
from lmaas.engine.kv_cache import KVCache, kv_bytes_per_block
from lmaas.engine.model.llama import LlamaForCausalLM
from lmaas.engine.model.loader import check_loaded, copy_weights
from lmaas.engine.model.model_config import ModelConfig
from lmaas.engine.scheduler import ScheduledSeq
from lmaas.engine.sequence import Sequence as EngineSequence

if TYPE_CHECKING:
    from lmaas.finetune.draft_builder import DraftLM

__all__ = ["DraftCacheFull", "PagedDraftBackend", "PagedDraftModel", "load_paged_draft"]


class DraftCacheFull(RuntimeError):
    """The draft's KV cache has no block left for a sequence (the engine skips speculation)."""


class PagedDraftModel:
    """An engine model plus, for a reduced output vocabulary, the target ids of its rows."""

    def __init__(self, model: LlamaForCausalLM, vocab_ids: torch.Tensor | None, version: int = 0):
        self.model = model
        self.vocab_ids = vocab_ids
        self.version = version

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def logits(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """fp32 logits over the target's vocabulary."""
        out = self.model.compute_logits(hidden, rows)
        if self.vocab_ids is None:
            return out
        full = out.new_full((out.shape[0], self.model.config.vocab_size), float("-inf"))
        return full.index_copy_(1, self.vocab_ids, out)


def load_paged_draft(
    source: Path | str | DraftLM, *, dtype: torch.dtype, device: torch.device
) -> PagedDraftModel:
    """A draft folder (`save_draft`; any fsspec URL) or a `DraftLM`, on the engine's kernels."""
    from lmaas.finetune.draft_builder import DraftLM, load_draft

    draft = source if isinstance(source, DraftLM) else load_draft(source, device="cpu")
    hf_config: Any = draft.model.config
    raw = hf_config.to_dict()
    raw["architectures"] = ["LlamaForCausalLM"]
    raw["tie_word_embeddings"] = False
    config = ModelConfig.from_dict(raw)
    model = LlamaForCausalLM(config, dtype=dtype, device=device)
    vocab_ids = draft.vocab_ids if draft.vocab_ids.numel() else None
    if vocab_ids is not None:
        with torch.device(device):
            model.lm_head = nn.Linear(config.hidden_size, len(vocab_ids), bias=False, dtype=dtype)
        model.lm_head.weight.requires_grad_(False)
    state = draft.model.state_dict()
    loaded = copy_weights(model, ((n, lambda t=t: t) for n, t in state.items()), "draft")
    check_loaded(model, loaded, "draft")
    model.eval()
    ids = vocab_ids.to(device) if vocab_ids is not None else None
    return PagedDraftModel(model, ids, version=int(getattr(draft.info, "version", 0) or 0))


class PagedDraftBackend:
    """`DraftBackend` over a `PagedDraftModel` with its own paged KV cache (module docstring)."""

    def __init__(
        self,
        draft: PagedDraftModel,
        *,
        num_tokens: int,
        block_size: int = 16,
        device: torch.device | None = None,
        kv_cache: KVCache | None = None,
    ) -> None:
        """`kv_cache`: reuse this cache's memory if it has the draft's shape (the cache of
        the backend this one replaces, which must no longer run once this one does)."""
        self.draft = draft
        model = draft.model
        self.dtype = model.dtype
        self.device = device or next(model.parameters()).device
        num_blocks = max(1, -(-num_tokens // block_size))
        if kv_cache is None or not self._fits(kv_cache, model.config, num_blocks, block_size):
            kv_cache = KVCache(
                model.config,
                num_blocks=num_blocks,
                block_size=block_size,
                dtype=self.dtype,
                device=self.device,
            )
        self.kv_cache = kv_cache
        self.blocks = BlockManager(num_blocks, block_size)
        self._seqs: dict[Hashable, EngineSequence] = {}

    def _fits(self, cache: KVCache, config: ModelConfig, num_blocks: int, block_size: int) -> bool:
        shape = (config.num_layers, 2, num_blocks, block_size, config.num_kv_heads, config.head_dim)
        tensor = cache.tensor
        return (
            tuple(tensor.shape) == shape
            and tensor.dtype == self.dtype
            and tensor.device == torch.device(self.device)
        )

    @property
    def num_bytes(self) -> int:
        return self.kv_cache.num_bytes

    @staticmethod
    def bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
        return kv_bytes_per_block(config, 1, dtype)

    def blocks_needed(self, seq_id: Hashable, num_tokens: int) -> int:
        """Free blocks the sequence needs for its cache to hold `num_tokens` tokens."""
        seq = self._seqs.get(seq_id)
        held = 0 if seq is None else seq.num_blocks
        return max(0, -(-num_tokens // self.blocks.block_size) - held)

    def cached_tokens(self, seq_id: Hashable) -> int:
        seq = self._seqs.get(seq_id)
        return 0 if seq is None else seq.num_computed_tokens

    @torch.inference_mode()
    def forward(
        self, seq_ids: Sequence[Hashable], new_tokens: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        items = []
        for seq_id, tokens in zip(seq_ids, new_tokens, strict=True):
            if not tokens:
                raise ValueError(f"no new tokens for sequence {seq_id!r}")
            seq = self._seqs.get(seq_id)
            if seq is None:
                seq = EngineSequence(
                    0, list(tokens), max_tokens=1, block_size=self.blocks.block_size
                )
                self._seqs[seq_id] = seq
            else:
                seq.token_ids.extend(tokens)
            start = seq.num_computed_tokens
            if not self.blocks.can_allocate(seq, len(tokens)):
                del seq.token_ids[start:]
                raise DraftCacheFull(
                    f"the draft KV cache ({self.blocks.num_blocks} blocks) is full"
                )
            self.blocks.allocate(seq, len(tokens))
            items.append(ScheduledSeq(seq, start, len(tokens)))
        batch = build_forward_batch(
            items,
            kv_cache=self.kv_cache,
            rotary=self.draft.model.rotary,
            dtype=self.dtype,
            device=self.device,
        )
        hidden = self.draft.model(batch)
        logits = self.draft.logits(hidden, batch.logits_indices)
        row_of = {
            id(item): off for item, off in zip(batch.items, batch.logits_offsets, strict=True)
        }
        order = torch.tensor([row_of[id(item)] for item in items], device=logits.device)
        for item in items:
            item.seq.num_computed_tokens = item.end
        return logits.index_select(0, order)

    def truncate(self, seq_id: Hashable, length: int) -> None:
        seq = self._seqs.get(seq_id)
        if seq is None or seq.num_computed_tokens <= length:
            return
        if length <= 0:
            self.release(seq_id)
            return
        del seq.token_ids[length:]
        seq.num_computed_tokens = length
        self.blocks.free_tail(seq, length)

    def release(self, seq_id: Hashable) -> None:
        seq = self._seqs.pop(seq_id, None)
        if seq is not None:
            self.blocks.deallocate(seq)

    def release_all(self) -> None:
        for seq_id in list(self._seqs):
            self.release(seq_id)
