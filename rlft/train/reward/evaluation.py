"""Reward-model evaluation: held-out loss, pairwise accuracy, reward gap and gold accuracy
(:func:`evaluate_rm`), and the mean and std of the model's scores on reference responses saved with the
model as its normalisation (:func:`reward_stats`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from rlft.data import DataError, pad_sequences
from rlft.models import sequence_scores
from rlft.train.reward.data import RankGroup, collate_groups, group_rewards
from rlft.train.reward.loss import pair_stats, rm_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["evaluate_rm", "reward_stats"]


@torch.no_grad()
def evaluate_rm(
    model: PreTrainedModel,
    groups: Sequence[RankGroup],
    pad_id: int,
    loss: str = "pairwise",
    batch_size: int = 64,
    gold: Sequence[Sequence[float]] | None = None,
    bf16: bool = False,
) -> dict[str, float]:
    """Held-out metrics: ``eval_loss`` (per element), ``eval_accuracy`` (share of labelled pairs the model
    orders the same way), ``eval_reward_gap`` (mean r_w − r_l), the scores' mean and std, and — with
    ``gold`` scores per response — ``eval_gold_accuracy`` (pairs ordered as the gold scorer orders them,
    gold ties left out) and ``eval_label_gold_agreement`` (how often the labels themselves agree with gold)."""
    was_training = model.training
    model.eval()
    loss_sum, n_elements, correct, gap, n_pairs = 0.0, 0, 0.0, 0.0, 0
    gold_right, label_right, gold_pairs = 0.0, 0, 0
    scores: list[float] = []
    for i in range(0, len(groups), batch_size):
        chunk = groups[i : i + batch_size]
        batch = collate_groups(chunk, pad_id)
        rewards = group_rewards(model, batch, bf16)
        losses = rm_loss(rewards, batch["ranks"], batch["valid"], loss)
        loss_sum, n_elements = loss_sum + float(losses.sum()), n_elements + losses.numel()
        c, g, n = pair_stats(rewards, batch["ranks"], batch["valid"])
        correct, gap, n_pairs = correct + c, gap + g, n_pairs + n
        scores.extend(rewards[batch["valid"]].tolist())
        if gold is not None:
            for p, group in enumerate(chunk):
                gs = gold[i + p]
                for w in range(len(group.ranks)):
                    for l in range(len(group.ranks)):
                        if group.ranks[w] > group.ranks[l] and gs[w] != gs[l]:
                            truth = 1.0 if gs[w] > gs[l] else -1.0
                            d = float(rewards[p, w] - rewards[p, l]) * truth
                            gold_right += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
                            label_right += truth > 0
                            gold_pairs += 1
    model.train(was_training)
    out = {
        "eval_loss": loss_sum / max(n_elements, 1),
        "eval_accuracy": correct / max(n_pairs, 1),
        "eval_reward_gap": gap / max(n_pairs, 1),
        "eval_reward_mean": statistics.fmean(scores) if scores else math.nan,
        "eval_reward_std": statistics.stdev(scores) if len(scores) > 1 else math.nan,
    }
    if gold is not None and gold_pairs:
        out["eval_gold_accuracy"] = gold_right / gold_pairs
        out["eval_label_gold_agreement"] = label_right / gold_pairs
    return out


@torch.no_grad()
def reward_stats(
    model: PreTrainedModel, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64
) -> dict[str, float]:
    """Mean and (unbiased) std of the model's scores of ``seqs``: the normalisation saved with the model."""
    was_training = model.training
    model.eval()
    scores = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        ids = pad_sequences(chunk, pad_id)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(s) for s in chunk])[:, None]).long()
        scores.append(sequence_scores(model, ids, mask))
    model.train(was_training)
    flat = torch.cat(scores)
    if flat.numel() < 2:
        raise DataError(f"normalisation needs at least 2 reference responses, got {flat.numel()}")
    return {"mean": float(flat.mean()), "std": max(float(flat.std()), 1e-6)}
