"""Build a model from a Hugging Face safetensors folder.

Weights are read with safetensors (memory-mapped) straight into the engine's parameters,
converted to the serving dtype; q/k/v and gate/up are copied into their fused projections
part by part. Checkpoints of transformers and of lmaas' GGUF conversion load the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from lmaas.engine.model.llama import LlamaForCausalLM
from lmaas.engine.model.model_config import ModelConfig, UnsupportedModelError

__all__ = ["check_loaded", "copy_weights", "load_model"]

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
    loaded: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            names = list(f.keys())
            loaded |= copy_weights(
                model, ((n, lambda n=n: f.get_tensor(n)) for n in names), file.name
            )
    check_loaded(model, loaded, folder)
    return model


def copy_weights(
    model: LlamaForCausalLM,
    tensors: Iterable[tuple[str, Callable[[], torch.Tensor]]],
    source: str,
) -> set[str]:
    """Copy checkpoint tensors (name, loader) into `model`'s (fused) parameters; the names
    copied."""
    params = dict(model.named_parameters())
    slices = _fused_slices(model)
    loaded: set[str] = set()
    for name, get in tensors:
        if _SKIP.search(name):
            continue
        target, part = _target(name)
        if target not in params:
            if name == "lm_head.weight" and model.config.tie_word_embeddings:
                continue
            raise UnsupportedModelError(f"{source}: unexpected weight {name!r}")
        tensor = get()
        param = params[target]
        if part is not None:
            offset, size = slices[target][part]
            param = param[offset : offset + size]
        if param.shape != tensor.shape:
            raise UnsupportedModelError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the config "
                f"implies {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(tensor)
        loaded.add(name)
    return loaded


def check_loaded(model: LlamaForCausalLM, loaded: set[str], source: object) -> None:
    """Raise if the checkpoint names `loaded` leave a parameter of `model` unset."""
    missing = _expected(model, model.config) - loaded
    if missing:
        raise UnsupportedModelError(f"{source}: weights missing: {', '.join(sorted(missing)[:5])}")


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
