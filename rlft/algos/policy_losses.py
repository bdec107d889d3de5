"""Policy-gradient losses. Each returns (loss, diagnostics).

Shared signature: `logp` (B, T) log π_θ of the taken tokens/actions (carries gradient), `old_logp` (B, T)
log π_old (the rollout policy), `advantages` (B, T), `mask` (B, T); then `aggregation` and its
`normalizer` / `max_len` (see aggregation.py). The ratio is r = exp(clamp(logp − old_logp, ±20)).
Diagnostics (detached, masked token means): `clipfrac_low`, `clipfrac_high` (tokens whose update the clip
removed, below 1−ε_low with Â < 0 / above 1+ε_high with Â > 0), `approx_kl` = E_old[(r − 1) − log r], an
estimate of KL(π_old‖π_θ).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .aggregation import aggregate
from .masked import masked_mean
from .registry import Registry

POLICY_LOSSES: Registry[Callable[..., Any]] = Registry("policy loss")

Diagnostics = dict[str, Tensor]


def _log_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    return (logp - old_logp).clamp(-20.0, 20.0)


def _diagnostics(log_ratio: Tensor, mask: Tensor, low: Tensor, high: Tensor, **extra: Tensor) -> Diagnostics:
    """Masked means of the clip indicators, of (r − 1) − log r and of any `extra`, in one reduction
    (these run every minibatch; separate means would triple their op count)."""
    with torch.no_grad():
        names = ["clipfrac_low", "clipfrac_high", "approx_kl", *extra]
        rows = [low, high, torch.expm1(log_ratio) - log_ratio, *extra.values()]
        stacked = torch.stack([row.to(mask.dtype).expand_as(log_ratio) for row in rows])
        means = (stacked * mask).flatten(1).sum(1) / mask.sum().clamp(min=1)
    return dict(zip(names, means.unbind(), strict=True))


def _clipped_surrogate(
    ratio: Tensor,
    advantages: Tensor,
    lower: Tensor | float,
    upper: Tensor | float,
    dual_clip: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-token max(−r·Â, −clip(r, lower, upper)·Â), optionally capped at −c·Â for Â < 0."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, lower, upper)  # type: ignore[arg-type]  # torch stubs: float or Tensor
    loss = torch.maximum(unclipped, clipped)
    low = (ratio < lower) & (advantages < 0)
    high = (ratio > upper) & (advantages > 0)
    dual = torch.zeros_like(low)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        cap = -advantages * dual_clip
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(advantages < 0, torch.minimum(loss, cap), loss)
    return loss, low, high, dual


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    normalizer: float | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, Diagnostics]:
    """PPO-clip: ℓ = max(−r Â, −clip(r, 1−ε_low, 1+ε_high) Â) (Schulman et al., arXiv 1707.06347).

    `clip_high` defaults to `clip_low` (symmetric); DAPO's clip-higher uses 0.2/0.28 (arXiv 2503.14476).
    `dual_clip` c > 1 caps the loss of a negative-advantage token at −c·Â (Ye et al., arXiv 1912.09729).
    Tokens outside the clip region get zero gradient.
    Examples: Â = +1, r = 1.5 ⇒ −1.2; Â = −1, r = 0.5 ⇒ 0.8; Â = −1, r = 5, c = 3 ⇒ 3 (5 without dual-clip).
    """
    clip_high = clip_low if clip_high is None else clip_high
    mask = mask.to(logp.dtype)
    log_ratio = _log_ratio(logp, old_logp)
    loss, low, high, dual = _clipped_surrogate(
        torch.exp(log_ratio), advantages, 1.0 - clip_low, 1.0 + clip_high, dual_clip
    )
    agg = aggregate(loss, mask, aggregation, normalizer, max_len)
    return agg, _diagnostics(log_ratio, mask, low, high, clipfrac_dual=dual)


SEQ_LOG_RATIO_CAP = 10.0  # verl caps log s_i at 10 in GSPO and GSPO-token


def _sequence_log_ratio(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """(1/|y_i|) Σ_t log r_{i,t} per sequence, broadcast back to (B, T); not capped."""
    seq = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    return seq.expand_as(log_ratio)


def _clip_sequence_ratio(
    log_s: Tensor,
    log_ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    aggregation: str,
    normalizer: float | None,
    max_len: int | None,
) -> tuple[Tensor, Diagnostics]:
    """GSPO's clipped surrogate ℓ = max(−s Â, −clip(s, 1−ε_low, 1+ε_high) Â), s = exp(min(log s, 10)), for
    GSPO's s_i or GSPO-token's s_{i,t}, aggregated; `clipfrac_low` / `clipfrac_high` are the shares of tokens
    whose s was clipped, `approx_kl` is of the token log-ratios `log_ratio`."""
    loss, low, high, _ = _clipped_surrogate(
        torch.exp(log_s.clamp(max=SEQ_LOG_RATIO_CAP)), advantages, 1.0 - clip_low, 1.0 + clip_high, None
    )
    agg = aggregate(loss, mask, aggregation, normalizer, max_len)
    return agg, _diagnostics(log_ratio, mask, low, high)


@POLICY_LOSSES.register("gspo")
def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    aggregation: str = "seq-mean-token-mean",
    normalizer: float | None = None,
    max_len: int | None = None,
    token_level: bool = False,
) -> tuple[Tensor, Diagnostics]:
    """GSPO: clip the sequence ratio s_i = exp((1/|y_i|) Σ_t log r_{i,t}) (Zheng et al., arXiv 2507.18071).

    ℓ_i = max(−s_i Â_i, −clip(s_i, 1−ε_low, 1+ε_high) Â_i), broadcast to tokens; with seq-mean-token-mean
    this is the mean over sequences, and every token of a sequence gets the same gradient weight.
    Example: log-ratios [0.1, −0.2, 0.4] ⇒ s = 1.105171; Â = +1 ⇒ clipped at 1.0004, zero gradient.

    ``token_level=True`` is GSPO-token (§4.3, registered as ``gspo_token``): s_{i,t} = sg[s_i] ·
    π_θ(y_{i,t}) / sg[π_θ(y_{i,t})]. Its value is s_i and, when Â_{i,t} = Â_i, its loss and gradient equal
    GSPO's under every aggregation, including where s_i is clipped or log s_i is capped at 10 (both give
    zero gradient, as in GSPO and verl); it exists so that per-token advantages can be supplied. Computed
    in log space like verl: log s_{i,t} = log r_{i,t} − sg[log r_{i,t}] + sg[log s_i], capped at 10.
    """
    mask = mask.to(logp.dtype)
    log_ratio = _log_ratio(logp, old_logp)
    log_s = _sequence_log_ratio(log_ratio, mask)
    if token_level:
        # The cap goes on the sum, not on log s_i first: a capped log s_i would sit exactly on the clamp's
        # boundary, where its gradient passes. The clamped log r (not log π) zeroes the gradient of a token
        # whose log-ratio passed ±20, as GSPO's mean does.
        log_s = log_ratio - log_ratio.detach() + log_s.detach()
    return _clip_sequence_ratio(
        log_s, log_ratio, advantages, mask, clip_low, clip_high, aggregation, normalizer, max_len
    )


gspo_token_loss = POLICY_LOSSES.register("gspo_token")(functools.partial(gspo_loss, token_level=True))
"""GSPO-token (arXiv 2507.18071 §4.3): :func:`gspo_loss` with ``token_level=True``."""


def sapo_gate(ratio: Tensor, tau: Tensor | float) -> Tensor:
    """SAPO's soft gate f(r) = (4/τ)·σ(τ(r − 1)); its gradient weight on ∇log π is r·sech²(τ(r−1)/2)."""
    return (4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0))


@POLICY_LOSSES.register("sapo")
def sapo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    aggregation: str = "seq-mean-token-mean",
    normalizer: float | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, Diagnostics]:
    """SAPO: ℓ = −f(r)·Â with f(r) = (4/τ)σ(τ(r − 1)), τ = τ_pos if Â > 0 else τ_neg (arXiv 2511.20347).

    No hard clip: the gradient weight w = sech²(τ(r−1)/2) is 1 at r = 1 and decays smoothly off-policy.
    The loss value is offset by 2/τ at r = 1; only its gradient matters.
    Example: τ = 1, r = 1.5, Â = 1 ⇒ ℓ = −2.489837, w = 0.940015.
    """
    log_ratio = _log_ratio(logp, old_logp)
    ratio = torch.exp(log_ratio)
    tau = torch.where(advantages > 0, torch.full_like(ratio, tau_pos), torch.full_like(ratio, tau_neg))
    loss = -sapo_gate(ratio, tau) * advantages
    agg = aggregate(loss, mask, aggregation, normalizer, max_len)
    never = torch.zeros_like(ratio, dtype=torch.bool)
    with torch.no_grad():
        weight = 1.0 / torch.cosh(tau * (ratio - 1.0) / 2.0) ** 2
    return agg, _diagnostics(log_ratio, mask.to(logp.dtype), never, never, gate_weight=weight)


@POLICY_LOSSES.register("cispo")
def cispo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float | None = None,
    clip_high: float = 0.2,
    aggregation: str = "token-mean",
    normalizer: float | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, Diagnostics]:
    """CISPO: ℓ = −sg(clip(r, 1−ε_low, 1+ε_high))·Â·log π_θ (MiniMax-M1, arXiv 2506.13585 §3.1).

    Only the importance weight is clipped, so every token keeps a gradient. By default there is no lower
    bound (`clip_low=None`), as in practice (verl's example: effectively an upper bound of 1.2).
    `clipfrac_low` / `clipfrac_high` count tokens whose weight the clamp changed (r < 1−ε_low /
    r > 1+ε_high) whatever the sign of Â, and those tokens keep a gradient: they measure how often the IS
    weight is truncated, not (as for PPO) how often a token's update was removed. `clipfrac_low` is 0
    when there is no lower bound.
    Example: Â = +1, r = 1.5, ε_high = 0.2 ⇒ weight 1.2, gradient −1.2·∇log π.
    """
    log_ratio = _log_ratio(logp, old_logp)
    ratio = torch.exp(log_ratio)
    lower = 0.0 if clip_low is None else 1.0 - clip_low
    upper = 1.0 + clip_high
    weight = ratio.clamp(lower, upper).detach()
    loss = -weight * advantages * logp
    agg = aggregate(loss, mask, aggregation, normalizer, max_len)
    return agg, _diagnostics(log_ratio, mask.to(logp.dtype), ratio < lower, ratio > upper)


def dcpo_bounds(
    old_prob: Tensor, clip_low: float = 0.16, clip_high: float = 0.2, max_ratio: float = 10.0
) -> tuple[Tensor, Tensor]:
    """DCPO dynamic-adaptive clipping bounds from the old token probability q (arXiv 2509.02333 §3.1):
    lo(q) = 0.5 + 0.5·sqrt(max(1 − 4ε_low/q, 0)), hi(q) = min(0.5 + 0.5·sqrt(1 + 4ε_high/q), r_max).
    Example (ε = 0.16/0.2): q = 0.9 ⇒ [0.768742, 1.187184]; q = 0.01 ⇒ [0.5, 5.0]; q = 0.001 ⇒ hi = 10.
    """
    q = old_prob.clamp(min=1e-12)
    lower = 0.5 + 0.5 * torch.sqrt(torch.clamp(1.0 - 4.0 * clip_low / q, min=0.0))
    upper = (0.5 + 0.5 * torch.sqrt(1.0 + 4.0 * clip_high / q)).clamp(max=max_ratio)
    return lower, upper


@POLICY_LOSSES.register("dcpo")
def dcpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.16,
    clip_high: float = 0.2,
    max_ratio: float = 10.0,
    dual_clip: float = 10.0,
    aggregation: str = "only-token-mean",
    normalizer: float | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, Diagnostics]:
    """DCPO: PPO-clip with per-token bounds [lo(q), hi(q)] from q = π_old(token), dual-clip for Â < 0,
    aggregated with only-token-mean (Yang et al., arXiv 2509.02333, eq. 8).

    `dual_clip` c caps the loss of a negative-advantage token at −c'·Â with c' = max(c, r_max)
    (`max_ratio`): the paper caps the ratio at r_max = 10 for both signs, hi(q) ≤ r_max for Â > 0 and this
    cap for Â < 0. The default is 10, and a c below r_max is raised to r_max, so c = 3 acts as 10.
    verl's `clip_ratio_c` (default 3) is the plain dual-clip constant of Ye et al. and is used as given;
    the DCPO authors' verl fork caps hi(q) at max(c, 10) and dual-clips at c (default 3). rlft follows
    the paper's cap of 10.
    Example: Â = −1, r = 20 ⇒ loss 10 (c' = 10), zero gradient.
    """
    log_ratio = _log_ratio(logp, old_logp)
    lower, upper = dcpo_bounds(torch.exp(old_logp.detach()), clip_low, clip_high, max_ratio)
    loss, low, high, dual = _clipped_surrogate(
        torch.exp(log_ratio), advantages, lower, upper, max(dual_clip, max_ratio)
    )
    agg = aggregate(loss, mask, aggregation, normalizer, max_len)
    return agg, _diagnostics(log_ratio, mask.to(logp.dtype), low, high, clipfrac_dual=dual)


@POLICY_LOSSES.register("ppo_penalty")
def ppo_penalty_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    kl: Tensor | None = None,
    beta: float = 1.0,
    aggregation: str = "token-mean",
    normalizer: float | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, Diagnostics]:
    """PPO with an adaptive KL penalty: ℓ = −r·Â + β·KL[π_old(·|s) ‖ π_θ(·|s)] (arXiv 1707.06347 §4).

    `kl` is the exact per-state KL when the caller has the full distributions (classic control); without
    it the sample estimate (r − 1) − log r of KL(π_old‖π_θ) is used. Adapt β with `PPOPenaltyKLController`.
    """
    mask = mask.to(logp.dtype)
    log_ratio = _log_ratio(logp, old_logp)
    ratio = torch.exp(log_ratio)
    if kl is None:
        kl = (ratio - 1) - log_ratio
    loss = -advantages * ratio + beta * kl
    agg = aggregate(loss, mask, aggregation, normalizer, max_len)
    never = torch.zeros_like(ratio, dtype=torch.bool)
    return agg, _diagnostics(log_ratio, mask, never, never)


@POLICY_LOSSES.register("reinforce")
def reinforce_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    aggregation: str = "seq-mean-token-sum",
    normalizer: float | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, Diagnostics]:
    """Plain REINFORCE: ℓ = −Â·log π_θ (Williams 1992), seq-mean-token-sum by default.

    `old_logp` is used only for the approx-KL diagnostic (pass None when there is no old policy).
    """
    loss = -advantages * logp
    agg = aggregate(loss, mask, aggregation, normalizer, max_len)
    log_ratio = torch.zeros_like(logp) if old_logp is None else _log_ratio(logp, old_logp)
    never = torch.zeros_like(logp, dtype=torch.bool)
    return agg, _diagnostics(log_ratio.detach(), mask.to(logp.dtype), never, never)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    aggregation: str = "token-mean",
    normalizer: float | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, Diagnostics]:
    """Clipped value loss ½·max((V − R)², (V_clip − R)²), V_clip = V_old + clip(V − V_old, ±ε_v).

    From OpenAI baselines ppo2 (not the PPO paper); ε_v = 0.2 in verl, TRL and DeepSpeed-Chat.
    `clip=None` gives the plain ½(V − R)². `vf_clipfrac` is the masked fraction of tokens whose clipped
    loss is the one taken (verl/TRL: (V_clip − R)² > (V − R)²), counted only where |V − V_old| > ε_v:
    inside the range V_clip is V up to rounding, which must not count. Every aggregation works;
    seq-mean-token-sum-norm needs `max_len` and raises a ValueError naming the mode without it.
    Examples: V_old = 0.5, V = 1.0, R = 0.9 ⇒ 0.02, clipped; V_old = 0.04, V = −0.01, R = 0.09 ⇒ 0.005,
    not clipped.
    """
    per_token = (values - returns) ** 2
    taken = torch.zeros_like(per_token, dtype=torch.bool)
    if clip is not None:
        delta = values - old_values
        clipped = (old_values + delta.clamp(-clip, clip) - returns) ** 2
        taken = (delta.abs() > clip) & (clipped > per_token)
        per_token = torch.where(taken, clipped, per_token)
    agg = aggregate(0.5 * per_token, mask, aggregation, normalizer, max_len)
    with torch.no_grad():
        frac = masked_mean(taken.to(values.dtype), mask.to(values.dtype))
    return agg, {"vf_clipfrac": frac}


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H = logsumexp(z) − Σ softmax(z)·z of the categorical distribution at each position.

    Computed in at least float32: bf16/fp16/fp32 logits give a float32 entropy, float64 logits a float64
    one.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of a diagonal Gaussian, summed over action dimensions: Σ (½ log(2πe) + log σ)."""
    return (0.5 * math.log(2 * math.pi * math.e) + log_std).sum(-1)


def entropy_bonus(
    entropy: Tensor,
    mask: Tensor,
    aggregation: str = "token-mean",
    normalizer: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """The entropy term to *add* to a loss: −aggregate(H) (c2·S[π_θ] in PPO's objective, arXiv 1707.06347).

    seq-mean-token-sum-norm needs `max_len` and raises a ValueError naming the mode without it."""
    return -aggregate(entropy, mask, aggregation, normalizer, max_len)
