"""float32 linear layers on oneDNN for the training and reference passes (forward and backward).

Why: PyTorch's float32 GEMM on CPU is MKL, which runs its AVX2 code on the project's AMD CPUs, while
oneDNN's AVX-512 kernels do the same exact-float32 products 2–5× faster at the shapes of an RL step
(``rlft/models/fused/onednn.py`` measured the same for decoding; ``benchmarks/grpo_vs_trl.py`` for the step).
With the three products of a linear layer routed to oneDNN
(:class:`~rlft.models.fused.onednn.OneDNNLinear`) —

    y = x·Wᵀ + b,    ∂x = ∂y·W,    ∂W = ∂yᵀ·x,    ∂b = Σ_rows ∂y

— the same float32 function is computed (to float rounding) with the matmuls, about three quarters of a
small model's step, several times faster. Under autocast (bfloat16) the layer keeps PyTorch's own path,
which already uses oneDNN for bfloat16.

Installed per model with :func:`use_onednn_linears`, which rebinds ``forward`` of every ``nn.Linear``
instance (the module type, its parameters and ``state_dict`` are untouched, so saving and the fast
sampler's architecture check see a plain model). When the oneDNN ops are missing or disagree with
``F.linear`` (``rlft.models.fused.onednn.onednn_linear_available``) nothing is changed.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlft.models.fused.onednn import OneDNNLinear, PackedLinear, onednn_linear_available

__all__ = ["onednn_linear", "use_onednn_linears"]


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` computed by oneDNN in float32 (with autograd); PyTorch's path otherwise."""
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return F.linear(x, weight, bias)
    if x.device.type != "cpu" or x.numel() == 0:
        return F.linear(x, weight, bias)
    y: Tensor = OneDNNLinear.apply(x, weight, bias)
    return y


def _forward(self: nn.Linear, x: Tensor) -> Tensor:
    return onednn_linear(x, self.weight, self.bias)


def _frozen_forward(self: nn.Linear, x: Tensor, packed: PackedLinear) -> Tensor:
    if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu") or torch.is_grad_enabled():
        return F.linear(x, self.weight, self.bias)
    return packed(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], self.out_features)


def use_onednn_linears(model: nn.Module, frozen: bool = False) -> int:
    """Route every ``nn.Linear`` of ``model`` through :func:`onednn_linear`; returns how many (0 when
    oneDNN is unavailable here). ``frozen=True`` (a reference model whose weights never change) packs
    each weight for oneDNN once, instead of on every call, for no-grad float32 forwards (the packed copy
    costs one more copy of the weights in memory)."""
    if not onednn_linear_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            # Rebinding this instance's forward is the point (see the module docstring), which mypy
            # refuses for a method
            if frozen:
                packed = PackedLinear(module.weight, module.bias, torch.float32, batch_hint=1024)
                forward = functools.partial(_frozen_forward, packed=packed)
                module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]
            else:
                module.forward = types.MethodType(_forward, module)  # type: ignore[method-assign]
            count += 1
    return count
