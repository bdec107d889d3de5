"""Calling any advantage estimator of ``rlft.algos.ADVANTAGES`` from a rollout batch.

Estimators are plain functions with different inputs (``group_norm`` takes sequence scores and group ids,
``reinforce_pp`` per-token rewards, ``gae`` rewards and critic values, …). Each declares what it needs by
its parameter names; :func:`estimate_advantages` offers every input the trainer has under those names and
passes the ones the function asks for. Adding an estimator is therefore a function and a registry entry:

    scores          (B,)   total reward, minus β·Σ_t KL_t when the KL goes in the reward and the estimator
                           does not take per-token inputs (RLOO's sequence-level KL)
    token_rewards   (B, R) −β·KL_t on every token + the score on the last one (``shaped_token_rewards``);
    rewards                the same, under GAE's name
    greedy_scores   (B,)   reward of the greedy decode of the row's prompt (ReMax)
    values          (B, R) critic values (GAE)
    kl, kl_coef            per-token KL (π_old ‖ π_ref) and β, for estimators that shape rewards themselves
    group_ids, mask, gamma, lam, scale (= scale_rewards), unbiased (= std_unbiased, when set),
    prompt_keys, state     DCPO's per-prompt key and running statistics (SASState)
    baseline               REINFORCE's MovingAverageBaseline
    …and ``advantage_kwargs`` from the config.

Sequence-level results (B,) are broadcast over each row's tokens.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rlft.algos import (
    ADVANTAGES,
    MovingAverageBaseline,
    SASState,
    kl_estimate,
    masked_mean,
    masked_whiten,
    reward_to_go,
    shaped_token_rewards,
)
from rlft.run import ConfigError

from .rollout_batch import RolloutBatch

__all__ = [
    "AdvantageState",
    "advantage_inputs",
    "advantage_step",
    "estimate_advantages",
    "moving_average_advantages",
    "needs_critic",
]


@ADVANTAGES.register("moving_average")
def moving_average_advantages(
    token_rewards: Tensor, mask: Tensor, baseline: MovingAverageBaseline, gamma: float = 1.0
) -> tuple[Tensor, Tensor]:
    """REINFORCE with Williams' reinforcement comparison: A_t = G_t − b with G_t the reward-to-go, then
    b ← α·b + (1 − α)·mean episode return — updated *after* the advantages (Williams 1992; ALGORITHMS §1).
    With a terminal reward R and γ = 1 every token gets R − b.
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
    """Estimator state carried across steps (and saved in checkpoints)."""

    sas: SASState = field(default_factory=SASState)
    baseline: MovingAverageBaseline = field(default_factory=MovingAverageBaseline)

    def state_dict(self) -> dict[str, Any]:
        return {"sas": self.sas.state_dict(), "baseline": [self.baseline.alpha, self.baseline.value]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sas.load_state_dict(state["sas"])
        self.baseline.alpha, self.baseline.value = state["baseline"]


_TOKEN_INPUTS = ("token_rewards", "rewards", "kl")
_PROVIDED = {
    "scores",
    "group_ids",
    "mask",
    "token_rewards",
    "rewards",
    "greedy_scores",
    "values",
    "kl",
    "kl_coef",
    "gamma",
    "lam",
    "scale",
    "unbiased",
    "prompt_keys",
    "state",
    "baseline",
}


def advantage_inputs(name: str) -> tuple[set[str], set[str]]:
    """(required, optional) parameter names of estimator ``name``."""
    params = inspect.signature(ADVANTAGES.get(name)).parameters.values()
    required = {p.name for p in params if p.default is inspect.Parameter.empty}
    return required, {p.name for p in params} - required


def needs_critic(name: str) -> bool:
    """True when estimator ``name`` takes critic values (``gae``)."""
    return "values" in advantage_inputs(name)[0]


def check_advantage(name: str, has_critic: bool, extra: dict[str, Any]) -> None:
    """Fail at start-up, not after the first rollout, when the estimator needs an input the run lacks."""
    required, optional = advantage_inputs(name)
    missing = sorted(required - _PROVIDED - set(extra))
    if missing:
        raise ConfigError(
            f"config key 'advantage': estimator {name!r} needs {', '.join(missing)}, which the RL trainer "
            "does not provide (pass them in advantage_kwargs)"
        )
    if "values" in required and not has_critic:
        raise ConfigError(
            f"config key 'advantage': {name!r} needs critic values, but no critic is configured"
        )
    unknown = sorted(set(extra) - required - optional)
    if unknown:
        raise ConfigError(f"config key 'advantage_kwargs': {name!r} takes no argument {unknown[0]!r}")


def estimate_advantages(
    name: str,
    batch: RolloutBatch,
    *,
    kl: Tensor | None,
    kl_coef: float,
    gamma: float,
    lam: float,
    scale: str,
    unbiased: bool | None,
    state: AdvantageState,
    extra: dict[str, Any] | None = None,
    score_clip: float | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(advantages (B, R), returns (B, R) or None, token_rewards (B, R) or None) of ``batch``.

    ``kl`` is the per-token KL(π_old‖π_ref) estimate to put in the reward with coefficient ``kl_coef``
    (None when the KL is not in the reward); ``score_clip`` clips the score before it joins per-token
    rewards (RLHF-PPO's ±c)."""
    fn = ADVANTAGES.get(name)
    params = inspect.signature(fn).parameters
    mask = batch.loss_mask.to(torch.float32)
    scores = batch.scores
    if kl is not None:
        kl = kl * mask
    takes_tokens = any(p in params for p in _TOKEN_INPUTS)
    token_rewards = None
    if "token_rewards" in params or "rewards" in params:
        token_rewards = shaped_token_rewards(scores, mask, kl, kl_coef, score_clip)
    elif kl is not None and kl_coef and not takes_tokens:
        scores = scores - kl_coef * kl.sum(-1)  # the whole completion is one action: summed KL (RLOO)
    offered: dict[str, Any] = {
        "scores": scores,
        "group_ids": batch.group_ids,
        "mask": mask,
        "token_rewards": token_rewards,
        "rewards": token_rewards,
        "greedy_scores": batch.baseline_scores,
        "values": batch.values,
        "kl": kl,
        "kl_coef": kl_coef,
        "gamma": gamma,
        "lam": lam,
        "scale": scale,
        "prompt_keys": {
            int(g): str(int(p)) for g, p in zip(batch.group_ids, batch.prompt_index, strict=True)
        },
        "state": state.sas,
        "baseline": state.baseline,
    }
    if unbiased is not None:
        offered["unbiased"] = unbiased
    offered.update(extra or {})
    kwargs = {}
    for pname, param in params.items():
        value = offered.get(pname)
        if value is None:
            if param.default is inspect.Parameter.empty:
                raise ConfigError(f"advantage {name!r} needs {pname!r}, which this run does not provide")
            continue
        kwargs[pname] = value
    out = fn(**kwargs)
    advantages, returns = out if isinstance(out, tuple) else (out, None)
    if advantages.ndim == 1:
        advantages = advantages[:, None].expand_as(mask)
    return advantages.to(torch.float32) * mask, returns, token_rewards


def advantage_step(cfg: Any, batch: RolloutBatch, kl_coef: float, state: AdvantageState) -> dict[str, float]:
    """The estimate stage of the loop, from a batch whose log-probs, scores (and values) are filled in:

        KL_t     = k(π_old, π_ref) on response tokens                        (when ``batch.ref_logp`` is set)
        r_t      = −β·KL_t + clip(score, ±c)·[t = last]      (KL placement ``reward``: RLHF-PPO, RLOO, …)
        Â, R     = ADVANTAGES[cfg.advantage](…)              (GAE with ``batch.values`` for PPO)
        Â        ← (Â − mean)/std over the batch's tokens     (``whiten_advantages``)

    Fills ``batch.advantages``, ``returns`` and ``token_rewards``; returns the step's KL and reward metrics
    (``kl_ref``, ``kl_ref_seq``, ``kl_coef``, ``score``, ``non_score_reward``, and with a critic
    ``value_mean``, ``return_mean``, ``explained_variance``)."""
    metrics: dict[str, float] = {}
    kl_in_reward = None
    mask = batch.response_mask.to(torch.float32)
    if batch.ref_logp is not None:
        rollout_logp = batch.old_logp if batch.old_logp is not None else batch.sampler_logp
        kl_tokens = kl_estimate(cfg.kl.estimator, rollout_logp, batch.ref_logp) * mask
        k1_seq = (kl_estimate("k1", rollout_logp, batch.ref_logp) * mask).sum(-1)
        metrics = {
            "kl_ref": float(masked_mean(kl_tokens, mask)),
            "kl_ref_seq": float(k1_seq.mean()),
            "kl_coef": float(kl_coef),
        }
        if cfg.kl.placement == "reward":
            kl_in_reward = kl_tokens
    batch.advantages, batch.returns, batch.token_rewards = estimate_advantages(
        cfg.advantage,
        batch,
        kl=kl_in_reward,
        kl_coef=kl_coef,
        gamma=cfg.gamma,
        lam=cfg.lam,
        scale=cfg.scale_rewards,
        unbiased=cfg.std_unbiased,
        state=state,
        extra=cfg.advantage_kwargs,
        score_clip=cfg.score_clip,
    )
    loss_mask = batch.loss_mask.to(torch.float32)
    if batch.values is not None:
        from .rl_critic import explained_variance

        returns = batch.returns if batch.returns is not None else batch.advantages + batch.values
        metrics["score"] = float(batch.scores.mean())
        metrics["value_mean"] = float(masked_mean(batch.values, loss_mask))
        metrics["return_mean"] = float(masked_mean(returns, loss_mask))
        metrics["explained_variance"] = explained_variance(batch.values, returns, loss_mask)
    if kl_in_reward is not None:
        metrics["score"] = float(batch.scores.mean())
        metrics["non_score_reward"] = float((-kl_coef * kl_in_reward * loss_mask).sum(-1).mean())
    if cfg.whiten_advantages and float(loss_mask.sum()) >= 2:
        batch.advantages = masked_whiten(batch.advantages, loss_mask)
    return metrics
