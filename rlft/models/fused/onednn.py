"""Linear layers on oneDNN: :class:`PackedLinear` (weights prepacked once, for the repeated small matmuls of
a decode step or a frozen model) and :class:`OneDNNLinear` (the autograd function of a trained layer).

Why: on the project's CPUs (AMD EPYC with AVX-512) PyTorch's default float32 GEMM is MKL, which takes
its AVX2 code path on non-Intel CPUs: about 175 GFLOP/s on 2048² with 2 threads, while oneDNN's
AVX-512 kernels reach about 410 GFLOP/s in exact float32 (both measured by
``benchmarks/sampling_vs_hf.py``). At decode shapes (64 rows) the gap is larger still (≈ 3× on a 1M
model), because a prepacked weight skips the per-call packing MKL redoes every time.

torch reaches oneDNN linear only through the ops its inductor compiler uses on CPU
(``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``). They are not a public API, so
they are probed once against ``F.linear`` and every :class:`PackedLinear` falls back to plain
``F.linear`` when they are missing or disagree (callers of :class:`OneDNNLinear` check
:func:`onednn_linear_available` first).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx


def _linear_pointwise(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x·Wᵀ + b for 2-D x and W (out, in), plain or prepacked; strided (transposed) operands are read in
    place."""
    y: Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return y


@functools.cache
def onednn_linear_available() -> bool:
    """True if torch's oneDNN linear ops exist here and match ``F.linear`` (float32 and bfloat16)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        reorder = torch.ops.mkldnn._reorder_linear_weight
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(5, 24, generator=g), torch.randn(16, 24, generator=g)
        b = torch.randn(16, generator=g)
        # autocast off: the answer is cached for the process, whatever context asks first
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            plain = _linear_pointwise(x, reorder(w, 5), b)
            half = _linear_pointwise(x.bfloat16(), reorder(w.bfloat16(), 5))
            ref, ref_half = F.linear(x, w, b), F.linear(x, w)
        return (
            torch.allclose(plain, ref, atol=1e-4, rtol=1e-5)
            and half.dtype == torch.bfloat16
            and torch.allclose(half.float(), ref_half, atol=0.5, rtol=0.05)
        )
    except (AttributeError, RuntimeError, TypeError):
        return False


class PackedLinear:
    """y = x·Wᵀ + b with W (out, in) cast to ``dtype`` and, where oneDNN is usable, prepacked.

    Inputs are cast to ``dtype``; outputs come back in ``dtype``. ``batch_hint`` is the row count the
    packing is tuned for (any row count works).
    """

    __slots__ = ("bias", "dtype", "packed", "weight")

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, batch_hint: int = 64) -> None:
        self.dtype = dtype
        self.weight: Tensor | None = weight.detach().to(dtype).contiguous()
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()
        self.packed: Tensor | None = None
        if dtype in (torch.float32, torch.bfloat16) and onednn_linear_available():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, batch_hint)
            self.weight = None  # the packed copy is all that is used

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        if self.packed is not None:
            return _linear_pointwise(x, self.packed, self.bias)
        assert self.weight is not None  # dropped only when packed
        return F.linear(x, self.weight, self.bias)


class _LinearCtx(FunctionCtx):
    """Autograd's context as :class:`OneDNNLinear` uses it (for the type checker: autograd passes its own
    object, which takes any attribute)."""

    saved_tensors: tuple[Tensor, ...]
    needs_input_grad: tuple[bool, ...]
    has_bias: bool


class OneDNNLinear(torch.autograd.Function):
    """y = x·Wᵀ + b over the last dim of float32 ``x`` (any leading shape), with the backward products

        ∂x = ∂y·W,    ∂W = ∂yᵀ·x,    ∂b = Σ_rows ∂y

    on oneDNN too, each written as a "linear" with transposed operands, which oneDNN reads without
    copies. Agrees with ``F.linear`` to float32 rounding."""

    @staticmethod
    def forward(ctx: _LinearCtx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return _linear_pointwise(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: _LinearCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        rows, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).contiguous()  # a no-op unless autograd hands an expanded grad
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _linear_pointwise(g, weight.t()).view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            # dW = dyᵀ·x (out × in) is the same product as (xᵀ·dy)ᵀ; oneDNN runs the one with the wider
            # output faster (1024×128 gate/up weights at 2100 rows: 1.4 against 2.7 ms)
            out_features, in_features = weight.shape
            if out_features > in_features:
                grad_w = _linear_pointwise(rows.t(), g.t()).t()
            else:
                grad_w = _linear_pointwise(g.t(), rows.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b
