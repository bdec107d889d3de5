"""Pieces the control algorithms share: GAE on a rollout batch, learning-rate annealing, diagnostics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from rlft.algos import gae, masked_mean

from .config import ControlConfig
from .rollout import Batch


def batch_advantages(batch: Batch, cfg: ControlConfig) -> tuple[Tensor, Tensor]:
    """GAE(γ, λ) per environment over the rollout (rlft.algos puts time last, so transpose), flattened;
    0 on invalid steps.

    `gae` is called without the `valid` mask, which is the same on valid steps and about 3× cheaper (the
    masked scans cost two ops per time step): in a `Collector.collect` rollout a step is invalid only
    when it is the first one or follows a `done` in its environment, and a `done` already stops both
    the next value and the advantage from flowing back across it. So masking only changes the invalid
    steps themselves, and those are zeroed here (`tests/test_control_policies.py` checks the equality)."""
    adv, returns = gae(
        batch.rewards.T,
        batch.values.T,
        cfg.gamma,
        cfg.lam,
        dones=batch.dones.T,
        bootstrap=batch.last_value,
    )
    valid = batch.valid.reshape(-1)
    return adv.T.reshape(-1) * valid, returns.T.reshape(-1) * valid


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients by min(1, max_norm / (‖g‖₂ + 1e-6)), ‖g‖₂ over all of them together.

    The same rule as `torch.nn.utils.clip_grad_norm_` in four foreach ops, half its cost on these tiny
    networks (where its argument checks and dispatch outweigh the arithmetic)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, frac: float, anneal: bool) -> float:
    """Linear annealing to 0 over training (`frac` is the share of training still to go)."""
    lr = base_lr * frac if anneal else base_lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """1 − Var[target − pred] / Var[target]: 1 is a perfect critic, ≤ 0 no better than a constant."""
    var = masked_mean((target - masked_mean(target, mask)) ** 2, mask)
    resid = target - pred
    var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    return float("nan") if var == 0 else float(1 - var_resid / var)
