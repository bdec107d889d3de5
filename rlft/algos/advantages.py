"""Advantage estimators.

Conventions: token-level tensors are (batch, time) with time on the last dimension; `mask` is 1 on real
steps/tokens and 0 on padding. Sequence-level tensors (one score per completion) are (batch,), and
`group_ids` (batch,) says which prompt group each completion belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .masked import masked_whiten
from .registry import Registry

ADVANTAGES: Registry[Callable[..., Any]] = Registry("advantage estimator")


def _backward_scan(
    deltas: Tensor, decay: float, mask: Tensor | None, dones: Tensor | None, init: Tensor | None
) -> Tensor:
    """y_t = x_t + decay·(1−done_t)·y_{t+1}, skipping masked steps (they neither add nor break the chain)."""
    factors = torch.full_like(deltas, decay) if dones is None else decay * (1.0 - dones.to(deltas))
    # Per-step views made once: the loop is op-bound on short rollouts, so keep it to ~4 ops per step.
    xs, fs = deltas.unbind(-1), factors.unbind(-1)
    ms = None if mask is None else mask.to(torch.bool).unbind(-1)
    carry = torch.zeros_like(xs[0]) if init is None else init.to(deltas)
    out = [carry] * len(xs)
    for t in range(len(xs) - 1, -1, -1):
        y = xs[t] + fs[t] * carry
        if ms is not None:
            carry = torch.where(ms[t], y, carry)
            y = y * ms[t]
        else:
            carry = y
        out[t] = y
    return torch.stack(out, -1)


def _next_unmasked(values: Tensor, mask: Tensor | None, bootstrap: Tensor | None) -> Tensor:
    """For each t, the value of the next unmasked step after t (`bootstrap`, or 0, past the end)."""
    if mask is None:
        last = torch.zeros_like(values[..., :1]) if bootstrap is None else bootstrap.to(values).unsqueeze(-1)
        return torch.cat([values[..., 1:], last], -1)
    vs, ms = values.unbind(-1), mask.to(torch.bool).unbind(-1)
    carry = torch.zeros_like(vs[0]) if bootstrap is None else bootstrap.to(values)
    out = [carry] * len(vs)
    for t in range(len(vs) - 1, -1, -1):
        out[t] = carry
        carry = torch.where(ms[t], vs[t], carry)
    return torch.stack(out, -1)


@ADVANTAGES.register("reward_to_go")
def reward_to_go(
    rewards: Tensor,
    gamma: float = 1.0,
    mask: Tensor | None = None,
    dones: Tensor | None = None,
    bootstrap: Tensor | None = None,
) -> Tensor:
    """Discounted reward-to-go G_t = Σ_{t'≥t} γ^{t'−t} r_{t'} along the last dimension.

    `dones[t] = 1` ends an episode at step t (nothing flows back across it); masked steps are skipped;
    `bootstrap` is the value of the state after the last step (0 if omitted).
    Source: Williams (1992); the causality ("reward-to-go") form follows from Sutton et al. (2000).
    Example: r = [0, 0, 1], γ = 0.9 ⇒ G = [0.81, 0.9, 1.0].
    """
    return _backward_scan(rewards, gamma, mask, dones, bootstrap)


@ADVANTAGES.register("gae")
def gae(
    rewards: Tensor,
    values: Tensor,
    gamma: float,
    lam: float,
    mask: Tensor | None = None,
    dones: Tensor | None = None,
    bootstrap: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation; returns (advantages, returns = advantages + V).

    δ_t = r_t + γ V(s_{t+1}) − V(s_t),  Â_t = δ_t + γλ Â_{t+1}   (Schulman et al., arXiv 1506.02438).
    V(s_{t+1}) is the value of the next unmasked step (0 past the end, or `bootstrap`); `dones[t] = 1`
    means s_{t+1} is terminal, so neither its value nor its advantage flows back. Masked steps are
    skipped, which makes right padding (and holes such as tool output) invisible to the result.
    λ = 1 gives reward-to-go − V; λ = 0 the one-step TD error.
    Example: r = [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 1, λ = 0.95 ⇒ Â = [0.46575, 0.385, 0.3].
    """
    next_values = _next_unmasked(values, mask, bootstrap)
    if dones is not None:
        next_values = next_values * (1.0 - dones.to(values))
    deltas = rewards + gamma * next_values - values
    advantages = _backward_scan(deltas, gamma * lam, mask, dones, None)
    returns = advantages + values
    if mask is not None:
        returns = returns * mask
    return advantages, returns


def _group_stats(scores: Tensor, group_ids: Tensor, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (group mean, group std, group size) for scores (B,) grouped by `group_ids` (B,)."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    scores = scores.to(torch.float64)
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(scores))
    total = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, scores)
    mean = total / count
    sq = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, (scores - mean[inverse]) ** 2)
    denom = (count - 1).clamp(min=1) if unbiased else count
    std = (sq / denom).sqrt()
    return mean[inverse], std[inverse], count[inverse]


@ADVANTAGES.register("group_norm", "grpo")
def group_normalized_advantages(
    scores: Tensor,
    group_ids: Tensor,
    scale: str = "group",
    unbiased: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO outcome advantage Â_i = (R_i − mean_group R) / (std + eps), one value per completion.

    `scale`: "group" divides by the group's std (DeepSeekMath, arXiv 2402.03300); "batch" by the std of
    all scores in the batch (TRL `scale_rewards="batch"`); "none" does not divide (Dr. GRPO,
    arXiv 2503.20783). `unbiased` picks torch's N−1 std (verl, TRL) or the population std.
    A singleton group gets mean 0 and std 1 (verl), so its advantage is its score.
    Example: R = [1, 0, 0, 1] ⇒ ±0.866025 (unbiased), ±1 (population), ±0.5 (scale="none").
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    mean, std, count = _group_stats(scores, group_ids, unbiased)
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    centred = scores.to(torch.float64) - mean
    if scale == "group":
        std = torch.where(single, torch.ones_like(std), std)
        centred = centred / (std + eps)
    elif scale == "batch":
        batch_std = (
            scores.to(torch.float64).std(unbiased=unbiased) if scores.numel() > 1 else scores.new_ones(())
        )
        centred = centred / (batch_std + eps)
    return centred.to(scores.dtype)


@ADVANTAGES.register("rloo")
def rloo_advantages(scores: Tensor, group_ids: Tensor) -> Tensor:
    """Leave-one-out baseline: A_i = R_i − (1/(k−1)) Σ_{j≠i} R_j = (k/(k−1)) (R_i − mean R).

    Ahmadian et al., arXiv 2402.14740. A group of one has no "others", so it is an error.
    Example: R = [1, 0, 0, 1] ⇒ A = [2/3, −2/3, −2/3, 2/3].
    """
    mean, _, count = _group_stats(scores, group_ids, unbiased=False)
    if bool((count < 2).any()):
        raise ValueError("RLOO needs at least 2 samples per prompt group")
    return (count / (count - 1) * (scores.to(torch.float64) - mean)).to(scores.dtype)


@ADVANTAGES.register("remax")
def remax_advantages(scores: Tensor, greedy_scores: Tensor) -> Tensor:
    """ReMax: A = r(x, y) − r(x, ȳ), with ȳ the greedy decode of the same prompt (Li et al., arXiv 2310.10505).

    Example: r(sample) = 0.8, r(greedy) = 0.5 ⇒ A = 0.3 on every token of the sample.
    """
    return scores - greedy_scores


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last unmasked position of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.to(torch.bool), positions, torch.zeros_like(positions)).amax(-1)


def shaped_token_rewards(
    scores: Tensor,
    mask: Tensor,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    score_clip: float | None = None,
) -> Tensor:
    """Per-token reward r_t = −β·KL_t, plus clip(score, −c, c) on the last response token.

    The KL-in-reward shaping of RLHF-PPO (Ziegler et al., arXiv 1909.08593; InstructGPT; DeepSpeed-Chat),
    REINFORCE++ and RLOO. The score is clipped *before* it is added.
    Example: β = 0.1, KL = [0.2, −0.5, 0], score 7 clipped to 5 ⇒ r = [−0.02, 0.05, 5.0].
    """
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    if kl is not None:
        rewards = rewards - kl_coef * kl.to(scores.dtype)
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    last = last_token_index(mask)
    rewards = rewards.scatter_add(-1, last.unsqueeze(-1), scores.unsqueeze(-1))
    return rewards * mask


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp_advantages(
    token_rewards: Tensor, mask: Tensor, gamma: float = 1.0, unbiased: bool = True, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """REINFORCE++: returns G_t of the KL-shaped per-token rewards, whitened over all valid tokens.

    Hu, arXiv 2501.03262: A_t = r(x,y) − β Σ_{s≥t} KL_s, then (A − mean_batch)/std_batch over every valid
    token of the (global) batch. Build `token_rewards` with `shaped_token_rewards`. Returns
    (advantages, unwhitened returns).
    Example: r = 1, β = 0.1, KL = [0.2, −0.1, 0.3] ⇒ returns [0.96, 0.98, 0.97] before whitening.
    """
    returns = reward_to_go(token_rewards, gamma, mask=mask)
    return masked_whiten(returns, mask, unbiased=unbiased, eps=eps), returns


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(
    scores: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    unbiased: bool = True,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++-baseline: subtract the group mean from each score, then REINFORCE++.

    The centred score goes on the EOS token, −β·KL on every token, returns are summed (γ = 1) and
    whitened over all valid tokens (OpenRLHF; Hu, arXiv 2501.03262 v2).
    A group of one is centred on itself, so its score drops out: its return is only the −β·KL shaping
    (0 with β = 0). verl's `compute_reinforce_plus_plus_baseline_outcome_advantage` instead uses mean 0
    for a singleton and keeps the raw score, as rlft's `group_norm` does. rlft keeps the zero here: one
    sample gives nothing to compare against, and an uncentred score would be whitened together with the
    centred ones of the other groups.
    Example: R = [1, 0, 0, 1], one token each, β = 0 ⇒ ±0.866025 (unbiased) or ±1 (population).
    """
    mean, _, _ = _group_stats(scores, group_ids, unbiased=False)
    centred = (scores.to(torch.float64) - mean).to(scores.dtype)
    token_rewards = shaped_token_rewards(centred, mask, kl, kl_coef)
    return reinforce_pp_advantages(token_rewards, mask, 1.0, unbiased, eps)


@dataclass
class SASState:
    """DCPO's per-prompt running statistics: prompt key → (times sampled, mean, population variance).

    Kept across training steps and saved in checkpoints via `state_dict` / `load_state_dict`.
    """

    stats: dict[str, tuple[int, float, float]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, list[float]]:
        return {k: [float(i), mu, var] for k, (i, mu, var) in self.stats.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.stats = {k: (int(v[0]), float(v[1]), float(v[2])) for k, v in state.items()}


# A σ at or below this fraction of max(|μ|, 1) counts as zero in SAS. Equal rewards leave a rounding
# residue of ~1e-16·|μ| in float64 (9 × 0.3 gives σ ≈ 6e-17), and rewards that differ only by float32
# rounding (2^-23 ≈ 1.2e-7 relative) carry no signal either; 1e-6 sits above both and far below any real
# reward gap. The max(·, 1) makes it an absolute 1e-6 for rewards of order one or smaller.
SAS_ZERO_STD_RTOL = 1e-6


def _standardise(x: Tensor, mean: float, std: float) -> Tensor:
    if std <= SAS_ZERO_STD_RTOL * max(abs(mean), 1.0):
        return torch.zeros_like(x)
    return (x - mean) / std


@ADVANTAGES.register("dcpo_sas")
def dcpo_sas_advantages(
    scores: Tensor, group_ids: Tensor, prompt_keys: dict[int, str], state: SASState, unbiased: bool = False
) -> Tensor:
    """DCPO smooth advantage standardisation (Yang et al., arXiv 2509.02333, §3.2 and A.7).

    For a prompt seen i times (now included): Â_new from the current group, Â_total from all G·i rewards,
    μ_total = (μ_new + (i−1)μ_old)/i, σ²_total = [σ²_new + (i−1)σ²_old + ((i−1)/i)(μ_old − μ_new)²]/i,
    SA_new = ((i−1)/i)Â_new + (1/i)Â_total, SA_total = (1/i)Â_new + ((i−1)/i)Â_total, and Â is whichever
    has the smaller magnitude. A zero σ makes its standardised term 0, and σ ≤ 1e-6·max(|μ|, 1)
    (`SAS_ZERO_STD_RTOL`) counts as zero, for σ_new and σ_total alike, so rounding cannot give a group or a
    prompt whose rewards are all equal ±1 advantages; rewards sharing a large offset (|μ| ≫ 1) lose
    differences below 1e-6·|μ|. Statistics are population ones (the paper); `unbiased=True` uses the N−1
    std for σ_new like the authors' code. `prompt_keys` maps each group id to a stable prompt key; `state`
    is updated in place.
    Example (i = 3, earlier groups [1,0,0,0], [1,1,0,0], now [1,1,1,0]): R = 1 ⇒ 0.718234, R = 0 ⇒ −1.244017.
    """
    out = torch.empty_like(scores, dtype=torch.float64)
    values = scores.to(torch.float64)
    for gid in torch.unique(group_ids).tolist():
        sel = group_ids == gid
        r = values[sel]
        key = prompt_keys[gid]
        mu_new = float(r.mean())
        var_new = float(r.var(unbiased=True)) if unbiased and r.numel() > 1 else float(r.var(unbiased=False))
        i_old, mu_old, var_old = state.stats.get(key, (0, 0.0, 0.0))
        i = i_old + 1
        mu_tot = (mu_new + (i - 1) * mu_old) / i
        var_tot = (var_new + (i - 1) * var_old + ((i - 1) / i) * (mu_old - mu_new) ** 2) / i
        a_new = _standardise(r, mu_new, var_new**0.5)
        a_tot = _standardise(r, mu_tot, var_tot**0.5)
        sa_new = ((i - 1) / i) * a_new + (1 / i) * a_tot
        sa_tot = (1 / i) * a_new + ((i - 1) / i) * a_tot
        out[sel] = torch.where(sa_new.abs() <= sa_tot.abs(), sa_new, sa_tot)
        state.stats[key] = (i, mu_tot, var_tot)
    return out.to(scores.dtype)


@dataclass
class MovingAverageBaseline:
    """Williams' reinforcement comparison: b ← α·b + (1 − α)·R̄ (Williams 1992, "r̄(t) = γ r̄(t−1) + (1−γ) r(t)").

    Call `update` *after* computing the current batch's advantages so the baseline does not depend on the
    current actions. The first update sets b to the batch mean.
    Example: b = 0.5, α = 0.9, return 0.81 ⇒ b = 0.531.
    """

    alpha: float = 0.9
    value: float | None = None

    def update(self, mean_return: float) -> float:
        self.value = (
            mean_return if self.value is None else self.alpha * self.value + (1 - self.alpha) * mean_return
        )
        return self.value

    def advantages(self, returns: Tensor) -> Tensor:
        """A = G − b (b = 0 before the first update)."""
        return returns - (0.0 if self.value is None else self.value)


@ADVANTAGES.register("moving_average")
def moving_average_advantages(
    token_rewards: Tensor, mask: Tensor, baseline: MovingAverageBaseline, gamma: float = 1.0
) -> tuple[Tensor, Tensor]:
    """REINFORCE with Williams' reinforcement comparison; returns (advantages, returns G_t).

    A_t = G_t − b with G_t the reward-to-go of `token_rewards`, then b ← α·b + (1 − α)·mean episode return
    (the return at each non-empty row's first unmasked token), updated *after* the advantages so b does
    not depend on the current actions (Williams 1992). `baseline` is updated in place; the caller keeps it
    across steps and in checkpoints.
    Example: terminal reward R, γ = 1 ⇒ every token gets R − b.
    """
    returns = reward_to_go(token_rewards, gamma, mask=mask)
    advantages = baseline.advantages(returns) * mask
    rows = mask.sum(-1) > 0
    if bool(rows.any()):
        first = returns.gather(-1, mask.to(torch.long).argmax(-1, keepdim=True)).squeeze(-1)
        baseline.update(float(first[rows].mean()))
    return advantages, returns


@dataclass
class AdvantageState:
    """Estimator state a trainer carries across steps (and saves in checkpoints): DCPO's per-prompt
    statistics and REINFORCE's moving-average baseline."""

    sas: SASState = field(default_factory=SASState)
    baseline: MovingAverageBaseline = field(default_factory=MovingAverageBaseline)

    def state_dict(self) -> dict[str, Any]:
        return {"sas": self.sas.state_dict(), "baseline": [self.baseline.alpha, self.baseline.value]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sas.load_state_dict(state["sas"])
        self.baseline.alpha, self.baseline.value = state["baseline"]


# --- the call table ---------------------------------------------------------------------------------------
# A trainer calls every estimator through this table, so the inputs each one gets are explicit and greppable
# (adding an estimator is its function, its registry entry and its line here). The input names:
#
#     scores          (B,)   total reward, minus β·Σ_t KL_t when the KL goes in the reward and the estimator
#                            takes neither per-token rewards nor the KL (RLOO's sequence-level KL)
#     token_rewards   (B, R) −β·KL_t on every token + the score on the last one (shaped_token_rewards);
#     rewards                the same, under GAE's name
#     greedy_scores   (B,)   reward of the greedy decode of the row's prompt (ReMax)
#     values          (B, R) critic values (GAE)
#     kl, kl_coef            per-token KL (π_old ‖ π_ref) and β, for estimators that shape rewards themselves
#     group_ids, mask, gamma, lam, scale (= scale_rewards), unbiased (= std_unbiased; unset: the default),
#     prompt_keys, state     DCPO's per-prompt key and running statistics (SASState)
#     baseline               REINFORCE's MovingAverageBaseline
#
# An estimator that lists `token_rewards` or `rewards` gets the KL-shaped per-token rewards; one that lists
# neither those nor `kl` gets the summed KL taken off its `scores` instead.
ESTIMATOR_ARGS: dict[str, tuple[str, ...]] = {
    "reward_to_go": ("rewards", "gamma", "mask"),
    "gae": ("rewards", "values", "gamma", "lam", "mask"),
    "group_norm": ("scores", "group_ids", "scale", "unbiased"),
    "grpo": ("scores", "group_ids", "scale", "unbiased"),
    "rloo": ("scores", "group_ids"),
    "remax": ("scores", "greedy_scores"),
    "reinforce_pp": ("token_rewards", "mask", "gamma", "unbiased"),
    "reinforce_pp_baseline": ("scores", "group_ids", "mask", "kl", "kl_coef", "unbiased"),
    "dcpo_sas": ("scores", "group_ids", "prompt_keys", "state", "unbiased"),
    "moving_average": ("token_rewards", "mask", "baseline", "gamma"),
}
