"""QFT layers: linear and embedding modules over a `QuantWeight`, with custom autograd.

The weight is not a parameter and not an autograd leaf: forward dequantizes it on the fly
into the compute dtype (bf16 where the hardware has it), backward dequantizes it again for
the input gradient, then hands the weight gradient to the optimizer attached to the weight
(`QFTLion.receive_grad`), which updates the integer storage right there, layer by layer.
A zero-size `handle` tensor that requires grad puts each layer in the autograd graph even
when nothing upstream requires grad (the embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmaas.finetune.qft.lion import EmbeddingGrad, LinearGrad
from lmaas.finetune.qft.quant import QuantWeight

__all__ = ["QFTEmbedding", "QFTLinear"]


def _optimizer(weight: QuantWeight):  # type: ignore[no-untyped-def]
    return getattr(weight, "optimizer", None)


class _QuantLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        handle: torch.Tensor,
        bias: torch.Tensor | None,
        weight: QuantWeight,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        xc = x.to(dtype)
        w = weight.dequantize(dtype)
        out = F.linear(xc, w, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(xc)
        ctx.weight, ctx.dtype, ctx.x_dtype = weight, dtype, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (xc,) = ctx.saved_tensors
        weight: QuantWeight = ctx.weight
        g = grad_out.to(ctx.dtype)
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight.dequantize(ctx.dtype)).to(ctx.x_dtype)
        g2 = g.reshape(-1, g.shape[-1])
        if ctx.needs_input_grad[2]:
            grad_bias = g2.float().sum(0).to(ctx.bias_dtype)
        opt = _optimizer(weight)
        if opt is not None:
            opt.receive_grad(weight, LinearGrad(g2, xc.reshape(-1, xc.shape[-1])))
        return grad_x, None, grad_bias, None, None


class _QuantEmbeddingFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        ids: torch.Tensor,
        handle: torch.Tensor,
        weight: QuantWeight,
        dtype: torch.dtype,
        padding_idx: int | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight.dequantize(dtype))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        weight: QuantWeight = ctx.weight
        opt = _optimizer(weight)
        if opt is not None:
            g = grad_out.reshape(-1, grad_out.shape[-1])
            flat = ids.reshape(-1)
            if ctx.padding_idx is not None:  # nn.Embedding semantics: that row never learns
                keep = flat != ctx.padding_idx
                flat, g = flat[keep], g[keep]
            opt.receive_grad(weight, EmbeddingGrad(flat, g, weight.shape[1]))
        return None, None, None, None, None


class _QuantModule(nn.Module):
    def __init__(self, weight: QuantWeight, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.qweight = weight
        self.compute_dtype = compute_dtype
        self.handle = torch.zeros(0, device=weight.device, requires_grad=True)

    def _note_use(self) -> bool:
        """True if this call builds a graph (and tells the optimizer to expect a gradient)."""
        if not torch.is_grad_enabled():
            return False
        opt = _optimizer(self.qweight)
        if opt is not None:
            opt.note_use(self.qweight)
        return True

    def dequantized_weight(self) -> torch.Tensor:
        """The weight as fp32 (a copy): for inspection and export."""
        return self.qweight.dequantize(torch.float32)


class QFTLinear(_QuantModule):
    """`nn.Linear` over a `QuantWeight`; the bias (if any) is a small fp32 parameter."""

    def __init__(
        self, weight: QuantWeight, bias: torch.Tensor | None, compute_dtype: torch.dtype
    ) -> None:
        super().__init__(weight, compute_dtype)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._note_use():
            return _QuantLinearFn.apply(x, self.handle, self.bias, self.qweight, self.compute_dtype)
        w = self.qweight.dequantize(self.compute_dtype)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), w, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8+outliers"


class QFTEmbedding(_QuantModule):
    """`nn.Embedding` over a `QuantWeight` (the gradient goes only to the looked-up rows)."""

    def __init__(
        self, weight: QuantWeight, compute_dtype: torch.dtype, padding_idx: int | None = None
    ) -> None:
        super().__init__(weight, compute_dtype)
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._note_use():
            return _QuantEmbeddingFn.apply(
                ids, self.handle, self.qweight, self.compute_dtype, self.padding_idx
            )
        return F.embedding(ids, self.qweight.dequantize(self.compute_dtype))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8+outliers"
