"""The sample and score stages of online RL: G completions per prompt, their rewards, DAPO's dynamic
sampling and ReMax's greedy baseline. Also the prompt stream (the data position of exact resume).

Dynamic sampling (DAPO, arXiv 2503.14476 §3.2; verl ``max_num_gen_batches``): sample a round of
``prompts_per_step`` groups, drop every group whose rewards are all equal (its advantages would all be 0),
and sample further rounds until ``prompts_per_step`` groups survive; then keep exactly that many. After
``max_sample_rounds`` rounds without enough groups it stops with an error, as verl does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rlft.data import PromptExample
from rlft.models import Sampler, SamplingParams
from rlft.run.seeding import epoch_seed
from rlft.train.online.rollout_batch import RolloutBatch

__all__ = ["DynamicSamplingError", "PromptStream", "RolloutStats", "collect_rollout", "zero_variance_groups"]


class DynamicSamplingError(ValueError):
    """Dynamic sampling hit its round cap before enough prompt groups had reward variance (a ValueError so
    that the CLI reports it as one line)."""


@dataclass
class PromptStream:
    """Prompts in a fresh seeded permutation every epoch; (epoch, pos) is the whole data position."""

    n: int
    seed: int
    epoch: int = 0
    pos: int = 0
    _order: tuple[int, Tensor] | None = field(default=None, repr=False)

    def order(self) -> Tensor:
        if self._order is None or self._order[0] != self.epoch:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            self._order = (self.epoch, torch.randperm(self.n, generator=gen))
        return self._order[1]

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
            m = min(k - len(out), self.n - self.pos)
            out += self.order()[self.pos : self.pos + m].tolist()
            self.pos += m
        return out

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n"] != self.n or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint data position is for {state['n']} prompts with seed {state['seed']}, "
                f"but this run has {self.n} prompts and seed {self.seed}"
            )
        self.epoch, self.pos = state["epoch"], state["pos"]


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


def _rows(examples: Sequence[PromptExample], prompt_index: Tensor) -> tuple[list[Any], dict[str, list[Any]]]:
    """Prompts and extra fields (``answer`` …) repeated to one per completion."""
    chosen = [examples[int(i)] for i in prompt_index]
    keys = sorted(set().union(*(e.extra for e in chosen)))
    return [e.prompt for e in chosen], {k: [e.extra.get(k) for e in chosen] for k in keys}


def score_rows(
    rewards: Any, examples: Sequence[PromptExample], prompt_index: Tensor, texts: list[str], lengths: Tensor
) -> Any:
    """The reward set's result for completions ``texts`` of prompts ``prompt_index``."""
    prompts, rows = _rows(examples, prompt_index)
    return rewards(prompts, texts, rows=rows, completion_lengths=lengths.tolist())


def sample_round(
    sampler: Sampler,
    examples: Sequence[PromptExample],
    indices: list[int],
    params: SamplingParams,
) -> tuple[RolloutBatch, list[str]]:
    """``params.n`` completions for each of the prompts ``indices`` (dataset positions)."""
    rollout = sampler.sample([examples[i].prompt_ids for i in indices], params)
    batch = RolloutBatch(
        prompt_ids=rollout.prompt_ids,
        prompt_mask=rollout.prompt_mask,
        response_ids=rollout.response_ids,
        response_mask=rollout.response_mask,
        finished=rollout.finished,
        group_ids=rollout.group_ids,
        prompt_index=torch.tensor(indices, dtype=torch.long)[rollout.group_ids],
        sampler_logp=rollout.logprobs,
    )
    return batch, rollout.texts


def collect_rollout(
    sampler: Sampler,
    rewards: Any,
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
) -> tuple[RolloutBatch, RolloutStats]:
    """Sample and score one step's rollout (see the module docstring); ``seed`` seeds round r with
    ``seed + r`` so a step's rollout depends only on the weights, the data position and the seed."""
    clock = time.perf_counter
    stats = RolloutStats()
    kept: list[RolloutBatch] = []
    n_kept = 0
    while True:
        indices = stream.take(prompts_per_step)
        t0 = clock()
        batch, texts = sample_round(sampler, examples, indices, _with_seed(params, seed + stats.rounds))
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
            greedy_batch, greedy_texts = sample_round(sampler, examples, indices, greedy_params)
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
        n_groups = len(indices)
        stats.groups += n_groups
        stats.zero_variance += int(flat.view(n_groups, -1)[:, 0].sum())
        if not dynamic_sampling:
            return batch, stats
        keep_groups = (~flat).view(n_groups, -1)[:, 0].nonzero().flatten()[: prompts_per_step - n_kept]
        if keep_groups.numel():
            rows = torch.isin(batch.group_ids, keep_groups).nonzero().flatten()
            kept.append(batch.select(rows))
            n_kept += keep_groups.numel()
        if n_kept == prompts_per_step:
            return RolloutBatch.concat(kept, pad_id), stats
        if 0 < max_rounds <= stats.rounds:
            raise DynamicSamplingError(
                f"dynamic sampling: only {n_kept} of {prompts_per_step} prompt groups had rewards that "
                f"differ after {stats.rounds} rounds (max_sample_rounds={max_rounds}; "
                f"{stats.zero_variance} of {stats.groups} groups sampled had all-equal rewards). The "
                "task is too easy or too hard for the model at this point: raise max_sample_rounds "
                "(<= 0: no cap), lower prompts_per_step, raise num_generations, or set "
                "dynamic_sampling: false"
            )


def _with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    return dataclasses.replace(params, seed=seed)


def _fill_invalid(scores: Tensor, valid: Tensor, group_ids: Tensor) -> Tensor:
    if bool(valid.all()):
        return scores
    out = scores.clone()
    for g in torch.unique(group_ids[~valid]).tolist():
        rows = group_ids == g
        ok = rows & valid
        out[rows & ~valid] = scores[ok].mean() if bool(ok.any()) else 0.0
    return out
