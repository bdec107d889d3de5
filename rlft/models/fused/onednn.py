"""Linear layers with weights prepacked for oneDNN, for the repeated small matmuls of a decode step.

Why: on the project's CPUs (AMD EPYC with AVX-512) PyTorch's default float32 GEMM is MKL, which takes
its AVX2 code path on non-Intel CPUs: about 175 GFLOP/s on 2048² with 2 threads, while oneDNN's
AVX-512 kernels reach about 410 GFLOP/s in exact float32 (both measured by
``benchmarks/sampling_vs_hf.py``). At decode shapes (64 rows) the gap is larger still (≈ 3× on a 1M
model), because a prepacked weight skips the per-call packing MKL redoes every time.

torch reaches oneDNN linear only through the ops its inductor compiler uses on CPU
(``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``). They are not a public API, so
they are probed once against ``F.linear`` and every :class:`PackedLinear` falls back to plain
``F.linear`` when they are missing or disagree.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.cache
def onednn_linear_available() -> bool:
    """True if torch's oneDNN linear ops exist here and match ``F.linear`` (float32 and bfloat16)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        ops = torch.ops.mkldnn
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(5, 24, generator=g), torch.randn(16, 24, generator=g)
        b = torch.randn(16, generator=g)
        with torch.inference_mode():
            packed = ops._reorder_linear_weight(w, 5)
            plain = ops._linear_pointwise(x, packed, b, "none", [], "")
            half = ops._linear_pointwise(
                x.bfloat16(), ops._reorder_linear_weight(w.bfloat16(), 5), None, "none", [], ""
            )
        ref = F.linear(x, w, b)
        return (
            torch.allclose(plain, ref, atol=1e-4, rtol=1e-5)
            and half.dtype == torch.bfloat16
            and torch.allclose(half.float(), F.linear(x, w), atol=0.5, rtol=0.05)
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
        self.weight = weight.detach().to(dtype).contiguous()
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()
        self.packed = None
        if dtype in (torch.float32, torch.bfloat16) and onednn_linear_available():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, batch_hint)
            self.weight = None  # the packed copy is all that is used

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
