"""Runs the model: owns the weights, the KV cache and the LoRA bank on the device.

`forward` takes the scheduler's chosen work, lays it out (`build_forward_batch`), runs the
model and returns the fp32 logits of the rows the step samples from.
"""

from __future__ import annotations

import logging
import time

import torch

from lmaas.engine.engine_config import EngineConfig
from lmaas.engine.forward_batch import ForwardBatch, build_forward_batch
from lmaas.engine.kv_cache import KVCache, kv_bytes_per_block
from lmaas.engine.lora.layers import attach_lora
from lmaas.engine.lora.manager import LoraManager
from lmaas.engine.model.loader import load_model
from lmaas.engine.scheduler import ScheduledSeq

__all__ = ["ModelRunner"]

log = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device, self.dtype = config.device, config.dtype
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        started = time.perf_counter()
        self.model = load_model(
            config.model_path, dtype=self.dtype, device=self.device, max_positions=None
        )
        self.model.eval()
        self.model_config = self.model.config
        self.max_model_len = min(
            config.max_model_len or self.model_config.max_context, self.model_config.max_context
        )
        self.load_seconds = time.perf_counter() - started
        self.lora: LoraManager | None = None
        if config.lora_slots > 0:
            self.lora = LoraManager(
                self.model_config,
                num_slots=config.lora_slots,
                host_pool_size=config.lora_host_pool,
                max_rank=config.max_lora_rank,
                dtype=self.dtype,
                device=self.device,
                max_loads_per_step=config.lora_loads_per_step,
            )
            attach_lora(self.model, self.lora.bank)
        model_bytes = sum(p.nbytes for p in self.model.parameters())
        budget = config.cache_budget(model_bytes)
        per_block = kv_bytes_per_block(self.model_config, config.block_size, self.dtype)
        if config.kv_cache_bytes == 0 and self.lora is not None:
            # Leave room for the LoRA bank at its largest (it grows as adapters arrive), but
            # keep a cache that holds at least one sequence at full context.
            floor = per_block * -(-self.max_model_len // config.block_size)
            budget = max(budget - self.lora.bank.bytes_for_rank(config.max_lora_rank), floor)
        # More blocks than every sequence at full context could use would be wasted memory.
        most = config.max_num_seqs * (-(-self.max_model_len // config.block_size))
        num_blocks = min(budget // per_block, most)
        if num_blocks < 1:
            raise ValueError(
                f"a KV cache budget of {budget} bytes holds no block ({per_block} bytes): "
                "raise LMAAS_KV_CACHE_BYTES"
            )
        self.kv_cache = KVCache(
            self.model_config,
            num_blocks=num_blocks,
            block_size=config.block_size,
            dtype=self.dtype,
            device=self.device,
        )
        log.info(
            "model loaded in %.2fs: %s on %s, KV cache %d blocks × %d tokens (%.0f MiB)",
            self.load_seconds,
            self.dtype,
            self.device,
            num_blocks,
            config.block_size,
            self.kv_cache.num_bytes / 2**20,
        )

    def prepare(self, items: list[ScheduledSeq]) -> ForwardBatch:
        return build_forward_batch(
            items,
            kv_cache=self.kv_cache,
            rotary=self.model.rotary,
            dtype=self.dtype,
            device=self.device,
        )

    @torch.inference_mode()
    def forward(self, items: list[ScheduledSeq]) -> tuple[ForwardBatch, torch.Tensor]:
        """Run one step: the laid-out batch (its `items` order) and fp32 logits of its
        `logits_indices` rows."""
        batch = self.prepare(items)
        hidden = self.model(batch)
        return batch, self.model.compute_logits(hidden, batch.logits_indices)
