"""KL estimators (Schulman, "Approximating KL Divergence", 2020) and KL-coefficient controllers.

Per token, with log ρ = logp_ref − logp for samples drawn from π (the target is KL(π‖π_ref)):
k1 = −log ρ, k2 = ½(log ρ)², k3 = (ρ − 1) − log ρ.
Clamping: every estimator clamps log ρ to ±20 first, so k1 ∈ [−20, 20] and k2 ∈ [0, 200], and a token
with |log ρ| > 20 gets no gradient from any of them; k3 is then clamped to ±10 as well. verl clamps only
k3 (log ρ to ±20, k3 to ±10) and leaves k1/k2 unclamped; OpenRLHF clamps every estimator to ±10.
rlft clamps k1/k2 too so that a −inf or huge log-prob (a token the reference all but excludes) gives a
bounded penalty instead of inf/NaN, with the same ±20 as the policy ratio.
Example: logp = −1.0, logp_ref = −1.5 ⇒ k1 = 0.5, k2 = 0.125, k3 = 0.106531.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .registry import Registry

KL_ESTIMATORS: Registry[Callable[..., Tensor]] = Registry("KL estimator")

LOG_RATIO_CLAMP = 20.0  # verl and TRL clamp log-ratios to ±20 before exp
K3_CLAMP = 10.0  # verl clamps k3 itself to ±10


def _log_rho(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log π − log π_ref: unbiased, high variance, negative about half the time. Its expected
    gradient as a loss on on-policy samples is 0; use it in the reward (RLHF-PPO, RLOO, REINFORCE++).
    Clamped to ±20 (log ρ's clamp; verl does not clamp k1)."""
    return -_log_rho(logp, ref_logp)


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = ½ (log ρ)²: biased but low-variance and ≥ 0; its gradient is ∇KL(π‖π_ref) in expectation.
    log ρ is clamped to ±20 first, so k2 ≤ 200 with zero gradient beyond (verl does not clamp k2)."""
    return 0.5 * _log_rho(logp, ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = ρ − 1 − log ρ: unbiased, low-variance, ≥ 0 — GRPO's KL term (DeepSeekMath, arXiv 2402.03300).
    Clamped to ±10 as in verl."""
    log_rho = _log_rho(logp, ref_logp)
    return (torch.exp(log_rho) - 1 - log_rho).clamp(-K3_CLAMP, K3_CLAMP)


@KL_ESTIMATORS.register("k1+")
def kl_k1_plus(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Straight-through: the value of k1 with the (unbiased reverse-KL) gradient of k2 (verl "k1+")."""
    k2 = kl_k2(logp, ref_logp)
    return k2 + (kl_k1(logp, ref_logp) - k2).detach()


@KL_ESTIMATORS.register("k3+")
def kl_k3_plus(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Straight-through: the value of k3 with the gradient of k2 (verl "k3+")."""
    k2 = kl_k2(logp, ref_logp)
    return k2 + (kl_k3(logp, ref_logp) - k2).detach()


def kl_estimate(name: str, logp: Tensor, ref_logp: Tensor) -> Tensor:
    return KL_ESTIMATORS.get(name)(logp, ref_logp)


@dataclass
class FixedKLController:
    """A constant β (InstructGPT 0.02, DeepSpeed-Chat 0.1, TRL 0.05)."""

    value: float

    def update(self, kl: float, n_steps: int = 0) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (arXiv 1909.08593): e = clip(KL/KL_target − 1, −0.2, 0.2), β ← β·(1 + e·n_steps/horizon).

    `kl` is the batch mean of the summed per-sequence KL; `n_steps` the number of samples in the batch.
    Example: β = 0.1, KL = 9, target 6, n_steps = 512, horizon 10000 ⇒ β = 0.101024.
    """

    value: float
    target: float
    horizon: float

    def update(self, kl: float, n_steps: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


@dataclass
class PPOPenaltyKLController:
    """PPO-penalty's β rule (Schulman et al., arXiv 1707.06347 §4), d = mean KL(π_old‖π_θ):
    d < d_targ/1.5 ⇒ β ← β/2; d > 1.5·d_targ ⇒ β ← 2β.
    Example: d_targ = 0.01: d = 0.02 doubles β, d = 0.005 halves it, d = 0.012 keeps it.
    """

    value: float
    target: float

    def update(self, kl: float, n_steps: int = 0) -> float:
        if kl < self.target / 1.5:
            self.value /= 2.0
        elif kl > self.target * 1.5:
            self.value *= 2.0
        return self.value


KL_CONTROLLERS: Registry[Callable[..., Any]] = Registry("KL controller")
KL_CONTROLLERS.register("fixed")(FixedKLController)
KL_CONTROLLERS.register("adaptive")(AdaptiveKLController)
KL_CONTROLLERS.register("ppo_penalty")(PPOPenaltyKLController)


def categorical_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Exact KL(p‖q) = Σ_a p(a) (log p(a) − log q(a)) between categorical distributions given by logits.

    The full-distribution KL(π_old‖π_θ) of PPO-penalty (arXiv 1707.06347 §4) and TRPO's constraint."""
    logp = torch.log_softmax(logits_p, -1)
    return (logp.exp() * (logp - torch.log_softmax(logits_q, -1))).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """Exact KL(p‖q) between diagonal Gaussians, summed over dimensions:
    Σ log σ_q − log σ_p + (σ_p² + (μ_p − μ_q)²) / (2σ_q²) − ½."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)
