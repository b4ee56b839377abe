"""Adapters for tests: real peft adapters, hand-written safetensors, and archives of them."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

__all__ = ["make_peft_adapter", "pack_tar", "pack_zip", "write_adapter_files"]


def make_peft_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    rank: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 1,
) -> Path:
    """A peft LoRA adapter over the model in `base_dir` with random (non-zero) A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # make the adapter change the output clearly
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir


def write_adapter_files(
    folder: Path,
    tensors: dict[str, tuple[list[int], list[float] | None]],
    *,
    rank: int,
    base: str | None = None,
    targets: list[str] | None = None,
    extra_config: dict | None = None,
) -> Path:
    """An adapter folder written by hand (float32 tensors; values default to 0.01)."""
    import math
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    header: dict = {}
    data = b""
    for name, (shape, values) in tensors.items():
        count = math.prod(shape)
        vals = values if values is not None else [0.01] * count
        blob = struct.pack(f"<{count}f", *vals)
        header[name] = {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(blob)],
        }
        data += blob
    raw = json.dumps(header).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": targets or ["q_proj"],
        "base_model_name_or_path": base,
        "bias": "none",
    }
    config.update(extra_config or {})
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def pack_tar(
    folder: Path, out: Path, *, prefix: str = "", extra: list[tarfile.TarInfo] | None = None
) -> Path:
    """`folder`'s files as a .tar.gz (under `prefix/` if given), plus raw `extra` members."""
    with tarfile.open(out, "w:gz") as tar:
        for path in _files(folder):
            tar.add(path, arcname=f"{prefix}/{path.name}" if prefix else path.name)
        for member in extra or []:
            data = b"x" * member.size if member.isfile() else None
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def pack_zip(folder: Path, out: Path, *, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in _files(folder):
            zf.write(path, arcname=path.name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out
