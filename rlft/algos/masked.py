"""Masked reductions shared by the estimators and losses (mask = 1 on real tokens, 0 on padding)."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ m·x / Σ m (over everything, or along `dim`); a row with no real tokens gives 0, not NaN."""
    if dim is None:
        return masked_sum(x, mask) / mask.sum().clamp(min=1)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries; `unbiased` divides by N−1 like torch's `.var()` (verl, TRL)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    sq = masked_sum((x - mean) ** 2, mask)
    if unbiased:
        if n < 2:
            raise ValueError("unbiased variance needs at least 2 unmasked values")
        return sq / (n - 1)
    return sq / n.clamp(min=1)


def masked_whiten(
    x: Tensor, mask: Tensor, unbiased: bool = True, eps: float = 1e-8, shift_mean: bool = True
) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the masked entries; padding is returned as 0.

    The advantage whitening of PPO-RLHF (verl/TRL `masked_whiten`) and REINFORCE++'s global batch
    normalisation (Hu, arXiv 2501.03262). verl uses the unbiased variance, OpenRLHF the population one.
    With `shift_mean=False` the mean is added back (scale-only whitening).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask
