"""GPU types the planner may buy: price (on-demand and spot), availability, hardware figures.

`default_catalog()` lists seven common types with public list prices. Prices are per GPU
per hour, Linux, US regions, as published on the providers' pricing pages (one GPU's
share of the smallest instance that carries it):

- T4 — AWS g4dn.xlarge, $0.526/h (https://aws.amazon.com/ec2/pricing/on-demand/)
- L4 — Google Cloud g2-standard-4, $0.7068/h (https://cloud.google.com/compute/gpus-pricing)
- A10G — AWS g5.xlarge, $1.006/h (https://aws.amazon.com/ec2/pricing/on-demand/)
- A100-40GB — Google Cloud a2-highgpu-1g, $3.673/h (https://cloud.google.com/compute/gpus-pricing)
- A100-80GB — Azure NC24ads A100 v4, $3.673/h
  (https://azure.microsoft.com/pricing/details/virtual-machines/linux/)
- H100-80GB — Azure NC40ads H100 v5, $6.98/h (same page)
- H200 — Google Cloud a3-ultragpu-8g, $84.81/h ÷ 8 = $10.60/h (https://cloud.google.com/compute/gpus-pricing)

The A10G and A100-80GB prices are the ones the Mélange paper uses ($1.01, $3.67). Spot
prices (AWS https://aws.amazon.com/ec2/spot/pricing/, Google Cloud spot VMs, Azure spot VMs)
move by the hour; the figures here are representative readings (roughly 60 % off), not
quotes. Prices change: put your own in a catalog file (`load_catalog`) before relying on a
plan's dollars. Hardware figures are NVIDIA's data-sheet numbers: dense bf16 tensor FLOP/s
(T4 has no bf16; its fp16 figure is given) and memory bandwidth.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmaas.placement.specs import GIB, ModelSpec

__all__ = [
    "GPU_MEMORY_UTILIZATION",
    "GPUType",
    "default_catalog",
    "fits_model",
    "load_catalog",
    "merge_catalog",
]

# Fraction of device memory an engine may use for weights + KV cache (vLLM's default).
GPU_MEMORY_UTILIZATION = 0.9


class GPUType(BaseModel):
    """One accelerator type; `max_count` None = as many as wanted."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    memory_gib: float | None = Field(default=None, gt=0, description="None = unknown")
    price_per_hour: float = Field(ge=0, description="on-demand $/h")
    spot_price_per_hour: float | None = Field(default=None, ge=0, description="None = no spot")
    max_count: int | None = Field(default=None, ge=0, description="availability limit")
    bf16_tflops: float | None = Field(default=None, gt=0, description="dense bf16 TFLOP/s")
    mem_bandwidth_gbps: float | None = Field(default=None, gt=0, description="GB/s")

    @property
    def has_hardware_figures(self) -> bool:
        return (
            self.memory_gib is not None
            and self.bf16_tflops is not None
            and self.mem_bandwidth_gbps is not None
        )

    def with_defaults(self) -> GPUType:
        """Fill unknown hardware figures from the default catalog entry of the same name."""
        known = {g.name.lower(): g for g in default_catalog()}.get(self.name.lower())
        if known is None:
            return self
        update = {
            field: getattr(known, field)
            for field in ("memory_gib", "bf16_tflops", "mem_bandwidth_gbps")
            if getattr(self, field) is None
        }
        return self.model_copy(update=update) if update else self


def default_catalog() -> list[GPUType]:
    """Seven common GPU types with public list prices (see the module docstring)."""
    rows = [
        # name, GiB, $/h, spot $/h, bf16 TFLOP/s, GB/s
        ("T4", 16, 0.526, 0.21, 65, 320),
        ("L4", 24, 0.7068, 0.28, 121, 300),
        ("A10G", 24, 1.006, 0.40, 70, 600),
        ("A100-40GB", 40, 3.673, 1.47, 312, 1555),
        ("A100-80GB", 80, 3.673, 1.47, 312, 2039),
        ("H100-80GB", 80, 6.98, 2.79, 989, 3350),
        ("H200", 141, 10.60, 4.24, 989, 4800),
    ]
    return [
        GPUType(
            name=name,
            memory_gib=gib,
            price_per_hour=price,
            spot_price_per_hour=spot,
            bf16_tflops=tflops,
            mem_bandwidth_gbps=bandwidth,
        )
        for name, gib, price, spot, tflops, bandwidth in rows
    ]


def fits_model(gpu: GPUType, model: ModelSpec | None) -> bool:
    """Whether one GPU of this type holds the model's weights and some KV cache.

    Unknown memory (or no model) counts as fitting: a profile then decides.
    """
    if model is None or gpu.memory_gib is None:
        return True
    usable = gpu.memory_gib * GIB * GPU_MEMORY_UTILIZATION
    return model.weight_bytes + model.kv_bytes_per_token * 256 <= usable


def merge_catalog(base: Sequence[GPUType], extra: Iterable[GPUType]) -> list[GPUType]:
    """`base` with entries of the same name replaced by `extra`'s, new ones appended."""
    merged = {g.name: g for g in base}
    for gpu in extra:
        merged[gpu.name] = gpu
    return list(merged.values())


def load_catalog(path: str | Path) -> list[GPUType]:
    """GPU types from a YAML or JSON file: a list of entries, or a mapping name → fields.

    Fields not given are taken from the default catalog entry of the same name, so a file
    may only override prices or add a `max_count`.
    """
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the GPU catalog {path}: {exc}") from exc
    if isinstance(raw, dict):
        raw = [{"name": name, **(fields or {})} for name, fields in raw.items()]
    if not isinstance(raw, list):
        raise ValueError(f"{path}: a GPU catalog is a list of types or a mapping name → fields")
    defaults = {g.name.lower(): g for g in default_catalog()}
    types = []
    for entry in raw:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"{path}: every GPU type needs a name, got {json.dumps(entry)}")
        base = defaults.get(str(entry["name"]).lower())
        fields = {**(base.model_dump() if base else {}), **entry}
        try:
            types.append(GPUType(**fields))
        except ValidationError as exc:
            raise ValueError(f"{path}: GPU type {entry['name']!r}: {exc}") from exc
    return types
