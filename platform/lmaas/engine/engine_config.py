"""The engine's configuration, resolved once from `lmaas.config.Settings`.

Turns the deployment's settings into concrete choices: the model folder (a GGUF file is
converted once), the device and dtype (`auto`: CUDA if present; bfloat16 where the
hardware supports it), the cache budget, batch limits and the LoRA bank's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmaas.config import Settings

__all__ = ["EngineConfig", "available_host_memory", "resolve_device", "resolve_dtype"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("LMAAS_DEVICE=cuda but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        dtype = _DTYPES[name]
        if device.type == "cpu" and dtype is torch.float16:
            raise ValueError("float16 is not supported on CPU: use bfloat16 or float32")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def available_host_memory() -> int:
    """Bytes of host memory that can be had without swapping: MemAvailable (free memory plus
    reclaimable page cache), which on a long-running machine is far above the free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 << 30


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", " bf16"))


@dataclass
class EngineConfig:
    model_path: Path
    model_name: str = "model"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    block_size: int = 16
    kv_cache_bytes: int = 0
    max_num_seqs: int = 64
    max_batched_tokens: int = 512
    max_model_len: int | None = None
    lora_slots: int = 16
    lora_host_pool: int = 64
    max_lora_rank: int = 64
    lora_loads_per_step: int = 4
    vtc_input_weight: float = 1.0
    vtc_output_weight: float = 2.0
    adapter_cache_dir: Path | None = None
    threads: int = 0
    # Speculative decoding (`lmaas.engine.speculator`): off unless max_k > 0.
    speculation: str = "smartspec"
    speculation_max_k: int = 0
    speculation_proposer: str = "auto"  # draft | prompt_lookup | auto
    draft_url: str | None = None  # draft versions root (LATEST) or one draft folder

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        from lmaas.engine.model_files import materialize_model

        device = resolve_device(settings.device)
        return cls(
            model_path=materialize_model(settings.resolved_base_model, settings.model_cache_dir),
            model_name=settings.model_name,
            device=device,
            dtype=resolve_dtype(settings.dtype, device),
            kv_cache_bytes=settings.kv_cache_bytes,
            max_num_seqs=settings.max_num_seqs,
            max_batched_tokens=settings.max_batched_tokens,
            lora_slots=settings.lora_slots,
            lora_host_pool=settings.lora_host_pool,
            max_lora_rank=settings.max_lora_rank,
            adapter_cache_dir=settings.home / "adapter-cache",
            threads=settings.engine_threads,
            speculation=settings.speculation,
            speculation_max_k=settings.speculation_max_k,
            speculation_proposer=settings.speculation_proposer,
            draft_url=settings.resolved_draft_url,
        )

    def cache_budget(self, model_bytes: int) -> int:
        """Bytes for the KV cache: the setting, or a share of the free memory."""
        if self.kv_cache_bytes > 0:
            return self.kv_cache_bytes
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.8)
        return int(min(2 << 30, available_host_memory() * 0.25))
