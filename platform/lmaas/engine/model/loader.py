"""Build a model from a Hugging Face safetensors folder.

Weights are read with safetensors (memory-mapped) straight into the engine's parameters,
converted to the serving dtype; q/k/v and gate/up are copied into their fused projections
part by part. Checkpoints of transformers and of lmaas' GGUF conversion load the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open

from lmaas.engine.model.llama import LlamaForCausalLM
from lmaas.engine.model.model_config import ModelConfig, UnsupportedModelError

__all__ = ["load_model"]

_FUSED = {
    "q_proj": "qkv_proj",
    "k_proj": "qkv_proj",
    "v_proj": "qkv_proj",
    "gate_proj": "gate_up_proj",
    "up_proj": "gate_up_proj",
}
_SKIP = re.compile(r"rotary_emb\.inv_freq$")


def load_model(
    folder: Path | str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int | None = None,
) -> LlamaForCausalLM:
    folder = Path(folder)
    config = ModelConfig.from_folder(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(f"{folder} holds no *.safetensors weights")
    model = LlamaForCausalLM(config, dtype=dtype, device=device, max_positions=max_positions)
    params = dict(model.named_parameters())
    slices = _fused_slices(model)
    loaded: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if _SKIP.search(name):
                    continue
                target, part = _target(name)
                if target not in params:
                    if name == "lm_head.weight" and config.tie_word_embeddings:
                        continue
                    raise UnsupportedModelError(f"{file.name}: unexpected weight {name!r}")
                tensor = f.get_tensor(name)
                param = params[target]
                if part is not None:
                    offset, size = slices[target][part]
                    param = param[offset : offset + size]
                if param.shape != tensor.shape:
                    raise UnsupportedModelError(
                        f"{file.name}: {name} has shape {tuple(tensor.shape)}, the config "
                        f"implies {tuple(param.shape)}"
                    )
                param.copy_(tensor)
                loaded.add(name)
    missing = _expected(model, config) - loaded
    if missing:
        raise UnsupportedModelError(f"{folder}: weights missing: {', '.join(sorted(missing)[:5])}")
    return model


def _target(name: str) -> tuple[str, str | None]:
    for part, fused in _FUSED.items():
        marker = f".{part}."
        if marker in name:
            return name.replace(marker, f".{fused}."), part
    return name, None


def _fused_slices(model: LlamaForCausalLM) -> dict[str, dict[str, tuple[int, int]]]:
    slices: dict[str, dict[str, tuple[int, int]]] = {}
    for module_name, module in model.named_modules():
        parts = getattr(module, "output_slices", None)
        if parts and len(parts) > 1:
            for suffix in ("weight", "bias"):
                slices[f"{module_name}.{suffix}"] = {p: (o, s) for p, o, s in parts}
    return slices


def _expected(model: LlamaForCausalLM, config: ModelConfig) -> set[str]:
    names = set()
    for name, _ in model.named_parameters():
        target, _ = name, None
        if ".qkv_proj." in name:
            names.update(
                name.replace(".qkv_proj.", f".{p}.") for p in ("q_proj", "k_proj", "v_proj")
            )
        elif ".gate_up_proj." in name:
            names.update(name.replace(".gate_up_proj.", f".{p}.") for p in ("gate_proj", "up_proj"))
        else:
            names.add(target)
    return names
