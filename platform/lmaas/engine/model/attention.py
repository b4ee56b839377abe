"""Attention over the paged KV cache, for a flat batch of tokens from many sequences.

Each sequence contributes a variable number of query tokens (a prompt chunk, one decode
token, or a decode token plus draft tokens to verify). The step's `ForwardBatch` groups
them (`AttentionGroup`): a fresh prompt attends causally to its own keys; every other group
gathers its sequences' blocks from the cache into a padded (sequences, context) tensor and
attends under an additive mask with batched matmuls. Torch only, the same code on CPU and
CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from lmaas.engine.forward_batch import AttentionGroup, ForwardBatch

__all__ = ["PagedAttention"]


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, layer_index: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.layer_index = layer_index
        self.gqa = num_heads != num_kv_heads
        self.scale = head_dim**-0.5

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """q (tokens, heads, dim), k and v (tokens, kv_heads, dim) → (tokens, heads·dim)."""
        num_tokens = q.shape[0]
        k_cache, v_cache = batch.kv_cache.layer(self.layer_index)
        flat_k = k_cache.view(-1, self.num_kv_heads, self.head_dim)
        flat_v = v_cache.view(-1, self.num_kv_heads, self.head_dim)
        flat_k.index_copy_(0, batch.slot_mapping, k)
        flat_v.index_copy_(0, batch.slot_mapping, v)
        groups = batch.attention
        out = q.new_empty(num_tokens, self.num_heads, self.head_dim) if len(groups) > 1 else None
        for group in groups:
            tokens = group.token_slice
            if group.block_tables is None:
                qs = q[tokens].transpose(0, 1).unsqueeze(0)
                ks = k[tokens].transpose(0, 1).unsqueeze(0)
                vs = v[tokens].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=self.gqa)
                o = o[0].transpose(0, 1)
            else:
                o = self._paged(q[tokens], k_cache, v_cache, group)
            if out is None:  # one group covers every token
                return o.reshape(num_tokens, self.num_heads * self.head_dim)
            out[tokens] = o
        if out is None:
            out = q.new_zeros(num_tokens, self.num_heads, self.head_dim)
        return out.view(num_tokens, self.num_heads * self.head_dim)

    def _paged(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: AttentionGroup
    ) -> torch.Tensor:
        """Attention of a group's queries over its sequences' cached blocks.

        Written as two batched matmuls per KV head with the query heads that share it
        folded into the rows (no repeated keys for grouped-query attention), softmax in
        fp32 under the group's additive mask (0 or −inf, shaped (seqs, 1, 1, q_len, ctx)).
        """
        b, ql, kvh = group.num_seqs, group.q_len, self.num_kv_heads
        per_kv = self.num_heads // kvh
        if group.pad_index is not None:
            q = q.index_select(0, group.pad_index)
        # (seqs, q_len, kv_heads, per_kv, dim) → (seqs, kv_heads, per_kv·q_len, dim)
        q = q.view(b, ql, kvh, per_kv, self.head_dim).permute(0, 2, 3, 1, 4)
        q = q.reshape(b, kvh, per_kv * ql, self.head_dim)
        if group.block_tables is None or group.bias is None:
            raise ValueError("a paged attention group needs block tables and a mask")
        index = group.block_tables.view(-1)
        ks = k_cache.index_select(0, index).view(b, -1, kvh, self.head_dim)
        vs = v_cache.index_select(0, index).view(b, -1, kvh, self.head_dim)
        scores = torch.matmul(q, ks.permute(0, 2, 3, 1)).float() * self.scale
        scores = scores.view(b, kvh, per_kv, ql, -1) + group.bias
        probs = torch.softmax(scores, dim=-1).to(q.dtype).view(b, kvh, per_kv * ql, -1)
        o = torch.matmul(probs, vs.transpose(1, 2))  # (seqs, kv_heads, per_kv·q_len, dim)
        o = o.view(b, kvh, per_kv, ql, self.head_dim).permute(0, 3, 1, 2, 4)
        o = o.reshape(b * ql, self.num_heads, self.head_dim)
        if group.unpad_index is not None:
            o = o.index_select(0, group.unpad_index)
        return o
