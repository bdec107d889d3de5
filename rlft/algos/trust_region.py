"""TRPO's trust-region step (Schulman et al., "Trust Region Policy Optimization", arXiv 1502.05477, App. C).

Maximise L(θ) subject to D̄_KL(π_old‖π_θ) ≤ δ: solve F x = g by conjugate gradient using only
Fisher-vector products, scale the step to the KL bound, then backtrack until the surrogate improves and
the KL holds. Example: g = [1, 0], F = diag(2, 1), δ = 0.01 ⇒ x = [0.5, 0], xᵀFx = 0.5, β = 0.2,
Δ = [0.1, 0] (and ½ΔᵀFΔ = 0.01 = δ).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def conjugate_gradient(
    fvp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, tol: float = 1e-10
) -> Tensor:
    """Approximately solve F x = b for symmetric positive-definite F given only v ↦ F v (Hestenes–Stiefel)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        fp = fvp(p)
        alpha = rr / (p @ fp)
        x += alpha * p
        r -= alpha * fp
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def trust_region_step(x: Tensor, fx: Tensor, max_kl: float) -> Tensor:
    """The full step Δ = β x with β = sqrt(2δ / xᵀF x), so the quadratic KL model ½ΔᵀFΔ equals δ."""
    shs = float(x @ fx)
    if shs <= 0 or not math.isfinite(shs):
        return torch.zeros_like(x)
    return math.sqrt(2.0 * max_kl / shs) * x


def backtracking_line_search(
    evaluate: Callable[[Tensor], tuple[float, float]],
    full_step: Tensor,
    max_kl: float,
    baseline: float,
    backtrack_coef: float = 0.8,
    max_backtracks: int = 10,
) -> tuple[Tensor, int]:
    """Try Δ·αᵏ for k = 0, 1, …; accept the first with surrogate > `baseline` and KL ≤ `max_kl`.

    `evaluate(step)` returns (surrogate, kl) at θ_old + step. Returns (accepted step, k), or a zero step
    and −1 when nothing passes (θ_old is kept). Constants follow Spinning Up (0.8, 10).
    """
    for k in range(max_backtracks):
        step = full_step * backtrack_coef**k
        surrogate, kl = evaluate(step)
        if surrogate > baseline and kl <= max_kl:
            return step, k
    return torch.zeros_like(full_step), -1
