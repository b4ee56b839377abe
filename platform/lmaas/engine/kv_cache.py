"""The paged KV cache tensors, sized from a memory budget.

One tensor holds every layer's keys and values: (layers, 2, blocks, block_size, kv_heads,
head_dim). `BlockManager` decides which blocks a sequence owns; the attention layers read
and write them through the step's `ForwardBatch`.
"""

from __future__ import annotations

import torch

from lmaas.engine.model.model_config import ModelConfig

__all__ = ["KVCache", "kv_bytes_per_block"]


def kv_bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return config.num_layers * 2 * block_size * config.num_kv_heads * config.head_dim * element


class KVCache:
    def __init__(
        self,
        config: ModelConfig,
        *,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.tensor = torch.zeros(
            config.num_layers,
            2,
            num_blocks,
            block_size,
            config.num_kv_heads,
            config.head_dim,
            dtype=dtype,
            device=device,
        )

    @classmethod
    def from_budget(
        cls,
        config: ModelConfig,
        *,
        budget_bytes: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        per_block = kv_bytes_per_block(config, block_size, dtype)
        num_blocks = budget_bytes // per_block
        if num_blocks < 1:
            raise ValueError(
                f"a KV cache budget of {budget_bytes} bytes holds no block of {block_size} tokens "
                f"({per_block} bytes each): raise LMAAS_KV_CACHE_BYTES"
            )
        return cls(config, num_blocks=num_blocks, block_size=block_size, dtype=dtype, device=device)

    @property
    def num_bytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer `index`, each (blocks, block_size, kv_heads, head_dim)."""
        return self.tensor[index, 0], self.tensor[index, 1]
