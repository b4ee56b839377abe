"""Checkpoints of a training run: one folder per step, written atomically; resume.

Layout under ``<work_dir>/checkpoints/``::

    step-00000050/
        tensors.safetensors   model states of the method (LoRA: adapter weights; QFT: int8
                              weights, scales, outliers, int8 momentum, small params)
        state.pt              optimizer state and RNG states (torch.save; loaded weights_only)
        meta.json             step, metrics, run fingerprint (written last: marks complete)
    latest                    name of the newest complete checkpoint

A checkpoint is written into a temporary folder, fsynced and renamed, then `latest` is
replaced atomically; a process killed at any instant leaves either the previous or the
new checkpoint, never a torn one. The fingerprint (hyperparameters + data + base model)
refuses to resume a folder that belongs to another run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["CheckpointData", "CheckpointError", "CheckpointStore", "capture_rng", "restore_rng"]

_PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be resumed (another run's, or unreadable)."""


@dataclass
class CheckpointData:
    step: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]
    path: Path


def capture_rng() -> dict[str, Any]:
    """The RNG states training touches: torch CPU, every CUDA device, Python's `random`."""
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class CheckpointStore:
    """The checkpoints folder of one run."""

    def __init__(self, folder: Path | str, fingerprint: str, keep: int = 2) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.keep = max(1, keep)

    def _complete(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [
            p
            for p in self.folder.iterdir()
            if p.is_dir() and p.name.startswith(_PREFIX) and (p / "meta.json").is_file()
        ]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, if any."""
        pointer = self.folder / "latest"
        if pointer.is_file():
            candidate = self.folder / pointer.read_text().strip()
            if (candidate / "meta.json").is_file():
                return candidate
        complete = self._complete()
        return complete[-1] if complete else None

    def save(
        self,
        step: int,
        tensors: dict[str, torch.Tensor],
        state: dict[str, Any],
        meta: dict[str, Any],
    ) -> Path:
        """Write the checkpoint of `step` (steps completed) atomically; drop old ones."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{_PREFIX}{step:08d}"
        final = self.folder / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.folder))
        try:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                tmp / "tensors.safetensors",
            )
            torch.save(state, tmp / "state.pt")
            record = {"step": step, "fingerprint": self.fingerprint, **meta}
            (tmp / "meta.json").write_text(json.dumps(record, indent=1, sort_keys=True))
            for f in tmp.iterdir():
                _fsync_file(f)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pointer_tmp = self.folder / ".latest.tmp"
        pointer_tmp.write_text(name)
        _fsync_file(pointer_tmp)
        os.replace(pointer_tmp, self.folder / "latest")
        _fsync_dir(self.folder)
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stray in self.folder.glob(f".{_PREFIX}*"):
            if stray.is_dir():
                shutil.rmtree(stray, ignore_errors=True)
        return final

    def load(self, path: Path, device: torch.device | str = "cpu") -> CheckpointData:
        """Read a checkpoint; `CheckpointError` if it belongs to another run."""
        try:
            meta = json.loads((path / "meta.json").read_text())
            if meta.get("fingerprint") != self.fingerprint:
                raise CheckpointError(
                    f"checkpoint {path} belongs to another run (different hyperparameters, "
                    "data or base model): use a fresh work folder"
                )
            tensors = load_file(path / "tensors.safetensors", device=str(device))
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
        return CheckpointData(int(meta["step"]), tensors, state, meta, path)
