"""Reading a GGUF file: its metadata and its tensors, without copying the file into memory.

The `gguf` package's reader builds a Python object per element of every array (the
vocabulary, the merges), which takes seconds for a 49k-token vocabulary; this reader
parses the header with `struct` and memory-maps the tensor data, and leaves
dequantization to `gguf.quants.dequantize`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType
from gguf.quants import dequantize

__all__ = ["GgufError", "GgufFile", "GgufTensor"]

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """The file is not a GGUF file this reader understands."""


@dataclass
class GgufTensor:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # numpy order (the GGUF dims reversed)
    data: np.ndarray  # raw bytes, memory-mapped

    def to_numpy(self) -> np.ndarray:
        """The tensor as float32 (dequantized if stored quantized)."""
        kind = GGMLQuantizationType(self.ggml_type)
        if kind is GGMLQuantizationType.F32:
            return self.data.view(np.float32).reshape(self.shape)
        if kind is GGMLQuantizationType.F16:
            return self.data.view(np.float16).reshape(self.shape).astype(np.float32)
        rows = self.data.reshape(prod(self.shape[:-1]) if len(self.shape) > 1 else 1, -1)
        return dequantize(rows, kind).reshape(self.shape).astype(np.float32, copy=False)


class GgufFile:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._blob = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = memoryview(self._blob)
        if bytes(buf[:4]) != b"GGUF":
            raise GgufError(f"{self.path} is not a GGUF file")
        version, num_tensors, num_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise GgufError(f"{self.path}: GGUF version {version} is not supported")
        pos = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(num_kv):
            key, pos = _string(buf, pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            self.metadata[key], pos = _value(buf, pos + 4, kind)
        infos = []
        for _ in range(num_tensors):
            name, pos = _string(buf, pos)
            (ndim,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{ndim}Q", buf, pos + 4)
            ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * ndim)
            pos += 4 + 8 * ndim + 12
            infos.append((name, ggml_type, tuple(reversed(dims)), offset))
        alignment = int(self.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        start = (pos + alignment - 1) // alignment * alignment
        self.tensors: dict[str, GgufTensor] = {}
        for name, ggml_type, shape, offset in infos:
            try:
                block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError) as exc:
                raise GgufError(f"{self.path}: tensor {name} has unknown type {ggml_type}") from exc
            nbytes = prod(shape) // block * size
            data = self._blob[start + offset : start + offset + nbytes]
            self.tensors[name] = GgufTensor(name, ggml_type, shape, data)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", errors="replace"), pos + 8 + n


def _value(buf: memoryview, pos: int, kind: int) -> tuple[Any, int]:
    if kind == _STRING:
        return _string(buf, pos)
    if kind == _ARRAY:
        item_kind, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item_kind in _SCALARS:
            fmt = _SCALARS[item_kind]
            width = struct.calcsize(fmt)
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", buf, pos))
            return values, pos + width * count
        items = []
        for _ in range(count):
            item, pos = _value(buf, pos, item_kind)
            items.append(item)
        return items, pos
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise GgufError(f"unknown GGUF value type {kind}")
    return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
