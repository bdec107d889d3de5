"""The optimiser recipe every language-model trainer uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["adamw"]


def adamw(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, beta2: float = 0.95
) -> torch.optim.AdamW:
    """AdamW(β₁ 0.9, β₂, ε 1e-8) with no weight decay on 1-D tensors (biases and norm weights), the usual
    recipe for transformers. An empty group (e.g. a bias-free value head) is left out.

    The fused implementation (one kernel per tensor, as TRL's default ``adamw_torch_fused``) where the
    parameters allow it: on a CPU torch's default for-loop AdamW makes about ten passes over every tensor
    (30 ms a step on the 14M tiny model, against 6 ms fused)."""
    params = [p for p in params if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=lr, betas=(0.9, beta2), eps=1e-8, fused=fused
    )
