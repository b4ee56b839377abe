"""A LoRA adapter in peft format, read from disk and checked against the served model.

A peft adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``
(pickled ``.bin`` files are refused: loading them runs code). Every weight must target a
projection the engine supports (q/k/v/o and gate/up/down), a layer the model has, and the
model's shapes; the rank must not exceed the runtime's maximum. Errors say what is wrong
and how to fix it. The result keeps A (rank, in) and B·scaling (out, rank) per
(layer, target) on the host, ready to be copied into a device slot.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmaas.engine.model.model_config import ModelConfig

__all__ = ["AdapterError", "LoraAdapter", "load_peft_adapter"]

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\."
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.lora_([AB])(?:\.[\w-]+)?\.weight$"
)


class AdapterError(ValueError):
    """The adapter cannot be served by this model; the message says why and what to do."""


@dataclass
class LoraAdapter:
    adapter_id: str
    rank: int
    base_model: str | None
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @property
    def target_modules(self) -> set[str]:
        return {target for _, target in self.weights}

    @property
    def num_bytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return float(value)
    return default


def load_peft_adapter(
    adapter_id: str, folder: Path | str, model: ModelConfig, *, max_rank: int
) -> LoraAdapter:
    """Read and validate a peft LoRA folder for `model`; raises `AdapterError`."""
    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    weights_path = folder / "adapter_model.safetensors"
    if not config_path.is_file():
        raise AdapterError(
            f"adapter {adapter_id!r}: {folder} has no adapter_config.json; save the adapter with "
            "peft's `model.save_pretrained(folder)`"
        )
    if not weights_path.is_file():
        hint = (
            " (found a pickled .bin: re-save with safe_serialization=True)"
            if (folder / "adapter_model.bin").is_file()
            else ""
        )
        raise AdapterError(
            f"adapter {adapter_id!r}: {folder} has no adapter_model.safetensors{hint}"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(
            f"adapter {adapter_id!r}: adapter_config.json is not JSON: {exc}"
        ) from exc
    _check_config(adapter_id, config)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"adapter {adapter_id!r}: cannot read its weights: {exc}") from exc

    base = config.get("base_model_name_or_path")
    targets = model.lora_targets()
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterError(
                f"adapter {adapter_id!r}: weight {key!r} is not a LoRA weight of a supported "
                f"projection; lmaas serves adapters on {', '.join(targets)}"
            )
        layer, target, which = int(match[1]), match[2], match[3]
        if layer >= model.num_layers:
            raise AdapterError(
                f"adapter {adapter_id!r} has weights for layer {layer}, but the served model has "
                f"{model.num_layers} layers: it was trained for another base model ({base})"
            )
        pairs.setdefault((layer, target), {})[which] = tensor
    if not pairs:
        raise AdapterError(f"adapter {adapter_id!r} holds no LoRA weights")

    default_rank = int(config.get("r", 8))
    default_alpha = float(config.get("lora_alpha", default_rank))
    rslora = bool(config.get("use_rslora", False))
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    max_seen = 0
    for (layer, target), ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise AdapterError(
                f"adapter {adapter_id!r}: layer {layer} {target} lacks lora_{missing}"
            )
        a, b = ab["A"], ab["B"]
        in_features, out_features = targets[target]
        rank = a.shape[0]
        if a.shape != (rank, in_features) or b.shape != (out_features, rank):
            raise AdapterError(
                f"adapter {adapter_id!r}: layer {layer} {target} has shapes A {tuple(a.shape)}, "
                f"B {tuple(b.shape)}; the served model needs A (r, {in_features}) and "
                f"B ({out_features}, r). It was trained for another base model ({base})"
            )
        if rank > max_rank:
            raise AdapterError(
                f"adapter {adapter_id!r} has rank {rank}, above this runtime's maximum "
                f"{max_rank} (LMAAS_MAX_LORA_RANK); train it with a smaller r"
            )
        block = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
        module = f"model.layers.{layer}.{block}.{target}"
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, default_alpha)
        configured = _pattern_value(config.get("rank_pattern") or {}, module, default_rank)
        if rank != configured:
            raise AdapterError(
                f"adapter {adapter_id!r}: layer {layer} {target} has rank {rank} but its config "
                f"says r={int(configured)}; re-save the adapter with peft"
            )
        scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        weights[(layer, target)] = (
            a.to(torch.float32).contiguous(),
            (b.to(torch.float32) * scaling).contiguous(),
        )
        max_seen = max(max_seen, rank)
    return LoraAdapter(adapter_id=adapter_id, rank=max_seen, base_model=base, weights=weights)


def _check_config(adapter_id: str, config: dict) -> None:
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise AdapterError(
            f"adapter {adapter_id!r} is a {kind} adapter; lmaas serves LoRA adapters"
        )
    if config.get("use_dora"):
        raise AdapterError(f"adapter {adapter_id!r} uses DoRA, which lmaas does not serve")
    if config.get("bias", "none") != "none":
        raise AdapterError(
            f"adapter {adapter_id!r} trains biases (bias={config['bias']!r}); train with bias='none'"
        )
    if config.get("modules_to_save"):
        raise AdapterError(
            f"adapter {adapter_id!r} replaces whole modules ({config['modules_to_save']}); "
            "lmaas serves adapters that only add LoRA weights"
        )
    if config.get("fan_in_fan_out"):
        raise AdapterError(
            f"adapter {adapter_id!r} uses fan_in_fan_out, which Llama models never need"
        )
