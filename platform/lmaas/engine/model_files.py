"""Model files: turn whatever the user points at into a Hugging Face safetensors folder.

A base model is given either as a Hugging Face folder (``config.json``, ``*.safetensors``,
tokenizer files) or as a GGUF file. A GGUF file is dequantized once into a safetensors
folder under ``$LMAAS_HOME/models/`` (with its tokenizer and chat template), so that every
later start of a runtime loads plain safetensors in well under two seconds. The folder is
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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once; later starts load the copy)", gguf_path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The weights are dequantized: drop the GGUF quantizer marker so that loaders treat
        # the copy as a plain checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"gguf": str(gguf_path)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
