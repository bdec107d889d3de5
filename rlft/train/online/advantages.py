"""Calling any advantage estimator of ``rlft.algos.ADVANTAGES`` from a rollout batch.

Estimators are plain functions with different inputs (``group_norm`` takes sequence scores and group ids,
``reinforce_pp`` per-token rewards, ``gae`` rewards and critic values, …). :data:`ESTIMATOR_ARGS` says, one
line per estimator, which of the trainer's inputs each one gets, under these names:

    scores          (B,)   total reward, minus β·Σ_t KL_t when the KL goes in the reward and the estimator
                           takes neither per-token rewards nor the KL (RLOO's sequence-level KL)
    token_rewards   (B, R) −β·KL_t on every token + the score on the last one (``shaped_token_rewards``);
    rewards                the same, under GAE's name
    greedy_scores   (B,)   reward of the greedy decode of the row's prompt (ReMax)
    values          (B, R) critic values (GAE)
    kl, kl_coef            per-token KL (π_old ‖ π_ref) and β, for estimators that shape rewards themselves
    group_ids, mask, gamma, lam, scale (= scale_rewards), unbiased (= std_unbiased; unset: the default),
    prompt_keys, state     DCPO's per-prompt key and running statistics (SASState)
    baseline               REINFORCE's MovingAverageBaseline
    …and ``advantage_kwargs`` from the config, checked against the estimator's own parameters.

Adding an estimator is a function, its registry entry and its line in :data:`ESTIMATOR_ARGS`.
Sequence-level results (B,) are broadcast over each row's tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rlft.algos import (
    ADVANTAGES,
    MovingAverageBaseline,
    SASState,
    explained_variance,
    kl_estimate,
    masked_mean,
    masked_whiten,
    shaped_token_rewards,
)
from rlft.run import ConfigError
from rlft.train.online.rollout_batch import RolloutBatch

__all__ = [
    "ESTIMATOR_ARGS",
    "AdvantageState",
    "advantage_step",
    "check_advantage",
    "estimate_advantages",
    "estimator_args",
    "needs_critic",
]


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


# Estimator name → the trainer inputs it is called with (names as in the module docstring). An estimator
# that lists `token_rewards` or `rewards` gets the KL-shaped per-token rewards; one that lists neither
# those nor `kl` gets the summed KL taken off its `scores` instead.
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

# Inputs whose None means "not set" (std_unbiased null, no KL in the reward): the estimator's own default
# applies. Any other input that is None is one the run lacks, and the call fails with a ConfigError.
_UNSET_IS_DEFAULT = frozenset({"unbiased", "kl"})


def estimator_args(name: str) -> tuple[str, ...]:
    """The inputs estimator ``name`` gets (its :data:`ESTIMATOR_ARGS` line)."""
    ADVANTAGES.get(name)  # an unknown name fails here, listing the registered ones
    try:
        return ESTIMATOR_ARGS[name]
    except KeyError:
        raise ConfigError(
            f"advantage estimator {name!r} is registered in rlft.algos.ADVANTAGES but has no line in "
            "rlft.train.online.advantages.ESTIMATOR_ARGS saying which inputs it gets"
        ) from None


def _takes_token_rewards(args: tuple[str, ...]) -> bool:
    return "token_rewards" in args or "rewards" in args


def needs_critic(name: str) -> bool:
    """True when estimator ``name`` takes critic values (``gae``)."""
    return "values" in estimator_args(name)


def _parameter_names(fn: Callable[..., Any]) -> set[str]:
    """Parameter names of ``fn``, the keys its ``advantage_kwargs`` / ``loss_kwargs`` may use."""
    return set(inspect.signature(fn).parameters)


def check_advantage(name: str, has_critic: bool, extra: dict[str, Any]) -> None:
    """Fail at start-up, not after the first rollout, when the estimator needs an input the run lacks or
    ``advantage_kwargs`` names an argument the estimator does not take."""
    args = estimator_args(name)
    if "values" in args and not has_critic:
        raise ConfigError(
            f"config key 'advantage': {name!r} needs critic values, but no critic is configured"
        )
    unknown = sorted(set(extra) - _parameter_names(ADVANTAGES.get(name)))
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
    rewards (RLHF-PPO's ±c). ``extra`` (``advantage_kwargs``) is passed on, over the trainer's inputs."""
    fn = ADVANTAGES.get(name)
    args = estimator_args(name)
    mask = batch.loss_mask.to(torch.float32)
    scores = batch.scores
    if kl is not None:
        kl = kl * mask
    token_rewards = None
    if _takes_token_rewards(args):
        token_rewards = shaped_token_rewards(scores, mask, kl, kl_coef, score_clip)
    elif kl is not None and kl_coef and "kl" not in args:
        scores = scores - kl_coef * kl.sum(-1)  # the whole completion is one action: summed KL (RLOO)
    inputs: dict[str, Callable[[], Any]] = {
        "scores": lambda: scores,
        "group_ids": lambda: batch.group_ids,
        "mask": lambda: mask,
        "token_rewards": lambda: token_rewards,
        "rewards": lambda: token_rewards,
        "greedy_scores": lambda: batch.baseline_scores,
        "values": lambda: batch.values,
        "kl": lambda: kl,
        "kl_coef": lambda: kl_coef,
        "gamma": lambda: gamma,
        "lam": lambda: lam,
        "scale": lambda: scale,
        "unbiased": lambda: unbiased,
        "prompt_keys": lambda: {
            int(g): str(int(p)) for g, p in zip(batch.group_ids, batch.prompt_index, strict=True)
        },
        "state": lambda: state.sas,
        "baseline": lambda: state.baseline,
    }
    given = {arg: inputs[arg]() for arg in args}
    given.update(extra or {})
    for arg in args:
        if given.get(arg) is None and arg not in _UNSET_IS_DEFAULT:
            raise ConfigError(f"advantage {name!r} needs {arg!r}, which this run does not provide")
    out = fn(**{k: v for k, v in given.items() if v is not None})
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
