"""The explicit per-step batch: everything one forward pass needs, built once per step.

The scheduler says which tokens of which sequences run (`ScheduledBatch`); this module lays
them out as one flat batch of tokens — decodes and short chunks first, ordered by LoRA slot
so that tokens of one adapter sit together, then long prompt chunks — and precomputes what
every layer shares: positions, cache slots to write, attention groups with their block
tables and masks, rotary tables, the rows whose logits are needed and the LoRA mapping.
No module-global state: the model receives this object and passes it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmaas.engine.kv_cache import KVCache
from lmaas.engine.lora.mapping import LoraMapping
from lmaas.engine.model.rotary import RotaryEmbedding
from lmaas.engine.scheduler import ScheduledSeq

__all__ = ["AttentionGroup", "ForwardBatch", "build_forward_batch"]


@dataclass
class AttentionGroup:
    """Sequences whose attention runs as one (padded) call.

    `block_tables` is None for a single fresh prompt, which attends causally to its own
    keys. Otherwise each sequence's queries (padded to `q_len`) attend to its blocks under
    an additive fp32 mask `bias` (0 where a query sees a key, −inf elsewhere) shaped
    (num_seqs, 1, 1, q_len, context).
    """

    token_slice: slice
    num_seqs: int
    q_len: int
    block_tables: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    pad_index: torch.Tensor | None = None
    unpad_index: torch.Tensor | None = None


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    attention: list[AttentionGroup]
    logits_indices: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    kv_cache: KVCache
    lora: LoraMapping | None = None
    items: list[ScheduledSeq] = field(default_factory=list)
    logits_offsets: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def _order(items: list[ScheduledSeq], max_decode_query: int) -> list[ScheduledSeq]:
    short = [i for i in items if i.num_new_tokens <= max_decode_query]
    long = [i for i in items if i.num_new_tokens > max_decode_query]
    short.sort(key=lambda i: (i.seq.lora_slot < 0, i.seq.lora_slot))
    return short + long


def build_forward_batch(
    items: list[ScheduledSeq],
    *,
    kv_cache: KVCache,
    rotary: RotaryEmbedding,
    dtype: torch.dtype,
    device: torch.device,
    max_decode_query: int = 16,
) -> ForwardBatch:
    """Lay out one step's scheduled sequences as a flat batch of tokens."""
    bs = kv_cache.block_size
    ordered = _order(items, max_decode_query)
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    lora_slots: list[int] = []
    logits_rows: list[int] = []
    logits_offsets: list[int] = []
    for item in ordered:
        seq = item.seq
        tokens = seq.token_ids + seq.draft_token_ids if seq.draft_token_ids else seq.token_ids
        offset = len(input_ids)
        input_ids.extend(tokens[item.start : item.end])
        table = seq.block_table
        for pos in range(item.start, item.end):
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
        lora_slots.extend([seq.lora_slot] * item.num_new_tokens)
        if item.num_logits:
            logits_offsets.append(len(logits_rows))
            first = offset + item.num_new_tokens - item.num_logits
            logits_rows.extend(range(first, offset + item.num_new_tokens))
        else:
            logits_offsets.append(-1)

    groups: list[AttentionGroup] = []
    num_short = sum(1 for i in ordered if i.num_new_tokens <= max_decode_query)
    if num_short:
        groups.append(_padded_group(ordered[:num_short], 0, bs, device))
    offset = sum(i.num_new_tokens for i in ordered[:num_short])
    for item in ordered[num_short:]:
        groups.append(_single_group(item, offset, bs, device))
        offset += item.num_new_tokens

    pos_tensor = torch.tensor(positions, dtype=torch.long, device=device)
    cos, sin = rotary.tables(pos_tensor, dtype)
    lora = None
    if any(s >= 0 for s in lora_slots):
        lora = LoraMapping(lora_slots, device=device)
    return ForwardBatch(
        input_ids=torch.tensor(input_ids, dtype=torch.long, device=device),
        positions=pos_tensor,
        slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
        attention=groups,
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        cos=cos,
        sin=sin,
        kv_cache=kv_cache,
        lora=lora,
        items=ordered,
        logits_offsets=logits_offsets,
    )


def _padded_group(
    items: list[ScheduledSeq], offset: int, bs: int, device: torch.device
) -> AttentionGroup:
    q_lens = [i.num_new_tokens for i in items]
    q_len = max(q_lens)
    num_blocks = max((i.end + bs - 1) // bs for i in items)
    tables = [i.seq.block_table[:num_blocks] for i in items]
    tables = [t + [0] * (num_blocks - len(t)) for t in tables]
    context = num_blocks * bs
    keys = torch.arange(context, device=device)
    if q_len == 1:
        ends = torch.tensor([i.end for i in items], device=device)
        mask = (keys[None, :] < ends[:, None])[:, None, None, :]
    else:
        starts = torch.tensor([i.start for i in items], device=device)
        rows = torch.arange(q_len, device=device)
        query_pos = starts[:, None] + rows[None, :]
        lens = torch.tensor(q_lens, device=device)
        valid = (rows[None, :] < lens[:, None])[..., None]
        mask = (keys[None, None, :] <= query_pos[..., None]) & valid
        mask |= ~valid & (keys == 0)  # padded rows attend somewhere (their output is dropped)
        mask = mask[:, None]
    pad_index = unpad_index = None
    if any(n != q_len for n in q_lens):
        pad, unpad, start = [], [], 0
        for b, n in enumerate(q_lens):
            pad.extend(start + min(j, n - 1) for j in range(q_len))
            unpad.extend(b * q_len + j for j in range(n))
            start += n
        pad_index = torch.tensor(pad, dtype=torch.long, device=device)
        unpad_index = torch.tensor(unpad, dtype=torch.long, device=device)
    return AttentionGroup(
        token_slice=slice(offset, offset + sum(q_lens)),
        bias=_bias(mask),
        num_seqs=len(items),
        q_len=q_len,
        block_tables=torch.tensor(tables, dtype=torch.long, device=device),
        pad_index=pad_index,
        unpad_index=unpad_index,
    )


def _single_group(item: ScheduledSeq, offset: int, bs: int, device: torch.device) -> AttentionGroup:
    n = item.num_new_tokens
    tokens = slice(offset, offset + n)
    if item.start == 0:
        return AttentionGroup(token_slice=tokens, num_seqs=1, q_len=n)
    num_blocks = (item.end + bs - 1) // bs
    keys = torch.arange(num_blocks * bs, device=device)
    query_pos = item.start + torch.arange(n, device=device)
    mask = (keys[None, :] <= query_pos[:, None])[None, None]
    return AttentionGroup(
        token_slice=tokens,
        num_seqs=1,
        q_len=n,
        block_tables=torch.tensor([item.seq.block_table[:num_blocks]], device=device),
        bias=_bias(mask),
    )


def _bias(mask: torch.Tensor) -> torch.Tensor:
    """(seqs, 1, q_len, ctx) bool → (seqs, 1, 1, q_len, ctx) additive fp32 mask."""
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return bias.masked_fill_(~mask, float("-inf")).unsqueeze(1)
