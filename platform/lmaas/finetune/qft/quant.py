"""Integer storage of QFT: blockwise int8 tensors and dense-and-sparse quantized weights.

`BlockInt8` stores a 2-D tensor as int8 with one fp32 scale per block of `block` consecutive
entries of a row (blocks never straddle rows, so a slice of rows dequantizes on its own).
Scales are absmax/127 of each block. `stochastic_round` rounds x down or up with
probabilities that make the result unbiased (E[round(x)] = x): an update far smaller than
one quantum survives in expectation instead of being rounded away (PAPERS.md, trap 1).

`QuantWeight` is a weight matrix stored dense-and-sparse: the `outlier_fraction` entries of
largest magnitude stay in fp32 at their flat indices (sparse), the rest is a `BlockInt8`
(dense; its entries at outlier positions are ignored). Removing the outliers before the scales are taken keeps
the int8 grid fine for the bulk of the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmaas.finetune.qft.kernels import (
    dequantize_blocks,
    hash_uniforms,
    kernel,
    quantize_blocks,
)

__all__ = ["BlockInt8", "QuantWeight", "pick_block_size", "stochastic_round"]


def pick_block_size(cols: int, block_size: int) -> int:
    """The block length for rows of `cols` entries: `block_size` if it divides `cols`, else the
    largest divisor of `cols` not above it (≥ 16), else the whole row."""
    if block_size < 1:
        raise ValueError("block_size must be ≥ 1")
    if cols % block_size == 0:
        return block_size
    for b in range(min(block_size, cols), 15, -1):
        if cols % b == 0:
            return b
    return cols


def stochastic_round(x: torch.Tensor, key: int | None, offset: int = 0) -> torch.Tensor:
    """floor(x + U[0,1)): unbiased rounding to integers (round to nearest if `key` is None).

    The noise of element i is a hash of (key, offset + i): reproducible, no RNG state.
    """
    if key is None:
        return torch.round(x)
    index = torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape) + offset
    return torch.floor(x + hash_uniforms(index, torch.tensor(key, device=x.device))[0])


def _scalar(value: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.int64, device=device)


@dataclass
class BlockInt8:
    """A 2-D tensor as int8 `data` (rows, cols) and fp32 `scale` (rows, cols // block).

    `fused` runs the (de)quantization through the compiled kernels.
    """

    data: torch.Tensor
    scale: torch.Tensor
    fused: bool = False

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def block(self) -> int:
        return self.data.shape[1] // self.scale.shape[1]

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale.numel() * 4

    @classmethod
    def zeros(
        cls, rows: int, cols: int, block: int, device: torch.device | str, fused: bool = False
    ) -> BlockInt8:
        block = pick_block_size(cols, block)
        return cls(
            torch.zeros((rows, cols), dtype=torch.int8, device=device),
            torch.zeros((rows, cols // block), dtype=torch.float32, device=device),
            fused,
        )

    @classmethod
    def quantize(
        cls, x: torch.Tensor, block: int, key: int | None = None, fused: bool = False
    ) -> BlockInt8:
        """Quantize a 2-D tensor (round to nearest, or stochastically under `key`)."""
        if x.dim() != 2:
            raise ValueError("BlockInt8 stores 2-D tensors")
        out = cls.zeros(x.shape[0], x.shape[1], block, x.device, fused)
        out.store_rows_(0, x.shape[0], x, key)
        return out

    def blocks(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of rows [start, stop) as blocks: data (n, block) and scale (n, 1)."""
        return self.data[start:stop].view(-1, self.block), self.scale[start:stop].view(-1, 1)

    def dequantize_rows(
        self, start: int = 0, stop: int | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Rows [start, stop) as `dtype`."""
        q, scale = self.blocks(start, stop)
        fn = kernel(dequantize_blocks, compile=self.fused, device_type=q.device.type)
        return fn(q, scale, dtype).view(-1, self.data.shape[1])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.dequantize_rows(0, None, dtype)

    def store_rows_(self, start: int, stop: int, x: torch.Tensor, key: int | None) -> None:
        """Re-quantize rows [start, stop) from the float tensor `x` with fresh block scales
        (stochastic rounding under `key`, element offsets counted from row `start`)."""
        q, scale = self.blocks(start, stop)
        fn = kernel(quantize_blocks, compile=self.fused, device_type=q.device.type)
        offset = _scalar(start * self.data.shape[1], self.data.device)
        key_t = _scalar(key if key is not None else 0, self.data.device)
        new_q, new_scale = fn(x.reshape(q.shape), offset, key_t, key is not None)
        q.copy_(new_q)
        scale.copy_(new_scale)


@dataclass
class QuantWeight:
    """A weight matrix stored dense (BlockInt8) + sparse (fp32 outliers at flat indices)."""

    dense: BlockInt8
    outlier_idx: torch.Tensor
    outlier_val: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.dense.shape

    @property
    def numel(self) -> int:
        return self.dense.data.numel()

    @property
    def device(self) -> torch.device:
        return self.dense.data.device

    @property
    def nbytes(self) -> int:
        sparse = self.outlier_idx.numel() * self.outlier_idx.element_size()
        return self.dense.nbytes + sparse + self.outlier_val.numel() * 4

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        *,
        outlier_fraction: float = 0.01,
        block_size: int = 64,
        fused: bool = False,
    ) -> QuantWeight:
        """Quantize `weight` (2-D): largest `outlier_fraction` entries kept exactly."""
        if weight.dim() != 2:
            raise ValueError("QuantWeight stores 2-D weights")
        if not 0.0 <= outlier_fraction < 0.5:
            raise ValueError("outlier_fraction must be in [0, 0.5)")
        w = weight.detach().float()
        flat = w.reshape(-1)
        k = round(outlier_fraction * flat.numel())
        index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
        if k > 0:
            idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
            values = flat[idx].clone()
            w = w.clone()
            w.view(-1)[idx] = 0.0
        else:
            idx = torch.zeros(0, dtype=torch.long, device=w.device)
            values = torch.zeros(0, dtype=torch.float32, device=w.device)
        dense = BlockInt8.quantize(w, block_size, fused=fused)
        return cls(dense, idx.to(index_dtype), values)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight in `dtype`: dense part with the outlier values put in place."""
        out = self.dense.dequantize(dtype)
        if self.outlier_idx.numel():
            out.view(-1)[self.outlier_idx] = self.outlier_val.to(dtype)
        return out

    def outlier_range(self, start_row: int, stop_row: int) -> tuple[int, int]:
        """Positions [lo, hi) in the outlier arrays that fall in rows [start_row, stop_row)."""
        cols = self.shape[1]
        bounds = torch.tensor(
            [start_row * cols, stop_row * cols], dtype=self.outlier_idx.dtype, device=self.device
        )
        lo, hi = torch.searchsorted(self.outlier_idx, bounds).tolist()
        return int(lo), int(hi)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors that fully describe this weight (for checkpoints)."""
        return {
            "q": self.dense.data,
            "scale": self.dense.scale,
            "outlier_idx": self.outlier_idx,
            "outlier_val": self.outlier_val,
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Overwrite this weight's storage in place from `state_tensors()` output."""
        if tensors["q"].shape != self.dense.data.shape:
            raise ValueError(
                f"checkpoint weight has shape {tuple(tensors['q'].shape)}, expected "
                f"{tuple(self.dense.data.shape)}"
            )
        self.dense.data.copy_(tensors["q"])
        self.dense.scale.copy_(tensors["scale"])
        self.outlier_idx = tensors["outlier_idx"].to(self.device)
        self.outlier_val = tensors["outlier_val"].to(self.device, torch.float32).clone()
