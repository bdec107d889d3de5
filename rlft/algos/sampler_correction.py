"""Importance-sampling correction for a sampler whose numerics differ from the trainer's (TIS / MIS).

When the rollouts come from an inference engine (vLLM, bf16 sampling kernels), the log-probs it reports
for the tokens it sampled, log μ(y_t) = ``logp_sampler``, differ from the trainer's log π_old(y_t) =
``logp_old`` recomputed on the same tokens. The tokens were drawn from μ, not π_old, so even the first
epoch's policy gradient is off-policy. The correction weighs each token's policy loss by the importance
ratio of trainer to sampler,

    log ρ_t = clamp(logp_old_t − logp_sampler_t, ±20),    ρ_t = exp(log ρ_t)   (ρ_t = 1 when they agree),

cut back so that its variance stays bounded. The modes (``SAMPLER_CORRECTIONS``, picked by name):

- ``none``:           w_t = 1; the mismatch is measured (the metrics below) but not corrected.
- ``token_truncate``: w_t = min(ρ_t, C), truncated IS (TIS).
- ``sequence_mask``:  a sequence whose ratio ρ(y) = Π_t ρ_t lies outside [lower, upper] is dropped
                      (w = 0 on all its tokens); kept sequences get w = 1 (or ρ(y) with ``reweight``).
- ``geometric_mask``: the same with the per-token geometric mean ρ̄(y) = exp(mean_t log ρ_t).

Use: ℓ'_t = w_t · ℓ_t, where ℓ_t is the per-token policy loss (the PPO-clip term, …) before aggregation;
verl multiplies its ``rollout_is_weights`` and TRL its ``importance_sampling_ratio`` in the same place.
The weights are detached: they rescale the gradient and never carry one. Multiplying by the weights leaves
a dropped sequence in the loss normaliser (as TRL does); to take it out of the normaliser as well (verl
applies rejection to the response mask), aggregate with ``mask · keep[:, None]`` as the mask.

Masked positions are selected away before any arithmetic, so a NaN or ±inf log-prob there (padding
garbage, a sampler that reports nothing after EOS) never reaches a sum or an exp and every output is
finite. On a valid token a ±inf log-ratio saturates at the ±20 clamp; a NaN one (both log-probs −inf) is
not sanitised: its TIS weight is NaN and its sequence fails the MIS bounds test and is dropped.

Sources: Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", 2025
(https://fengyao.notion.site/off-policy-rl; TIS); Liu, Li, Fu, Wang, Liu, Shen, "When Speed Kills
Stability: Demystifying RL Collapse from the Training-Inference Mismatch", 2025
(https://richardli.xyz/rl-collapse; sequence-level MIS and geometric rejection); the verl documentation
"Rollout Importance Sampling" (``rollout_is_level`` token | sequence | geometric, ``rollout_is_mode``
truncate | mask) and TRL's ``GRPOConfig.vllm_importance_sampling_mode`` (token_truncate, sequence_mask, …).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .kl import LOG_RATIO_CLAMP
from .registry import Registry


@dataclass(frozen=True)
class SamplerCorrection:
    """What a correction mode returns for a batch of B responses of T tokens.

    - ``weights`` (B, T): detached loss weights, 0 on masked tokens and on every token of a dropped
      sequence.
    - ``keep`` (B,) bool: False for a sequence the mode dropped (always True for ``none`` and
      ``token_truncate``).
    - ``metrics``: detached 0-d tensors, the same keys for every mode (like the policy losses'
      diagnostics, they stay on the device until the trainer logs them): those of
      :func:`sampler_mismatch_metrics` plus ``weight_mean`` (mean w_t over valid tokens, dropped ones
      counting 0), ``truncated_frac`` (share of valid tokens whose weight the cap C lowered, ρ_t > C) and
      ``seq_masked_frac`` (share of sequences with at least one valid token that were dropped).
    """

    weights: Tensor
    keep: Tensor
    metrics: dict[str, Tensor]


SAMPLER_CORRECTIONS: Registry[Callable[..., SamplerCorrection]] = Registry("sampler correction")

# Default C / upper bound: the threshold of verl's example configuration. verl suggests 1.5–5 for tokens,
# 2–10 for sequences and 1.0002–1.001 for the geometric mean.
DEFAULT_CAP = 2.0
DEFAULT_GEOMETRIC_UPPER = 1.001


def sampler_log_ratio(logp_old: Tensor, logp_sampler: Tensor, mask: Tensor) -> Tensor:
    """log ρ_t = clamp(logp_old_t − logp_sampler_t, ±20) on valid tokens and exactly 0 on masked ones.

    A float mask is read as nonzero = valid. The inputs are detached and the difference is taken in at
    least float32: bf16 log-probs summed over a long response would lose the small gaps this measures.
    Example: logp_old = −1.0, logp_sampler = −1.2 ⇒ 0.2; logp_sampler = −inf on a valid token ⇒ 20.
    """
    if not logp_old.shape == logp_sampler.shape == mask.shape:
        raise ValueError(
            f"logp_old, logp_sampler and mask must have one shape, got "
            f"{tuple(logp_old.shape)}, {tuple(logp_sampler.shape)}, {tuple(mask.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(logp_old.dtype, logp_sampler.dtype), torch.float32)
    diff = logp_old.detach().to(dtype) - logp_sampler.detach().to(dtype)
    # where, not a product with the mask: NaN · 0 = NaN, and masked positions may hold NaN or ±inf.
    return torch.where(mask.bool(), diff, 0.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _masked_token_mean(x: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, x, 0.0).sum() / valid.sum().clamp(min=1)


def _mismatch(log_ratio: Tensor, valid: Tensor) -> dict[str, Tensor]:
    ratio = torch.exp(log_ratio)
    return {
        "ratio_mean": _masked_token_mean(ratio, valid),
        "ratio_max": torch.where(valid, ratio, 0.0).max(),
        "kl_k1": _masked_token_mean(-log_ratio, valid),
        "kl_k3": _masked_token_mean(torch.expm1(log_ratio) - log_ratio, valid),
    }


def sampler_mismatch_metrics(logp_old: Tensor, logp_sampler: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How far the sampler μ is from the trainer π_old on the valid tokens (y_t ~ μ), as detached 0-d tensors.

    - ``ratio_mean`` = mean_t ρ_t, ρ_t = π_old(y_t)/μ(y_t). About 1: E_μ[ρ] = 1 when μ covers π_old.
    - ``ratio_max`` = max_t ρ_t, the largest weight before any truncation (at most e^20).
    - ``kl_k1`` = mean_t (logp_sampler_t − logp_old_t) = mean_t (−log ρ_t): Schulman's k1 estimate of
      KL(μ‖π_old), unbiased because the tokens were drawn from μ; signed (negative about half the time).
    - ``kl_k3`` = mean_t (ρ_t − 1 − log ρ_t): Schulman's k3 estimate of the same KL(μ‖π_old), also
      unbiased, ≥ 0 and of lower variance.
    These are :func:`rlft.algos.kl_k1` / :func:`rlft.algos.kl_k3` with logp = logp_sampler and
    ref_logp = logp_old (here k3 is not clamped to ±10: a diagnostic should show how bad it is), and verl's
    ``mismatch_kl`` / ``mismatch_k3_kl``. With no valid token every metric is 0.
    Example: log ρ = [0.2, 0, −1.5] ⇒ ratio_mean 0.814844, ratio_max 1.221403, kl_k1 0.433333,
    kl_k3 0.248178.
    """
    return _mismatch(sampler_log_ratio(logp_old, logp_sampler, mask), mask.bool())


def _result(
    log_ratio: Tensor, valid: Tensor, weights: Tensor, keep: Tensor, truncated: Tensor
) -> SamplerCorrection:
    has_tokens = valid.any(-1)
    metrics = _mismatch(log_ratio, valid)
    metrics["weight_mean"] = _masked_token_mean(weights, valid)
    metrics["truncated_frac"] = _masked_token_mean(truncated.to(weights.dtype), valid)
    dropped = (~keep & has_tokens).sum().to(weights.dtype)
    metrics["seq_masked_frac"] = dropped / has_tokens.sum().clamp(min=1)
    return SamplerCorrection(weights, keep, metrics)


def _check_cap(cap: float) -> None:
    if not cap >= 1.0:
        raise ValueError(
            f"the truncation cap C must be >= 1 (agreeing log-probs must keep weight 1), got {cap}"
        )


def truncated_is_weights(
    logp_old: Tensor, logp_sampler: Tensor, mask: Tensor, cap: float = DEFAULT_CAP
) -> Tensor:
    """Token-level truncated importance sampling (TIS): w_t = min(exp(logp_old_t − logp_sampler_t), C).

    Yao et al. 2025 ("Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"): on tokens
    drawn from μ, ρ_t·∇log π·Â corrects the token's sampling distribution back to π_old, but ρ_t is
    heavy-tailed; min(ρ_t, C) bounds its variance at the price of a small bias. Only the top is cut
    (a small ρ_t already shrinks the token's weight), as in the report, verl's token/truncate mode and
    TRL's ``token_truncate``. log ρ_t is clamped to ±20 before the exp. Returns a detached (B, T) tensor,
    0 on masked tokens, exactly 1 where the log-probs agree; ρ_t = C exactly is kept as is. C ≥ 1
    (default 2).
    Example: log ρ = [0.2, 0, −1.5], C = 2 ⇒ [1.221403, 1, 0.223130]; C = 1.1 ⇒ [1.1, 1, 0.223130].
    """
    _check_cap(cap)
    log_ratio = sampler_log_ratio(logp_old, logp_sampler, mask)
    return torch.exp(log_ratio).clamp(max=cap) * mask.bool()


def masked_is_weights(
    logp_old: Tensor,
    logp_sampler: Tensor,
    mask: Tensor,
    upper: float = DEFAULT_CAP,
    lower: float | None = None,
    geometric: bool = False,
    reweight: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sequence-level masked importance sampling (MIS): drop the sequences whose ratio is out of bounds.

    Per sequence i, with log ρ_{i,t} clamped to ±20 per token and valid tokens only:
        ``geometric=False``: log r_i = Σ_t log ρ_{i,t}, r_i = π_old(y_i)/μ(y_i), the exact sequence ratio
                            (verl's "sequence" level, TRL's ``sequence_*`` modes);
        ``geometric=True``:  log r_i = (1/|y_i|) Σ_t log ρ_{i,t}, the per-token geometric mean (verl's
                            "geometric" level). It does not grow with length, so it rejects by the
                            average per-token gap and does not drop long responses just for being long;
                            it is not an IS weight, and its bounds must be much tighter (default 1.001).
        keep_i = lower ≤ r_i ≤ upper, both ends inclusive (as verl's mask mode; TRL masks r > cap),
                 tested in log space (log lower ≤ log r_i ≤ log upper), so no exp can overflow;
        w_{i,t} = keep_i · (1, or with ``reweight`` exp(clamp(log r_i, ±20))).
    ``lower`` defaults to 1/upper (verl); 0 disables it. The bounds must satisfy 0 ≤ lower ≤ 1 ≤ upper,
    so that a sequence whose log-probs agree (r = 1) is always kept. The default w = 1 for kept sequences is
    pure rejection (verl's rejection sampling without IS weights); ``reweight`` gives the MIS estimator
    ρ(y)·1{kept} of Liu, Li et al. 2025 and TRL's ``sequence_mask``. A kept ratio already lies in
    [lower, upper], so it is its own truncation. A sequence with no valid token has r = 1 and is kept.
    Returns detached weights (B, T), 0 on masked tokens and dropped sequences, and keep (B,) bool.
    Example: log ρ rows [0.2, 0.3], [0.5, 0.4, 0.1], [−0.1, −0.1], upper 2 ⇒ r = 1.648721, 2.718282,
    0.818731, keep = [T, F, T]; with ``reweight`` the kept rows weigh 1.648721 and 0.818731.
    """
    lower = 1.0 / upper if lower is None else lower
    if not 0.0 <= lower <= 1.0 <= upper:
        raise ValueError(
            f"MIS bounds must satisfy 0 <= lower <= 1 <= upper, got lower={lower}, upper={upper}"
        )
    valid = mask.bool()
    log_ratio = sampler_log_ratio(logp_old, logp_sampler, mask)
    log_r = log_ratio.sum(-1)  # masked tokens hold exactly 0
    if geometric:
        log_r = log_r / valid.sum(-1).clamp(min=1)
    log_lower = math.log(lower) if lower > 0.0 else -math.inf
    keep = (log_r >= log_lower) & (log_r <= math.log(upper))  # a NaN log r fails both: dropped
    seq_weight = (
        torch.exp(log_r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)) if reweight else torch.ones_like(log_r)
    )
    weights = torch.where(keep, seq_weight, 0.0)[:, None] * valid
    return weights, keep


@SAMPLER_CORRECTIONS.register("none")
def no_correction(logp_old: Tensor, logp_sampler: Tensor, mask: Tensor) -> SamplerCorrection:
    """w_t = 1 on valid tokens: measure the mismatch and leave the loss alone (verl's ``rollout_is: false``)."""
    valid = mask.bool()
    log_ratio = sampler_log_ratio(logp_old, logp_sampler, mask)
    keep = torch.ones(valid.shape[:-1], dtype=torch.bool, device=valid.device)
    return _result(log_ratio, valid, valid.to(log_ratio.dtype), keep, torch.zeros_like(valid))


@SAMPLER_CORRECTIONS.register("token_truncate")
def token_truncate_correction(
    logp_old: Tensor, logp_sampler: Tensor, mask: Tensor, cap: float = DEFAULT_CAP
) -> SamplerCorrection:
    """TIS, w_t = min(ρ_t, C) (:func:`truncated_is_weights`); no sequence is dropped."""
    valid = mask.bool()
    weights = truncated_is_weights(logp_old, logp_sampler, mask, cap)
    log_ratio = sampler_log_ratio(logp_old, logp_sampler, mask)
    keep = torch.ones(valid.shape[:-1], dtype=torch.bool, device=valid.device)
    return _result(log_ratio, valid, weights, keep, torch.exp(log_ratio) > cap)


@SAMPLER_CORRECTIONS.register("sequence_mask")
def sequence_mask_correction(
    logp_old: Tensor,
    logp_sampler: Tensor,
    mask: Tensor,
    upper: float = DEFAULT_CAP,
    lower: float | None = None,
    reweight: bool = False,
) -> SamplerCorrection:
    """MIS on the sequence ratio Π_t ρ_t (:func:`masked_is_weights`, ``geometric=False``)."""
    valid = mask.bool()
    weights, keep = masked_is_weights(logp_old, logp_sampler, mask, upper, lower, False, reweight)
    log_ratio = sampler_log_ratio(logp_old, logp_sampler, mask)
    return _result(log_ratio, valid, weights, keep, torch.zeros_like(valid))


@SAMPLER_CORRECTIONS.register("geometric_mask")
def geometric_mask_correction(
    logp_old: Tensor,
    logp_sampler: Tensor,
    mask: Tensor,
    upper: float = DEFAULT_GEOMETRIC_UPPER,
    lower: float | None = None,
    reweight: bool = False,
) -> SamplerCorrection:
    """MIS on the geometric mean exp(mean_t log ρ_t) (:func:`masked_is_weights`, ``geometric=True``)."""
    valid = mask.bool()
    weights, keep = masked_is_weights(logp_old, logp_sampler, mask, upper, lower, True, reweight)
    log_ratio = sampler_log_ratio(logp_old, logp_sampler, mask)
    return _result(log_ratio, valid, weights, keep, torch.zeros_like(valid))


def sampler_correction(
    name: str, logp_old: Tensor, logp_sampler: Tensor, mask: Tensor, **options: Any
) -> SamplerCorrection:
    """The correction a config names (``none`` | ``token_truncate`` | ``sequence_mask`` |
    ``geometric_mask``), with its options (``cap``; ``upper``, ``lower``, ``reweight``)."""
    return SAMPLER_CORRECTIONS.get(name)(logp_old, logp_sampler, mask, **options)
