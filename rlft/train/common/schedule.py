"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_ratio`` of the peak."""

from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine", "warmup_cosine_scheduler"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier for optimiser step ``step`` (0-based: the multiplier used by the ``step+1``-th update).

    Warm-up ramps linearly ``1/w, 2/w, …, 1`` (never 0, so the first update is not wasted); then
    ``min_ratio + (1 - min_ratio) · ½(1 + cos(π·progress))`` with progress running from 0 at the end of
    warm-up to 1 at the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine`; its ``state_dict`` round-trips through checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_ratio)
    )
