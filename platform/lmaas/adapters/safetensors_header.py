"""Read a safetensors file without torch: its header, checked, and single tensors as numpy.

The format: 8 bytes little-endian header length N, N bytes of JSON mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the
header), then the data. A valid file indexes its whole data buffer, without holes or
overlaps, and every tensor's byte length equals its element count times its dtype size.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmaas.adapters.errors import AdapterError

__all__ = [
    "DTYPE_SIZES",
    "SafetensorsError",
    "TensorInfo",
    "read_safetensors_header",
    "read_tensor",
]

DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsError(AdapterError):
    """The weights file is not a valid safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file; `start`/`end` are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _bad(path: Path, why: str) -> SafetensorsError:
    return SafetensorsError(
        f"{path.name} is not a valid safetensors file ({why}): save the adapter with "
        "peft's save_pretrained (safe_serialization=True)",
        code="invalid_safetensors",
    )


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of the safetensors file at `path`, after checking the header's consistency."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _bad(path, "shorter than 8 bytes")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise _bad(path, f"header length {header_len} exceeds the file")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, "header is not JSON") from exc
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise _bad(path, "__metadata__ is not an object")

    data_start = 8 + header_len
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise _bad(path, f"entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _bad(path, f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise _bad(path, f"tensor {name!r} has invalid data offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise _bad(path, f"tensor {name!r}: byte length does not match its shape")
        tensors[name] = TensorInfo(
            name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1]
        )

    cursor = data_start
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != cursor:
            raise _bad(path, "tensors overlap or leave holes in the data")
        cursor = info.end
    if cursor != size:
        raise _bad(path, "trailing bytes after the last tensor")
    return tensors


def read_tensor(path: Path, info: TensorInfo) -> np.ndarray:
    """The tensor `info` of the file at `path` as a numpy array (BF16 widened to float32)."""
    with open(path, "rb") as fh:
        fh.seek(info.start)
        raw = fh.read(info.end - info.start)
    if info.dtype == "BF16":
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return halves.view(np.float32).reshape(info.shape)
    if info.dtype not in _NUMPY_DTYPES:
        raise SafetensorsError(
            f"tensor {info.name!r} has dtype {info.dtype}, which lmaas cannot check: "
            "save adapters in float32, float16 or bfloat16",
            code="unsupported_dtype",
        )
    return np.frombuffer(raw, dtype=np.dtype(_NUMPY_DTYPES[info.dtype]).newbyteorder("<")).reshape(
        info.shape
    )
