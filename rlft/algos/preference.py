"""Preference losses: reward-model losses (Bradley–Terry, K-wise) and direct preference optimisation.

Each returns per-example losses (one per pair, prompt or example); the batch loss is their mean (or
their sum over a global count when a batch is split). Notation for the DPO family: a "log-ratio" is
log π_θ(y|x) − log π_ref(y|x) summed over the response tokens, and h = logratio_w − logratio_l.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Registry

PREFERENCE_LOSSES: Registry[Callable[..., Any]] = Registry("preference loss")


@PREFERENCE_LOSSES.register("bradley_terry", "pairwise")
def bradley_terry_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | float | None = None, center_coef: float = 0.0
) -> Tensor:
    """Pairwise reward-model loss ℓ = −log σ(r_w − r_l − m) + η·(r_w + r_l)².

    Bradley & Terry (1952); the margin m from the preference rating is Llama 2's (arXiv 2307.09288); the
    centring term η(r_w + r_l)² is Eisenstein et al. (arXiv 2312.09244), TRL `center_rewards_coefficient`.
    Examples: r_w = 2, r_l = 0 ⇒ 0.126928; with m = 1 ⇒ 0.313262.
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff)
    if center_coef:
        loss = loss + center_coef * (chosen + rejected) ** 2
    return loss


@PREFERENCE_LOSSES.register("kwise")
def kwise_ranking_loss(rewards: Tensor, ranks: Tensor, valid: Tensor | None = None) -> Tensor:
    """InstructGPT K-wise ranking loss, one value per prompt (Ouyang et al., arXiv 2203.02155, eq. 1).

    `rewards` (P, K) are the model's scores of each prompt's K responses (each scored once); `ranks`
    (P, K) order them (higher = preferred; ties form no pair); `valid` (P, K) masks absent responses.
    Per prompt: the mean over all pairs w ≻ l of −log σ(r_w − r_l) — the 1/C(K,2) normaliser that makes
    a prompt's pairs one batch element. With K = 2 this is the pairwise loss.
    Example: rewards [3, 1, 0] in ranked order ⇒ 0.162926.
    """
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    diff = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)  # [p, w, l] = r_w − r_l
    is_pair = (ranks.unsqueeze(-1) > ranks.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
    pair_loss = -F.logsigmoid(diff) * is_pair
    n_pairs = is_pair.sum((-1, -2))
    if bool((n_pairs == 0).any()):
        raise ValueError("every prompt needs at least two responses with different ranks")
    return pair_loss.sum((-1, -2)) / n_pairs


def _h(chosen_logratio: Tensor, rejected_logratio: Tensor) -> Tensor:
    return chosen_logratio - rejected_logratio


@PREFERENCE_LOSSES.register("sigmoid", "dpo")
def dpo_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float = 0.1) -> Tensor:
    """DPO: ℓ = −log σ(β h) (Rafailov et al., arXiv 2305.18290). Example: β = 0.1, h = 2 ⇒ 0.598139."""
    return -F.logsigmoid(beta * _h(chosen_logratio, rejected_logratio))


@PREFERENCE_LOSSES.register("cdpo")
def cdpo_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float = 0.1, label_smoothing: float = 0.1
) -> Tensor:
    """Conservative DPO: ℓ = −(1−ε) log σ(βh) − ε log σ(−βh) (Mitchell, 2023 note on noisy preferences).
    Example: β = 0.1, h = 2, ε = 0.1 ⇒ 0.618139."""
    z = beta * _h(chosen_logratio, rejected_logratio)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


@PREFERENCE_LOSSES.register("robust")
def robust_dpo_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float = 0.1, label_smoothing: float = 0.1
) -> Tensor:
    """Robust DPO: ℓ = [(1−ε)(−log σ(βh)) − ε(−log σ(−βh))] / (1 − 2ε) (Chowdhury et al., arXiv 2403.00409).
    Example: β = 0.1, h = 2, ε = 0.1 ⇒ 0.573139."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}")
    z = beta * _h(chosen_logratio, rejected_logratio)
    return ((1 - label_smoothing) * -F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (
        1 - 2 * label_smoothing
    )


@PREFERENCE_LOSSES.register("ipo")
def ipo_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float = 0.1) -> Tensor:
    """IPO: ℓ = (h − 1/(2τ))², τ = `beta` (Azar et al., arXiv 2310.12036). Pass *length-averaged*
    log-ratios, as TRL does with the authors' agreement. Example: τ = 0.1, h = 2 ⇒ 9."""
    return (_h(chosen_logratio, rejected_logratio) - 1.0 / (2.0 * beta)) ** 2


@PREFERENCE_LOSSES.register("hinge")
def hinge_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float = 0.1) -> Tensor:
    """SLiC-style hinge on the DPO margin: ℓ = max(0, 1 − βh) (Zhao et al., arXiv 2305.10425; TRL "hinge")."""
    return torch.relu(1.0 - beta * _h(chosen_logratio, rejected_logratio))


@PREFERENCE_LOSSES.register("simpo")
def simpo_loss(
    chosen_avg_logp: Tensor, rejected_avg_logp: Tensor, beta: float = 2.0, gamma: float = 1.0
) -> Tensor:
    """SimPO: ℓ = −log σ(β·avg log π(y_w) − β·avg log π(y_l) − γ), no reference (Meng et al., arXiv 2405.14734).
    Example: β = 2, γ = 1, means −1.0 / −1.2 ⇒ 1.037488."""
    return -F.logsigmoid(beta * (chosen_avg_logp - rejected_avg_logp) - gamma)


def _log_odds(avg_logp: Tensor) -> Tensor:
    """log(P/(1−P)) with log P = avg_logp ≤ 0, using a stable log(1 − e^x) (log1mexp)."""
    x = avg_logp.clamp(max=-1e-7)
    log1mexp = torch.where(x > -0.6931472, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return x - log1mexp


@PREFERENCE_LOSSES.register("orpo")
def orpo_loss(
    chosen_avg_logp: Tensor, rejected_avg_logp: Tensor, chosen_nll: Tensor, lam: float = 0.1
) -> Tensor:
    """ORPO: L = L_SFT(y_w) + λ·(−log σ(log odds(y_w) − log odds(y_l))), odds = P/(1−P) with P the
    length-normalised likelihood; no reference model (Hong et al., arXiv 2403.07691).
    Example: means −1.0 / −1.2 ⇒ L_OR = 0.554231; with NLL 1.0 and λ = 0.1 ⇒ 1.055423."""
    odds_ratio = _log_odds(chosen_avg_logp) - _log_odds(rejected_avg_logp)
    return chosen_nll - lam * F.logsigmoid(odds_ratio)


def kto_kl_baseline(mismatched_logratio: Tensor) -> Tensor:
    """KTO's reference point z₀ = max(0, mean log π_θ(y'|x) − log π_ref(y'|x)) over mismatched (x, y')
    pairs, detached (Ethayarajh et al., arXiv 2402.01306). Gather across ranks before calling."""
    return mismatched_logratio.detach().mean().clamp(min=0)


@PREFERENCE_LOSSES.register("kto")
def kto_loss(
    logratio: Tensor,
    desirable: Tensor,
    z0: Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tensor:
    """KTO on unpaired labels: λ_D(1 − σ(β(r − z₀))) if desirable else λ_U(1 − σ(β(z₀ − r))),
    r = log π_θ(y|x) − log π_ref(y|x) (arXiv 2402.01306). Example: β = 0.1, z₀ = 0.5, desirable r = 2
    ⇒ 0.462570; undesirable r = −1 ⇒ 0.462570."""
    desirable = desirable.to(torch.bool)
    good = desirable_weight * (1 - torch.sigmoid(beta * (logratio - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratio)))
    return torch.where(desirable, good, bad)


@PREFERENCE_LOSSES.register("rrhf")
def rrhf_loss(
    logp_sum: Tensor,
    lengths: Tensor,
    scores: Tensor,
    rank_weight: float = 1.0,
    length_penalty: float = 1.0,
    valid: Tensor | None = None,
) -> Tensor:
    """RRHF, one value per prompt (Yuan et al., arXiv 2304.05302): with p_i = Σ_t log π(y_{i,t}) / |y_i|^α,
    L = w·Σ_{r_i < r_j} max(0, p_i − p_j) − Σ_t log π(y_{i'}), i' = argmax_i r_i (the paper's form, w = 1;
    the official code uses w = 100). `logp_sum`, `lengths`, `scores`: (P, K).
    Example: r = [0.9, 0.2, 0.5], p = [−1.0, −0.8, −1.5] ⇒ L_rank = 0.9; best response sum −10 ⇒ L_ft = 10.
    """
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    p = logp_sum / lengths.to(logp_sum.dtype).clamp(min=1) ** length_penalty
    worse = (scores.unsqueeze(-1) < scores.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
    rank = (torch.relu(p.unsqueeze(-1) - p.unsqueeze(-2)) * worse).sum((-1, -2))  # [i, j]: p_i − p_j
    best = torch.where(valid, scores, torch.full_like(scores, -torch.inf)).argmax(-1, keepdim=True)
    sft = -logp_sum.gather(-1, best).squeeze(-1)
    return rank_weight * rank + sft
