"""The elementwise kernels of QFT, written once in torch ops and fused by `torch.compile`.

Every kernel works on blocked views ``(rows, num_blocks, block)`` with per-block scales
``(rows, num_blocks, 1)``. Eager torch runs them as a chain of passes over memory; compiled
(inductor: C++/OpenMP on CPU, Triton on CUDA) each becomes one or two fused loops, which
is what makes an integer optimizer step cost about as much as an fp32 one.

Stochastic rounding draws its noise from a counter-based hash of (key, element index)
instead of a stateful generator: the same key gives the same noise in eager and compiled
code, on CPU and CUDA, and a resumed run needs no generator state to reproduce it.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable
from functools import cache
from typing import Any

import torch

__all__ = [
    "QMAX",
    "dequantize_blocks",
    "hash_uniforms",
    "kernel",
    "lion_blocks",
    "lion_outliers_",
    "mix_key",
    "quantize_blocks",
]

log = logging.getLogger(__name__)

QMAX = 127.0
_MASK32 = 0xFFFFFFFF
_HASH_MUL = 0x45D9F3B  # < 2**27: products of 32-bit values stay inside int64
_INDEX_MUL = 0x9E3779B  # < 2**28: index · this stays inside int64 for indices < 2**35
_U16 = 1.0 / 65536.0


def mix_key(*parts: int) -> int:
    """A 31-bit key from integers (splitmix64 steps); e.g. (seed, step, weight)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        x = x * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFF


def hash_uniforms(index: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent U(0, 1) draws (16 bits each, centred: exactly mean ½) per int64
    element index under an int64 scalar key."""
    x = (index * _INDEX_MUL + key) & _MASK32
    x = ((x >> 16) ^ x) * _HASH_MUL & _MASK32
    x = ((x >> 16) ^ x) * _HASH_MUL & _MASK32
    x = ((x >> 16) ^ x) * _HASH_MUL & _MASK32
    x = (x >> 16) ^ x
    low = (x & 0xFFFF).to(torch.float32) * _U16 + 0.5 * _U16
    high = (x >> 16).to(torch.float32) * _U16 + 0.5 * _U16
    return low, high


def _indices(like: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    return (
        torch.arange(like.numel(), device=like.device, dtype=torch.int64).view(like.shape) + offset
    )


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q·scale in `dtype` (q: int8 (n, block); scale: fp32 (n, 1))."""
    return q.to(dtype) * scale.to(dtype)


def quantize_blocks(
    x: torch.Tensor, offset: torch.Tensor, key: torch.Tensor, stochastic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax int8 of `x` (n, block): (q int8 (n, block), scale fp32 (n, 1))."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) / QMAX
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    y = x * inv
    y = torch.floor(y + hash_uniforms(_indices(y, offset), key)[0]) if stochastic else y.round()
    return y.clamp(-QMAX, QMAX).to(torch.int8), scale


def lion_blocks(
    wq: torch.Tensor,
    ws: torch.Tensor,
    mq: torch.Tensor,
    ms: torch.Tensor,
    g: torch.Tensor,
    hyper: torch.Tensor,
    offset: torch.Tensor,
    key: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Lion step on blocks of an int8 weight and its int8 momentum: the new
    (wq, ws, mq, ms).

    Shapes: wq, mq, g (n, block); ws, ms (n, 1). ``hyper`` = [lr, weight_decay, β1, β2]
    (a tensor: changing them recompiles nothing). The weight moves by −lr·(sign(c) + wd·θ)
    in quanta of its block scale, stochastically rounded; a block that would overflow ±127
    (or had scale 0 and now moves) first gets the scale its new values need. The momentum
    is re-quantized with fresh block scales, stochastically rounded.
    """
    lr, wd, beta1, beta2 = hyper[0], hyper[1], hyper[2], hyper[3]
    g = g.float()
    m = mq.float() * ms
    update = torch.sign(beta1 * m + (1.0 - beta1) * g)
    q = wq.float()
    step = -lr * (update + wd * q * ws)
    inv = torch.where(ws > 0, 1.0 / ws, torch.zeros_like(ws))
    x = q + step * inv
    grow = torch.clamp(x.abs().amax(dim=-1, keepdim=True) / QMAX, min=1.0)
    fresh = step.abs().amax(dim=-1, keepdim=True) / QMAX
    zero = ws == 0
    safe = torch.where(fresh > 0, fresh, torch.ones_like(fresh))
    x = torch.where(zero, step / safe, x / grow)
    noise_w, noise_m = hash_uniforms(_indices(x, offset), key)
    m_new = beta2 * m + (1.0 - beta2) * g
    m_scale = m_new.abs().amax(dim=-1, keepdim=True) / QMAX
    m_inv = torch.where(m_scale > 0, 1.0 / m_scale, torch.zeros_like(m_scale))
    return (
        torch.floor(x + noise_w).clamp(-QMAX, QMAX).to(torch.int8),
        torch.where(zero, fresh, ws * grow),
        torch.floor(m_new * m_inv + noise_m).clamp(-QMAX, QMAX).to(torch.int8),
        m_scale,
    )


def lion_outliers_(
    mq: torch.Tensor,
    ms: torch.Tensor,
    g: torch.Tensor,
    local: torch.Tensor,
    vals: torch.Tensor,
    hyper: torch.Tensor,
) -> None:
    """fp32 Lion on the outlier values (in place), from the momentum before its update.

    mq, g: flat (n,); ms: one scale per block, flat; local: flat positions of the outliers
    in this slice. Touches 1% of the entries: plain torch, never compiled.
    """
    lr, wd, beta1 = hyper[0], hyper[1], hyper[2]
    block = mq.numel() // ms.numel()
    m = mq[local].float() * ms[local // block]
    update = torch.sign(beta1 * m + (1.0 - beta1) * g[local].float())
    vals.sub_(lr * (update + wd * vals))


def _can_compile(device_type: str) -> bool:
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return shutil.which("g++") is not None or shutil.which("c++") is not None


@cache
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    # Static shapes except the number of blocks (dim 0 of every tensor argument, marked
    # per call): the block length stays a constant the compiler vectorizes for, and the
    # many row counts of a model share one compiled kernel instead of recompiling.
    with warnings.catch_warnings():  # torch's compiler imports its own deprecated jit parts
        warnings.filterwarnings("ignore", ".*torch.jit.script_method.*", DeprecationWarning)
        import torch._inductor.compile_fx
    compiled = torch.compile(fn, dynamic=False)

    def call(*args: Any) -> Any:
        for a in args:
            if isinstance(a, torch.Tensor) and a.dim() >= 1:
                torch._dynamo.maybe_mark_dynamic(a, 0)
        return compiled(*args)

    return call


def kernel(fn: Callable[..., Any], *, compile: bool, device_type: str) -> Callable[..., Any]:
    """`fn` itself, or its fused compiled version when asked for and the toolchain exists.

    Kernels are pure functions of (n, block)-shaped tensors; callers write results back.
    """
    if compile and _can_compile(device_type):
        return _compiled(fn)
    if compile:
        log.warning("no compiler for %s: QFT kernels run eagerly (slower)", device_type)
    return fn
