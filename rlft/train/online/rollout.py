"""The rollout of online RL — sample, score, estimate: G completions per prompt, their rewards (with DAPO's
dynamic sampling and ReMax's greedy baseline), then per-token rewards and advantages (:func:`advantage_step`,
every estimator called through its line of the call table ``rlft.algos.ESTIMATOR_ARGS``).

Dynamic sampling (DAPO, arXiv 2503.14476 §3.2; verl ``max_num_gen_batches``): sample a round of
``prompts_per_step`` groups, drop every group whose rewards are all equal (its advantages would all be 0),
and sample further rounds until ``prompts_per_step`` groups survive; then keep exactly that many. After
``max_sample_rounds`` rounds without enough groups it stops with an error, as verl does.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rlft.algos import (
    ADVANTAGES,
    ESTIMATOR_ARGS,
    AdvantageState,
    explained_variance,
    kl_estimate,
    masked_mean,
    masked_whiten,
    shaped_token_rewards,
)
from rlft.data import PromptExample
from rlft.data.formats import Prompt
from rlft.models import Sampler, SamplingParams
from rlft.run import ConfigError
from rlft.run.distributed import all_gather_objects, sum_over_ranks, world
from rlft.train.online.config import RLConfig, preset_value
from rlft.train.online.prompt_stream import PromptStream
from rlft.train.online.rollout_batch import RolloutBatch
from rlft.train.online.rollout_shards import Shards, first_varied_groups, sample_shards, with_seed

if TYPE_CHECKING:
    from rlft.rewards import RewardResult, RewardSet

__all__ = [
    "DynamicSamplingError",
    "RolloutStats",
    "advantage_step",
    "check_advantage",
    "collect_rollout",
    "estimate_advantages",
    "estimator_args",
    "gather_rollout",
    "needs_critic",
    "zero_variance_groups",
]


class DynamicSamplingError(ValueError):
    """Dynamic sampling hit its round cap before enough prompt groups had reward variance (a ValueError so
    that the CLI reports it as one line)."""


@dataclass
class RolloutStats:
    """What the sample/score stages measured over every completion they drew this step."""

    rewards: list[Tensor] = field(default_factory=list)  # total reward per round
    per_function: dict[str, list[Tensor]] = field(default_factory=dict)
    lengths: list[Tensor] = field(default_factory=list)
    truncated: list[Tensor] = field(default_factory=list)
    groups: int = 0
    zero_variance: int = 0
    rounds: int = 0
    skipped: int = 0
    greedy_rewards: list[Tensor] = field(default_factory=list)
    tokens: int = 0  # prompt + response tokens processed by the sampler
    time_sample: float = 0.0
    time_score: float = 0.0

    def metrics(self) -> dict[str, float]:
        total = torch.cat(self.rewards)
        lengths = torch.cat(self.lengths).float()
        out = {
            "reward": _nanmean(total),
            "reward_std": _nanstd(total),
            "response_len_mean": float(lengths.mean()),
            "response_len_max": float(lengths.max()),
            "clipped_ratio": float(torch.cat(self.truncated).float().mean()),
            "zero_var_groups": self.zero_variance / max(self.groups, 1),
            "sample_rounds": self.rounds,
        }
        for name, parts in self.per_function.items():
            values = torch.cat(parts)
            out[f"reward_{name}"] = _nanmean(values)
            out[f"reward_{name}_std"] = _nanstd(values)
        if self.greedy_rewards:
            out["reward_greedy"] = _nanmean(torch.cat(self.greedy_rewards))
        if self.skipped:
            out["reward_skipped"] = self.skipped
        return out

    @staticmethod
    def merged(parts: Sequence[RolloutStats]) -> RolloutStats:
        """The statistics of several processes' shards as one (times: the slowest process's)."""
        out = RolloutStats(rounds=max(p.rounds for p in parts))
        for p in parts:
            out.rewards += p.rewards
            out.lengths += p.lengths
            out.truncated += p.truncated
            out.greedy_rewards += p.greedy_rewards
            for name, values in p.per_function.items():
                out.per_function.setdefault(name, []).extend(values)
            out.groups += p.groups
            out.zero_variance += p.zero_variance
            out.skipped += p.skipped
            out.tokens += p.tokens
        out.time_sample = max(p.time_sample for p in parts)
        out.time_score = max(p.time_score for p in parts)
        return out


def gather_rollout(
    batch: RolloutBatch, stats: RolloutStats, pad_id: int
) -> tuple[RolloutBatch, RolloutStats, Tensor]:
    """(every process's rows in rank order, their merged statistics, the rank that holds each row). On
    one process: ``batch``, ``stats`` and zeros. The estimate stage then runs on the whole step's batch
    on every rank — group, batch and running statistics need no reduction of their own — and each rank
    trains on its rows with the whole mini-batch's normalisers."""
    if world().size == 1:
        return batch, stats, torch.zeros(len(batch), dtype=torch.long)
    parts = all_gather_objects((batch, stats))
    owner = torch.cat([torch.full((len(b),), r, dtype=torch.long) for r, (b, _) in enumerate(parts)])
    full = RolloutBatch.concat([b for b, _ in parts], pad_id)
    return full, RolloutStats.merged([st for _, st in parts]), owner


def _nanmean(x: Tensor) -> float:
    x = x[~x.isnan()]
    return float(x.mean()) if x.numel() else float("nan")


def _nanstd(x: Tensor) -> float:
    x = x[~x.isnan()]
    return float(x.std()) if x.numel() > 1 else 0.0


def zero_variance_groups(scores: Tensor, group_ids: Tensor) -> Tensor:
    """Bool per row: its group's rewards are all equal (max == min), so every advantage would be 0."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n = int(inverse.max()) + 1
    hi = torch.full((n,), -torch.inf).scatter_reduce(0, inverse, scores, "amax")
    lo = torch.full((n,), torch.inf).scatter_reduce(0, inverse, scores, "amin")
    return (hi == lo)[inverse]


def _rows(
    examples: Sequence[PromptExample], prompt_index: Tensor
) -> tuple[list[Prompt], dict[str, Sequence[object]]]:
    """Prompts and extra fields (``answer`` …) repeated to one per completion."""
    chosen = [examples[int(i)] for i in prompt_index]
    keys = sorted(set().union(*(e.extra for e in chosen)))
    return [e.prompt for e in chosen], {k: [e.extra.get(k) for e in chosen] for k in keys}


def score_rows(
    rewards: RewardSet,
    examples: Sequence[PromptExample],
    prompt_index: Tensor,
    texts: list[str],
    lengths: Tensor,
) -> RewardResult:
    """The reward set's result for completions ``texts`` of prompts ``prompt_index``."""
    prompts, rows = _rows(examples, prompt_index)
    return rewards(prompts, texts, rows=rows, completion_lengths=lengths.tolist())


def collect_rollout(
    sampler: Sampler,
    rewards: RewardSet,
    examples: Sequence[PromptExample],
    stream: PromptStream,
    params: SamplingParams,
    prompts_per_step: int,
    pad_id: int,
    *,
    dynamic_sampling: bool = False,
    max_rounds: int = 10,
    greedy_baseline: bool = False,
    seed: int = 0,
    shards: Shards | None = None,
) -> tuple[RolloutBatch, RolloutStats]:
    """Sample and score one step's rollout (see the module docstring); ``seed`` seeds round r with
    ``seed + r`` so a step's rollout depends only on the weights, the data position and the seed.

    ``shards``: this process samples and scores only its shards of every round's prompts, and returns its
    rows and the statistics of what it drew; every process takes the same prompts from ``stream``. With
    dynamic sampling the groups kept are the first with reward variance in shard order, over all
    processes, so the step keeps what one process sampling every shard would keep."""
    shards = shards or Shards()
    clock = time.perf_counter
    stats = RolloutStats()
    kept: list[list[RolloutBatch]] = [[] for _ in shards.mine]  # per shard of this process, by round
    n_kept = 0
    while True:
        indices = stream.take(prompts_per_step)
        t0 = clock()
        params_r = with_seed(params, seed + stats.rounds)
        batch, texts = sample_shards(sampler, examples, indices, params_r, shards, pad_id)
        greedy_texts = None
        if greedy_baseline:
            greedy_params = SamplingParams(
                max_new_tokens=params.max_new_tokens,
                temperature=params.temperature,
                stop_strings=params.stop_strings,
                eos_token_ids=params.eos_token_ids,
                greedy=True,
                seed=0,
                bf16=params.bf16,
            )
            greedy_batch, greedy_texts = sample_shards(
                sampler, examples, indices, greedy_params, shards, pad_id
            )
        t1 = clock()
        stats.time_sample += t1 - t0
        stats.rounds += 1
        stats.tokens += int(batch.prompt_mask.sum() + batch.response_mask.sum())
        result = score_rows(rewards, examples, batch.prompt_index, texts, batch.response_lengths)
        batch.scores = result.total
        if greedy_texts is not None:
            greedy = score_rows(
                rewards, examples, greedy_batch.prompt_index, greedy_texts, greedy_batch.response_lengths
            )
            if not bool(greedy.valid.all()):
                raise ValueError("ReMax: the reward of a greedy completion is missing or invalid")
            batch.baseline_scores = greedy.total[batch.group_ids]
            stats.greedy_rewards.append(greedy.total)
        stats.time_score += clock() - t1
        stats.rewards.append(result.total)
        for name, values in result.per_function.items():
            stats.per_function.setdefault(name, []).append(values)
        stats.lengths.append(batch.response_lengths)
        stats.truncated.append(~batch.finished)
        stats.skipped += result.skipped
        batch.loss_mask = batch.response_mask * result.valid[:, None].to(batch.response_mask.dtype)
        # A sample without a valid reward carries no loss; give it its group's mean so that the group's
        # statistics (mean, std) are those of the valid samples as far as possible.
        batch.scores = _fill_invalid(result.total, result.valid, batch.group_ids)

        flat = zero_variance_groups(batch.scores, batch.group_ids)
        n_groups = len(shards.mine) * (len(indices) // shards.count)
        group_flat = flat.view(n_groups, -1)[:, 0]
        stats.groups += n_groups
        stats.zero_variance += int(group_flat.sum())
        if not dynamic_sampling:
            return batch, stats
        keep_groups = first_varied_groups(group_flat, prompts_per_step - n_kept)
        per_shard = n_groups // len(shards.mine)
        for j in range(len(shards.mine)):  # rows of each shard, kept apart: the step's rows are shard-major
            mine = keep_groups[keep_groups // per_shard == j]
            if mine.numel():
                kept[j].append(batch.select(torch.isin(batch.group_ids, mine).nonzero().flatten()))
        (kept_everywhere,) = sum_over_ranks(keep_groups.numel())
        n_kept += int(kept_everywhere)
        if n_kept == prompts_per_step:  # a process may keep none of the groups: then it has no rows
            parts = [part for shard in kept for part in shard]
            return RolloutBatch.concat(parts, pad_id) if parts else batch.select([]), stats
        if 0 < max_rounds <= stats.rounds:
            (zero_variance, groups) = sum_over_ranks(stats.zero_variance, stats.groups)
            raise DynamicSamplingError(
                f"dynamic sampling: only {n_kept} of {prompts_per_step} prompt groups had rewards that "
                f"differ after {stats.rounds} rounds (max_sample_rounds={max_rounds}; "
                f"{zero_variance:.0f} of {groups:.0f} groups sampled had all-equal rewards). The "
                "task is too easy or too hard for the model at this point: raise max_sample_rounds "
                "(<= 0: no cap), lower sampling.prompts_per_step, raise sampling.num_generations, or set "
                "dynamic_sampling: false"
            )


def _fill_invalid(scores: Tensor, valid: Tensor, group_ids: Tensor) -> Tensor:
    if bool(valid.all()):
        return scores
    out = scores.clone()
    for g in torch.unique(group_ids[~valid]).tolist():
        rows = group_ids == g
        ok = rows & valid
        out[rows & ~valid] = scores[ok].mean() if bool(ok.any()) else 0.0
    return out


# --- the estimate stage: per-token rewards and advantages of a scored batch ---------------------------------
# Every estimator is called through its line of the call table rlft.algos.ESTIMATOR_ARGS; sequence-level
# results (B,) are broadcast over each row's tokens.

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
            "rlft.algos.ESTIMATOR_ARGS saying which inputs it gets"
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
    mask = batch.filled("loss_mask").to(torch.float32)
    scores = batch.filled("scores")
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


def advantage_step(
    cfg: RLConfig, batch: RolloutBatch, kl_coef: float, state: AdvantageState
) -> dict[str, float]:
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
        kl_tokens = (
            kl_estimate(preset_value(cfg.kl.estimator, "kl.estimator"), rollout_logp, batch.ref_logp) * mask
        )
        k1_seq = (kl_estimate("k1", rollout_logp, batch.ref_logp) * mask).sum(-1)
        metrics = {
            "kl_ref": float(masked_mean(kl_tokens, mask)),
            "kl_ref_seq": float(k1_seq.mean()),
            "kl_coef": float(kl_coef),
        }
        if cfg.kl.placement == "reward":
            kl_in_reward = kl_tokens
    batch.advantages, batch.returns, batch.token_rewards = estimate_advantages(
        preset_value(cfg.advantage, "advantage"),
        batch,
        kl=kl_in_reward,
        kl_coef=kl_coef,
        gamma=cfg.gamma,
        lam=cfg.lam,
        scale=preset_value(cfg.scale_rewards, "scale_rewards"),
        unbiased=cfg.std_unbiased,
        state=state,
        extra=cfg.advantage_kwargs,
        score_clip=cfg.score_clip,
    )
    loss_mask = batch.filled("loss_mask").to(torch.float32)
    if batch.values is not None:
        returns = batch.returns if batch.returns is not None else batch.advantages + batch.values
        metrics["score"] = float(batch.filled("scores").mean())
        metrics["value_mean"] = float(masked_mean(batch.values, loss_mask))
        metrics["return_mean"] = float(masked_mean(returns, loss_mask))
        metrics["explained_variance"] = explained_variance(batch.values, returns, loss_mask)
    if kl_in_reward is not None:
        metrics["score"] = float(batch.filled("scores").mean())
        metrics["non_score_reward"] = float((-kl_coef * kl_in_reward * loss_mask).sum(-1).mean())
    if cfg.whiten_advantages and float(loss_mask.sum()) >= 2:
        batch.advantages = masked_whiten(batch.advantages, loss_mask)
    return metrics
