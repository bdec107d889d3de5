"""Evaluation of the policy on held-out prompts: greedy completions, scored by the task (``eval_accuracy``
for ``arithmetic``) and by the run's reward functions (``eval_reward``, the gold reward when the rewards
are verifiable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rlft.data import LengthLimits, PromptExample, encode_prompts, load_records
from rlft.data.lengths import context_length, prompt_budget
from rlft.data.tasks import Task, task_of
from rlft.models import Sampler, SamplingParams
from rlft.train.online.config import RLConfig
from rlft.train.online.rollout import score_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rlft.rewards import RewardSet

__all__ = ["RLEvalSet", "evaluate_policy", "load_eval_set"]


@dataclass
class RLEvalSet:
    examples: list[PromptExample]
    task: Task | None = None  # the built-in task whose ``evaluate`` scores completions, if any


def load_eval_set(cfg: RLConfig, tokenizer: PreTrainedTokenizerBase) -> RLEvalSet | None:
    """``eval.data``, or the eval split of a built-in task (disjoint from its train split); else None."""
    source = cfg.eval.data or (cfg.data if cfg.data.startswith("task:") else None)
    if source is None:
        return None
    fmt = cfg.format or ("prompt_only" if source.startswith("task:") else None)
    records = load_records(source, fmt=fmt, split="eval", limit=cfg.eval.samples)
    context = context_length(cfg.model, tokenizer)
    new_tokens = cfg.eval.max_new_tokens or cfg.sampling.max_new_tokens
    key = "eval.max_new_tokens" if cfg.eval.max_new_tokens else "sampling.max_new_tokens"
    limits = LengthLimits(
        max_prompt_tokens=prompt_budget(cfg.max_prompt_tokens, context, new_tokens, key), overflow="drop"
    )
    return RLEvalSet(examples=list(encode_prompts(records, tokenizer, limits)), task=task_of(source))


@torch.no_grad()
def evaluate_policy(
    sampler: Sampler, eval_set: RLEvalSet, rewards: RewardSet, cfg: RLConfig, batch_size: int = 256
) -> dict[str, float]:
    """Greedy completions of every eval prompt → the task's metrics (``eval_<name>``) and the mean reward."""
    params = SamplingParams(
        max_new_tokens=cfg.eval.max_new_tokens or cfg.sampling.max_new_tokens,
        stop_strings=tuple(cfg.sampling.stop_strings),
        greedy=True,
        seed=0,
        bf16=cfg.bf16,
    )
    texts: list[str] = []
    lengths: list[torch.Tensor] = []
    examples = eval_set.examples
    for i in range(0, len(examples), batch_size):
        rollout = sampler.sample([e.prompt_ids for e in examples[i : i + batch_size]], params)
        texts += rollout.texts
        lengths.append(rollout.response_lengths)
    out: dict[str, float] = {}
    index = torch.arange(len(examples))
    if eval_set.task is not None:
        keys = sorted(set().union(*(e.extra for e in examples)))
        extra = {k: [e.extra.get(k) for e in examples] for k in keys}
        scores = eval_set.task.evaluate([e.prompt for e in examples], texts, **extra)
        out.update({f"eval_{k}": float(v) for k, v in scores.items()})
    result = score_rows(rewards, examples, index, texts, torch.cat(lengths))
    total = result.total[~result.total.isnan()]
    out["eval_reward"] = float(total.mean()) if total.numel() else float("nan")
    out["eval_response_len"] = float(torch.cat(lengths).float().mean())
    return out
