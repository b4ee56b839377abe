"""The QFT optimizer: Lion over integer states, applied layer by layer inside backward.

Lion (β1, β2): c = β1·m + (1−β1)·g;  θ ← θ − η·(sign(c) + λ·θ);  m ← β2·m + (1−β2)·g.

For every `QuantWeight` the momentum is a `BlockInt8` (blockwise scales, stochastic
rounding). A layer's backward hands its gradient over as a `GradSource` that yields the
gradient a slice of rows at a time; the update runs on that slice in fp32 and writes the
int8 weight back with stochastic rounding, so neither a full fp32 gradient nor an fp32
master weight ever exists. A weight used several times in one forward (tied embeddings)
keeps the earlier contributions in an int8 stash until the last one arrives.

Small parameters (norm weights, biases: ~0.05% of a Llama) stay fp32 and get plain Lion at
`end_step()`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch

from lmaas.finetune.qft.kernels import kernel, lion_blocks, lion_outliers_, mix_key
from lmaas.finetune.qft.quant import BlockInt8, QuantWeight

__all__ = ["DenseGrad", "EmbeddingGrad", "GradSource", "LinearGrad", "QFTLion", "lion_reference"]


class GradSource(Protocol):
    """A weight gradient that can be produced a slice of rows at a time."""

    def rows(self, start: int, stop: int) -> torch.Tensor: ...


class DenseGrad:
    """A gradient already materialised."""

    def __init__(self, grad: torch.Tensor) -> None:
        self.grad = grad

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.grad[start:stop]


class LinearGrad:
    """dW = gᵀ·x of a linear layer (g: N×out, x: N×in), computed per slice of output rows."""

    def __init__(self, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
        self.grad_out = grad_out
        self.inputs = inputs

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.grad_out[:, start:stop].t() @ self.inputs


class EmbeddingGrad:
    """dW of an embedding lookup: the output gradients summed into the rows of their ids."""

    def __init__(self, ids: torch.Tensor, grad_out: torch.Tensor, cols: int) -> None:
        self.ids, order = ids.reshape(-1).sort()
        self.grad_out = grad_out.reshape(-1, cols)[order]
        self.cols = cols

    def rows(self, start: int, stop: int) -> torch.Tensor:
        out = torch.zeros((stop - start, self.cols), dtype=torch.float32, device=self.ids.device)
        bounds = torch.tensor([start, stop], dtype=self.ids.dtype, device=self.ids.device)
        lo, hi = torch.searchsorted(self.ids, bounds).tolist()
        if hi > lo:
            out.index_add_(0, self.ids[lo:hi] - start, self.grad_out[lo:hi].float())
        return out


class QFTLion:
    """Lion over `QuantWeight`s (int8 weight, int8 momentum) and fp32 small parameters.

    Call `begin_step()` before the forward, run forward + backward (updates happen inside
    backward), then `end_step()`. `lr` may be changed between steps. One forward and one
    backward per step: no gradient accumulation over micro-batches and no activation
    checkpointing (a recomputed forward would count as a second use of each weight).
    """

    def __init__(
        self,
        weights: dict[str, QuantWeight],
        small_params: dict[str, torch.nn.Parameter] | None = None,
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        seed: int = 0,
        fused: bool = False,
        chunk_numel: int = 1 << 22,
    ) -> None:
        if not weights:
            raise ValueError("QFTLion needs at least one quantized weight")
        self.weights = dict(weights)
        self.small_params = dict(small_params or {})
        self.lr = lr
        self.betas = betas
        self.weight_decay = weight_decay
        self.chunk_numel = chunk_numel
        self.seed = seed
        self.fused = fused
        self.momentum = {
            name: BlockInt8.zeros(*w.shape, w.dense.block, w.device, fused)
            for name, w in self.weights.items()
        }
        self._index = {name: i for i, name in enumerate(self.weights)}
        self.small_momentum = {n: torch.zeros_like(p) for n, p in self.small_params.items()}
        self.step_count = 0
        self.peak_stash_bytes = 0
        self._names = {id(w): n for n, w in self.weights.items()}
        self._pending: dict[str, int] = {}
        self._stash: dict[str, BlockInt8] = {}
        self._in_step = False
        for w in self.weights.values():
            w.optimizer = self  # type: ignore[attr-defined]

    # Step protocol -----------------------------------------------------------------

    def begin_step(self) -> None:
        self._pending.clear()
        self._stash.clear()
        self._in_step = True

    def note_use(self, weight: QuantWeight) -> None:
        """A forward used `weight`; its update waits for as many gradient contributions."""
        if self._in_step:
            name = self._names[id(weight)]
            self._pending[name] = self._pending.get(name, 0) + 1

    def receive_grad(self, weight: QuantWeight, grad: GradSource) -> None:
        """Backward produced one gradient contribution for `weight`."""
        if not self._in_step:
            return
        name = self._names[id(weight)]
        left = self._pending.get(name, 1) - 1
        self._pending[name] = left
        if left > 0:
            self._add_to_stash(name, weight, grad)
            return
        stash = self._stash.pop(name, None)
        self._lion_update(name, weight, grad, stash)

    def abort_step(self) -> None:
        """Forget a step whose forward or backward failed (layers already updated stay so)."""
        self._in_step = False
        self._pending.clear()
        self._stash.clear()
        for p in self.small_params.values():
            p.grad = None

    def end_step(self) -> None:
        """Check every used weight got its update; step the small parameters."""
        self._in_step = False
        missing = [n for n, left in self._pending.items() if left > 0]
        self._stash.clear()
        if missing:
            raise RuntimeError(
                f"backward did not reach {len(missing)} quantized weight(s) ({missing[0]}, …): "
                "every forward with gradients enabled must be followed by one backward"
            )
        self.step_count += 1
        self._small_update()

    # Updates -----------------------------------------------------------------------

    def _chunks(self, weight: QuantWeight) -> Iterable[tuple[int, int]]:
        rows, cols = weight.shape
        step = max(1, self.chunk_numel // cols)
        for start in range(0, rows, step):
            yield start, min(rows, start + step)

    def _add_to_stash(self, name: str, weight: QuantWeight, grad: GradSource) -> None:
        stash = self._stash.get(name)
        if stash is None:
            stash = BlockInt8.zeros(*weight.shape, weight.dense.block, weight.device, self.fused)
            self._stash[name] = stash
        for start, stop in self._chunks(weight):
            total = grad.rows(start, stop).float()
            total += stash.dequantize_rows(start, stop)
            stash.store_rows_(start, stop, total, None)
        self.peak_stash_bytes = max(
            self.peak_stash_bytes, sum(s.nbytes for s in self._stash.values())
        )

    @torch.no_grad()
    def _lion_update(
        self, name: str, weight: QuantWeight, grad: GradSource, stash: BlockInt8 | None
    ) -> None:
        momentum = self.momentum[name]
        dense = weight.dense
        cols = weight.shape[1]
        device = weight.device
        hyper = torch.tensor(
            [self.lr, self.weight_decay, *self.betas], dtype=torch.float32, device=device
        )
        key = torch.tensor(mix_key(self.seed, self.step_count, self._index[name]), device=device)
        update_blocks = kernel(lion_blocks, compile=self.fused, device_type=device.type)
        for start, stop in self._chunks(weight):
            g = grad.rows(start, stop)
            if stash is not None:
                g = g.float() + stash.dequantize_rows(start, stop)
            wq, ws = dense.blocks(start, stop)
            mq, ms = momentum.blocks(start, stop)
            lo, hi = weight.outlier_range(start, stop)
            if hi > lo:  # before the momentum moves: outliers use the same (old) momentum
                local = weight.outlier_idx[lo:hi] - start * cols
                lion_outliers_(
                    mq.view(-1), ms.view(-1), g.view(-1), local, weight.outlier_val[lo:hi], hyper
                )
            offset = torch.tensor(start * cols, dtype=torch.int64, device=device)
            new = update_blocks(wq, ws, mq, ms, g.view(wq.shape), hyper, offset, key)
            for target, value in zip((wq, ws, mq, ms), new, strict=True):
                target.copy_(value)

    @torch.no_grad()
    def _small_update(self) -> None:
        beta1, beta2 = self.betas
        for name, p in self.small_params.items():
            if p.grad is None:
                continue
            g = p.grad.float()
            m = self.small_momentum[name]
            update = torch.lerp(g, m, beta1).sign_()
            if self.weight_decay:
                p.mul_(1.0 - self.lr * self.weight_decay)
            p.add_(update, alpha=-self.lr)
            m.lerp_(g, 1.0 - beta2)
            p.grad = None

    # Accounting and checkpoints ------------------------------------------------------

    def state_bytes(self) -> dict[str, int]:
        """Bytes of model states held: weights, gradients, optimizer state."""
        small_w = sum(p.numel() * p.element_size() for p in self.small_params.values())
        small_m = sum(m.numel() * m.element_size() for m in self.small_momentum.values())
        return {
            "weights": sum(w.nbytes for w in self.weights.values()) + small_w,
            "gradients": self.peak_stash_bytes + small_w,
            "optimizer": sum(m.nbytes for m in self.momentum.values()) + small_m,
        }

    def state_dict(self) -> dict[str, object]:
        """Momenta, step count and the rounding RNG (weights are saved by the model)."""
        tensors: dict[str, torch.Tensor] = {}
        for name, m in self.momentum.items():
            tensors[f"{name}.m_q"] = m.data
            tensors[f"{name}.m_scale"] = m.scale
        for name, m in self.small_momentum.items():
            tensors[f"{name}.m"] = m
        return {
            "tensors": tensors,
            "step_count": self.step_count,
            "peak_stash_bytes": self.peak_stash_bytes,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        tensors = state["tensors"]
        assert isinstance(tensors, dict)
        for name, m in self.momentum.items():
            m.data.copy_(tensors[f"{name}.m_q"])
            m.scale.copy_(tensors[f"{name}.m_scale"])
        for name, m in self.small_momentum.items():
            m.copy_(tensors[f"{name}.m"])
        self.step_count = int(state["step_count"])  # type: ignore[call-overload]
        self.peak_stash_bytes = int(state.get("peak_stash_bytes", 0))  # type: ignore[call-overload]


@torch.no_grad()
def lion_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
) -> None:
    """One fp32 Lion step in place (the oracle of the tests and the fp32 bench baseline)."""
    update = torch.lerp(grad, momentum, betas[0]).sign_()
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)
    param.add_(update, alpha=-lr)
    momentum.lerp_(grad, 1.0 - betas[1])
