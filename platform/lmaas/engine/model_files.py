"""Model files: turn whatever the user points at into a Hugging Face safetensors folder.

A base model is given either as a Hugging Face folder (``config.json``, ``*.safetensors``,
tokenizer files) or as a GGUF file. A GGUF file is dequantized once into a safetensors
folder under ``$LMAAS_HOME/models/`` (with its tokenizer and chat template, both from the
GGUF metadata), so that every later start of a runtime loads plain safetensors in well
under two seconds. Llama and Qwen2 GGUFs with a byte-level BPE vocabulary are converted
directly (`gguf` dequantizes); any other GGUF goes through transformers. The folder is
what every engine — and transformers, the numerical oracle of the tests — loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lmaas.engine.gguf_file import GgufFile

__all__ = ["ModelFilesError", "materialize_model"]

log = logging.getLogger(__name__)

_MARKER = "lmaas-source.json"


class ModelFilesError(ValueError):
    """The model path does not hold a model lmaas can load."""


def _gguf_cache_key(path: Path) -> str:
    st = path.stat()
    ident = f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def materialize_model(path: Path | str, cache_dir: Path | str) -> Path:
    """The Hugging Face folder for `path`, converting a GGUF file on first use.

    Raises `ModelFilesError` if `path` is neither a model folder nor a GGUF file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFilesError(
                f"{path} is a folder without config.json: point LMAAS_BASE_MODEL to a Hugging "
                "Face model folder (config.json + *.safetensors) or to a .gguf file"
            )
        return path
    if not path.is_file():
        raise ModelFilesError(f"model path {path} does not exist")
    if path.suffix.lower() != ".gguf":
        raise ModelFilesError(f"{path} is not a .gguf file nor a model folder")

    target = Path(cache_dir).expanduser() / f"{path.stem}-{_gguf_cache_key(path)}"
    if (target / _MARKER).is_file():
        return target
    _convert_gguf(path, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize `gguf_path` into a safetensors folder at `target` (atomically)."""
    log.info("converting %s to safetensors (once; later starts load the copy)", gguf_path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        gguf = GgufFile(gguf_path)
        if gguf.get("general.architecture") in _ARCHITECTURES and (
            gguf.get("tokenizer.ggml.model") == "gpt2"
        ):
            _write_from_gguf(gguf, tmp)
        else:
            _write_with_transformers(gguf_path, tmp)
        (tmp / _MARKER).write_text(json.dumps({"gguf": str(gguf_path)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# GGUF architecture → (transformers class, model_type, whether llama.cpp permuted q/k).
_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _write_from_gguf(gguf: GgufFile, folder: Path) -> None:
    """config.json, model.safetensors and tokenizer files from the GGUF alone."""
    import torch
    from rich.progress import Progress
    from safetensors.torch import save_file

    arch = gguf.get("general.architecture")
    hf_class, model_type, permuted = _ARCHITECTURES[arch]
    config = _config(gguf, hf_class, model_type)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    tensors = {}
    with Progress(transient=True) as progress:
        task = progress.add_task(f"dequantizing {gguf.path.name}", total=len(gguf.tensors))
        for name, tensor in gguf.tensors.items():
            hf_name = _hf_name(name)
            weights = tensor.to_numpy()
            if permuted and (".attn_q." in name or ".attn_k." in name):
                weights = _unpermute(weights, heads if ".attn_q." in name else kv_heads)
            tensors[hf_name] = torch.from_numpy(weights.copy())
            progress.advance(task)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    generation = {
        k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    _write_tokenizer(gguf, folder, config["max_position_embeddings"])


def _hf_name(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise ModelFilesError(f"unexpected GGUF tensor {name!r}")


def _unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k rows (interleaved rotary pairs → halves)."""
    half = weights.shape[0] // heads // 2
    shaped = weights.reshape(heads, half, 2, *weights.shape[1:])
    return shaped.swapaxes(1, 2).reshape(weights.shape)


def _config(gguf: GgufFile, hf_class: str, model_type: str) -> dict:
    arch = gguf.get("general.architecture")

    def key(name: str, default=None):
        return gguf.get(f"{arch}.{name}", default)

    tokens = gguf.get("tokenizer.ggml.tokens") or []
    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    config = {
        "architectures": [hf_class],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(key("attention.key_length", key("rope.dimension_count", hidden // heads))),
        "max_position_embeddings": int(key("context_length", 2048)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "vocab_size": int(key("vocab_size", len(tokens))),
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    scaling = key("rope.scaling.type")
    if scaling in ("linear", "yarn"):
        config["rope_scaling"] = {
            "rope_type": scaling,
            "factor": float(key("rope.scaling.factor", 1.0)),
            "original_max_position_embeddings": int(
                key("rope.scaling.original_context_length", config["max_position_embeddings"])
            ),
        }
    for name, gguf_key in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):  # fmt: skip
        value = gguf.get(f"tokenizer.ggml.{gguf_key}_token_id")
        if value is not None:
            config[name] = int(value)
    return config


def _write_tokenizer(gguf: GgufFile, folder: Path, context: int) -> None:
    """A byte-level BPE tokenizer (GGUF ``gpt2`` model) as tokenizer.json + config + template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens: list[str] = gguf.get("tokenizer.ggml.tokens")
    types: list[int] = gguf.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in gguf.get("tokenizer.ggml.merges") or []]
    tokenizer = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if gguf.get("tokenizer.ggml.pre") == "smollm":  # llama.cpp's "smollm": digits one by one
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    # Control (3) and user-defined (4) tokens are matched whole, before BPE.
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types, strict=False) if k in (3, 4)]  # fmt: skip
    tokenizer.add_special_tokens(special)
    tokenizer.save(str(folder / "tokenizer.json"))

    def token(kind: str) -> str | None:
        index = gguf.get(f"tokenizer.ggml.{kind}_token_id")
        return tokens[index] if index is not None and index < len(tokens) else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": bool(gguf.get("tokenizer.ggml.add_bos_token", False)),
        "model_max_length": context,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    template = gguf.get("tokenizer.chat_template")
    if template:
        (folder / "chat_template.jinja").write_text(template)


def _write_with_transformers(gguf_path: Path, folder: Path) -> None:
    """Any other GGUF transformers can read: convert through it (slower, but general)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parent, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(parent, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(parent, gguf_file=name, dtype=torch.float32)
    # The weights are dequantized: drop the GGUF quantizer marker so that loaders treat
    # the copy as a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
