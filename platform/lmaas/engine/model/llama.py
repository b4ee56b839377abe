"""A Llama-family decoder (Llama, SmolLM2, Mistral, Qwen2) over a flat batch of tokens.

The forward pass takes the step's `ForwardBatch`: tokens of many sequences, each with any
number of query tokens (prompt chunks, decodes, draft tokens to verify), attend over the
paged KV cache. `compute_logits` projects only the rows the step samples from. q/k/v and
gate/up are fused projections (one matmul each); module names follow transformers'
(`model.layers.N.self_attn…`) so that checkpoints and peft adapters map by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lmaas.engine.model.attention import PagedAttention
from lmaas.engine.model.layers import Linear, RMSNorm, silu_and_mul
from lmaas.engine.model.model_config import ModelConfig
from lmaas.engine.model.rotary import RotaryEmbedding, apply_rotary

if TYPE_CHECKING:
    from lmaas.engine.forward_batch import ForwardBatch

__all__ = ["LlamaForCausalLM"]


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, index: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        h = config.hidden_size
        parts = [("q_proj", self.q_size), ("k_proj", self.kv_size), ("v_proj", self.kv_size)]
        self.qkv_proj = Linear(h, parts, bias=config.qkv_bias, dtype=dtype, device=device)
        self.o_proj = Linear(
            self.q_size, [("o_proj", h)], bias=config.o_bias, dtype=dtype, device=device
        )
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, index)

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        n = x.shape[0]
        qkv = self.qkv_proj(x, batch)
        # Rotate queries and keys together: one set of element-wise ops for both.
        qk = qkv[:, : self.q_size + self.kv_size].view(n, self.num_heads + self.num_kv_heads, -1)
        qk = apply_rotary(qk, batch.cos, batch.sin)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        v = qkv[:, self.q_size + self.kv_size :].view(n, self.num_kv_heads, self.head_dim)
        return self.o_proj(self.attn(q, k, v, batch), batch)


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device):
        super().__init__()
        i = config.intermediate_size
        self.gate_up_proj = Linear(
            config.hidden_size,
            [("gate_proj", i), ("up_proj", i)],
            bias=config.mlp_bias,
            dtype=dtype,
            device=device,
        )
        self.down_proj = Linear(
            i, [("down_proj", config.hidden_size)], bias=config.mlp_bias, dtype=dtype, device=device
        )

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x, batch)), batch)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype=dtype, device=device)
        self.self_attn = LlamaAttention(config, index, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype=dtype, device=device)
        self.mlp = LlamaMLP(config, dtype, device)

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), batch)
        return x + self.mlp(self.post_attention_layernorm(x), batch)


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device):
        super().__init__()
        # Created empty (no random init to throw away): the loader fills it.
        weight = torch.empty(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.embed_tokens = nn.Embedding.from_pretrained(weight, freeze=True)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, dtype, device) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, device=device)


class LlamaForCausalLM(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        *,
        dtype: torch.dtype,
        device: torch.device,
        max_positions: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        with torch.device(device):
            self.model = LlamaModel(config, dtype, device)
            self.lm_head = (
                None
                if config.tie_word_embeddings
                else nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
            )
            self.rotary = RotaryEmbedding(config, max_positions or config.max_context)
        if self.lm_head is not None:
            self.lm_head.weight.requires_grad_(False)

    @property
    def output_weight(self) -> torch.Tensor:
        head = self.lm_head if self.lm_head is not None else self.model.embed_tokens
        return head.weight

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states (tokens, hidden) after the last layer, before the final norm."""
        x = self.model.embed_tokens(batch.input_ids)
        for layer in self.model.layers:
            x = layer(x, batch)
        return x

    def compute_logits(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """fp32 logits of the selected rows of `hidden`."""
        selected = hidden.index_select(0, rows)
        return F.linear(self.model.norm(selected), self.output_weight).float()
