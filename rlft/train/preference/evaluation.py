"""Offline preference evaluation: the training metrics on held-out data (:func:`evaluate_offline`) and, on a
task with a hidden gold score, the gold win rate of the policy against the reference (:class:`WinRate`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from rlft.models import SamplingParams, sample
from rlft.run.seeding import win_rate_seed
from rlft.train.preference.config import DPOConfig
from rlft.train.preference.data import OfflineData
from rlft.train.preference.loss import summarize
from rlft.train.preference.scoring import Reference, kto_baseline, micro_batch_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["WinRate", "evaluate_offline"]


@torch.no_grad()
def evaluate_offline(
    model: PreTrainedModel, data: OfflineData, pad_id: int, cfg: DPOConfig, reference: Reference | None
) -> dict[str, float]:
    """The training metrics on held-out data (``eval_`` prefixed), in micro-batches of ``batch_size``."""
    was_training = model.training
    model.eval()
    everything = list(range(len(data)))
    z0 = kto_baseline(model, data, everything, pad_id, cfg, reference) if data.kind == "unpaired" else None
    losses, metrics = [], []
    for lo in range(0, len(data), cfg.batch_size):
        loss, mets = micro_batch_loss(
            model, data, everything[lo : lo + cfg.batch_size], pad_id, cfg, reference, z0
        )
        losses.append(loss)
        metrics.append(mets)
    model.train(was_training)
    out = summarize(losses, metrics)
    if z0 is not None:
        out["kl"] = float(z0)
    return {f"eval_{k}": v for k, v in out.items()}


class WinRate:
    """Gold win rate of the policy against the reference on a task's held-out prompts.

    ``samples`` completions per prompt are drawn at temperature 1 from both models with the same seeds
    (common random numbers: before any update the two sets are identical and the win rate is exactly
    0.5, ties counting one half), and compared by the task's hidden gold score.
    """

    def __init__(self, task: Any, tokenizer: PreTrainedTokenizerBase, cfg: DPOConfig) -> None:
        self.task, self.tokenizer = task, tokenizer
        base = list(task.prompts("eval"))
        self.prompts = [p for p in base for _ in range(cfg.win_rate_samples)]
        self.params = SamplingParams(
            max_new_tokens=cfg.win_rate_max_new_tokens, n=cfg.win_rate_samples, seed=win_rate_seed(cfg.seed)
        )
        self.base_prompts = base
        self.reference_texts: list[str] = []
        self.reference_gold = math.nan

    def _texts(self, model: PreTrainedModel) -> list[str]:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            texts = sample(model, self.tokenizer, self.base_prompts, self.params).texts
        model.train(was_training)
        return texts

    def set_reference(self, model: PreTrainedModel) -> None:
        self.reference_texts = self._texts(model)
        gold = self.task.gold_score(self.prompts, self.reference_texts)
        self.reference_gold = sum(gold) / len(gold)

    def __call__(self, model: PreTrainedModel) -> dict[str, float]:
        texts = self._texts(model)
        gold = self.task.gold_score(self.prompts, texts)
        return {
            "eval_win_rate": self.task.win_rate(self.prompts, texts, self.reference_texts),
            "eval_gold_score": sum(gold) / len(gold),
            "eval_ref_gold_score": self.reference_gold,
            "eval_mean_words": sum(len(t.split()) for t in texts) / len(texts),
        }
