"""What a LoRA adapter is (from its files) and whether it fits a base model.

`parse_adapter` reads ``adapter_config.json`` and the safetensors header (never torch) into
an `AdapterSpec`; `validate_adapter` checks it against the `RuntimeInfo` of the base model:
the tensors, not the config's claims, decide which modules and layers are targeted, and
every ``lora_A`` must be ``[rank, in_features]`` and every ``lora_B`` ``[out_features, rank]``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmaas.adapters.archive import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lmaas.adapters.errors import AdapterError
from lmaas.adapters.safetensors_header import TensorInfo, read_safetensors_header
from lmaas.protocol import RuntimeInfo

__all__ = ["AdapterSpec", "AdapterValidationError", "parse_adapter", "validate_adapter"]

_MAX_CONFIG_BYTES = 1024 * 1024
_FLOAT_DTYPES = frozenset({"F32", "F16", "BF16"})
# peft names: base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
_TENSOR = re.compile(
    r"^base_model\.model\.(?:model\.)?layers\.(?P<layer>\d+)\.(?:[A-Za-z0-9_]+\.)*?"
    r"(?P<module>[A-Za-z0-9_]+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$"
)
# Config options that change what the weights mean and that lmaas engines do not implement.
_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA (use_dora)",
    "modules_to_save": "full copies of modules (modules_to_save)",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "fan_in_fan_out": "fan_in_fan_out layers",
    "lora_bias": "LoRA biases (lora_bias)",
    "layer_replication": "layer replication",
    "target_parameters": "targeting parameters (target_parameters)",
    "trainable_token_indices": "trainable token indices",
    "use_qalora": "QA-LoRA",
}


class AdapterValidationError(AdapterError):
    """The adapter's config or weights do not describe a LoRA adapter for the base model."""


@dataclass(frozen=True)
class AdapterSpec:
    """A LoRA adapter as read from its files."""

    rank: int
    alpha: float
    use_rslora: bool
    base_model_name: str | None
    target_modules: list[str]
    layers: list[int]
    tensors: dict[str, TensorInfo] = field(repr=False)
    config: dict[str, Any] = field(repr=False)

    @property
    def scaling(self) -> float:
        """The factor LoRA's output is multiplied by (alpha/r, or alpha/sqrt(r) with rsLoRA)."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def _invalid(message: str, code: str = "invalid_adapter_config") -> AdapterValidationError:
    return AdapterValidationError(message, code=code)


def _read_config(path: Path) -> dict[str, Any]:
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise _invalid(f"{ADAPTER_CONFIG} is larger than 1 MiB: it is not a peft adapter config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"{ADAPTER_CONFIG} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise _invalid(f"{ADAPTER_CONFIG} must be a JSON object")
    return config


def _check_config(config: dict[str, Any]) -> tuple[int, float, bool]:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise _invalid(
            f"{ADAPTER_CONFIG} has peft_type {config.get('peft_type')!r}: only LoRA adapters "
            "(peft_type 'LORA') are supported"
        )
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise _invalid(f"{ADAPTER_CONFIG} has rank r={rank!r}: it must be a positive integer")
    alpha = config.get("lora_alpha", 8)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise _invalid(f"{ADAPTER_CONFIG} has lora_alpha={alpha!r}: it must be a positive number")
    if config.get("bias", "none") != "none":
        raise _invalid(f"{ADAPTER_CONFIG} trains biases (bias={config['bias']!r}): use bias='none'")
    for key, what in _UNSUPPORTED_OPTIONS.items():
        if config.get(key):
            raise _invalid(f"{ADAPTER_CONFIG} uses {what}, which lmaas does not serve")
    return rank, float(alpha), bool(config.get("use_rslora", False))


def parse_adapter(folder: Path) -> AdapterSpec:
    """Read the adapter in `folder` (its config and its safetensors header)."""
    config = _read_config(folder / ADAPTER_CONFIG)
    rank, alpha, use_rslora = _check_config(config)
    tensors = read_safetensors_header(folder / ADAPTER_WEIGHTS)
    if not tensors:
        raise _invalid(f"{ADAPTER_WEIGHTS} holds no tensors", code="invalid_adapter_weights")

    pairs: dict[tuple[int, str], set[str]] = {}
    for name, info in tensors.items():
        match = _TENSOR.match(name)
        if match is None:
            raise _invalid(
                f"unexpected tensor {name!r} in {ADAPTER_WEIGHTS}: only lora_A/lora_B weights "
                "of the decoder layers' linear modules are supported",
                code="invalid_adapter_weights",
            )
        if info.dtype not in _FLOAT_DTYPES:
            raise _invalid(
                f"tensor {name!r} has dtype {info.dtype}: use float32, float16 or bfloat16",
                code="invalid_adapter_weights",
            )
        pairs.setdefault((int(match["layer"]), match["module"]), set()).add(match["ab"])
    for (layer, module), halves in pairs.items():
        if halves != {"A", "B"}:
            raise _invalid(
                f"layer {layer} {module} has lora_{next(iter(halves))} without its "
                f"lora_{({'A', 'B'} - halves).pop()}: the weights file is incomplete",
                code="invalid_adapter_weights",
            )
    base = config.get("base_model_name_or_path")
    return AdapterSpec(
        rank=rank,
        alpha=alpha,
        use_rslora=use_rslora,
        base_model_name=str(base) if base else None,
        target_modules=sorted({module for _, module in pairs}),
        layers=sorted({layer for layer, _ in pairs}),
        tensors=tensors,
        config=config,
    )


def _normalise(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def _same_base(claimed: str, served: str) -> bool:
    """Whether the config's base model name names the served model.

    Hub ids (``HuggingFaceTB/SmolLM2-135M-Instruct``) and local folders are compared by
    their last path component, case-insensitively; a suffix after a separator is allowed
    (``SmolLM2-135M-Instruct.Q4_1-…``, the converted GGUF folder).
    """
    claimed, served = _normalise(claimed), _normalise(served)
    return claimed == served or (claimed.startswith(served) and not claimed[len(served)].isalnum())


def validate_adapter(spec: AdapterSpec, info: RuntimeInfo, *, max_rank: int) -> None:
    """Raise `AdapterValidationError` unless `spec` fits the base model described by `info`."""
    limit = min(max_rank, info.max_lora_rank)
    if spec.rank > limit:
        raise AdapterValidationError(
            f"the adapter's rank is {spec.rank} but the largest rank served is {limit}: "
            f"train with r <= {limit}",
            code="rank_too_large",
        )
    if spec.base_model_name and not _same_base(spec.base_model_name, info.model):
        raise AdapterValidationError(
            f"the adapter was trained on {spec.base_model_name!r}, not on {info.model!r}: "
            "upload it for its own base model (or fix base_model_name_or_path in "
            f"{ADAPTER_CONFIG} if the model is the same)",
            code="base_model_mismatch",
        )
    declared = spec.config.get("target_modules")
    names = set(declared) if isinstance(declared, list) else set()
    unknown = sorted((names | set(spec.target_modules)) - set(info.lora_targets))
    if unknown:
        raise AdapterValidationError(
            f"the adapter targets {', '.join(unknown)}, which {info.model} cannot serve; "
            f"supported target modules: {', '.join(sorted(info.lora_targets))}",
            code="unsupported_target_module",
        )
    for name, tensor in spec.tensors.items():
        match = _TENSOR.match(name)
        if match is None:  # pragma: no cover - parse_adapter rejected it
            continue
        layer, module = int(match["layer"]), match["module"]
        if layer >= info.num_layers:
            raise AdapterValidationError(
                f"tensor {name!r} is for layer {layer} but {info.model} has "
                f"{info.num_layers} layers: this adapter was trained for another model",
                code="shape_mismatch",
            )
        target = info.lora_targets[module]
        want = (
            (spec.rank, target.in_features)
            if match["ab"] == "A"
            else (target.out_features, spec.rank)
        )
        if tensor.shape != want:
            raise AdapterValidationError(
                f"tensor {name!r} has shape {list(tensor.shape)} but {info.model} with rank "
                f"{spec.rank} needs {list(want)}: this adapter was trained for another model "
                "or its rank differs from r in adapter_config.json",
                code="shape_mismatch",
            )
