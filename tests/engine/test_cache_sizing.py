"""The KV cache sized from the memory budget when LMAAS_KV_CACHE_BYTES is not set."""

from __future__ import annotations

import pytest
import torch

from lmaas.engine import engine_config
from tests.engine.conftest import make_engine


def test_available_memory_counts_reclaimable_cache() -> None:
    with open("/proc/meminfo") as f:
        meminfo = f.read()
    free_kib = int(next(x for x in meminfo.splitlines() if x.startswith("MemFree:")).split()[1])
    assert engine_config.available_host_memory() >= free_kib * 1024


def test_the_cache_holds_a_full_context_sequence_even_when_memory_is_short(
    tiny_models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host with little memory available and a large LoRA bank reservation still gets a
    cache for one sequence at full context, never a budget below zero (a start-up crash)."""
    monkeypatch.setattr(engine_config, "available_host_memory", lambda: 64 << 10)
    engine = make_engine(
        tiny_models("llama-tied"), torch.device("cpu"), kv_cache_bytes=0, max_lora_rank=64
    )
    runner = engine.runner
    blocks_for_one = -(-runner.max_model_len // runner.config.block_size)
    assert runner.kv_cache.num_blocks >= blocks_for_one


def test_a_generous_budget_is_capped_by_what_the_sequences_can_use(tiny_models) -> None:
    engine = make_engine(tiny_models("llama-tied"), torch.device("cpu"), kv_cache_bytes=1 << 30)
    runner = engine.runner
    most = runner.config.max_num_seqs * -(-runner.max_model_len // runner.config.block_size)
    assert runner.kv_cache.num_blocks == most
