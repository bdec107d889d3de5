"""Diagnostics of a learned value function, shared by the language-model and classic-control trainers."""

from __future__ import annotations

import torch
from torch import Tensor

from .masked import masked_mean


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """1 − Var[target − pred] / Var[target] over the masked entries (NaN when Var[target] = 0).

    1 is a perfect critic, ≤ 0 no better than a constant (the PPO2 baselines diagnostic, with V as `pred`
    and the returns as `target`). A boolean mask is read as 0/1.
    Example: target = [1, 2, 3], pred = [1, 2, 2] ⇒ 1 − (2/9)/(2/3) = 2/3.
    """
    if not mask.is_floating_point():
        mask = mask.to(torch.float32)
    var = masked_mean((target - masked_mean(target, mask)) ** 2, mask)
    resid = target - pred
    var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    return float("nan") if float(var) == 0 else float(1 - var_resid / var)
