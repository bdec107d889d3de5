"""Reward-model losses on (P, K) rewards: the ranked pairs of each prompt (:func:`pair_mask`), the per-element
loss (:func:`rm_loss`: pairwise Bradley–Terry or InstructGPT's k-wise mean), the element count that
normalises a step, and the pair statistics (accuracy, reward gap) logged in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlft.algos import bradley_terry_loss, kwise_ranking_loss
from rlft.train.reward.data import RankGroup

__all__ = ["element_count", "pair_mask", "pair_stats", "rm_loss"]


def pair_mask(ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(P, K, K) bool: [p, w, l] true where response w is ranked above l (ties form no pair)."""
    return (ranks.unsqueeze(-1) > ranks.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)


def rm_loss(
    rewards: torch.Tensor,
    ranks: torch.Tensor,
    valid: torch.Tensor,
    loss: str = "pairwise",
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Per-element losses: one per pair (``pairwise``, Bradley–Terry with margin and centring) or one per
    prompt (``kwise``, InstructGPT: the mean over its pairs, plus the centring term averaged the same way).
    ``margin`` (P,) is subtracted from each of the prompt's pairs; NaN means none."""
    pairs = pair_mask(ranks, valid)
    if loss == "pairwise":
        p, w, l = pairs.nonzero(as_tuple=True)
        m = None if margin is None else torch.nan_to_num(margin.to(rewards.dtype), nan=0.0)[p]
        return bradley_terry_loss(rewards[p, w], rewards[p, l], margin=m, center_coef=center_coef)
    if loss == "kwise":
        out = kwise_ranking_loss(rewards, ranks, valid)
        if center_coef:
            sums = (rewards.unsqueeze(-1) + rewards.unsqueeze(-2)) ** 2 * pairs
            out = out + center_coef * sums.sum((-1, -2)) / pairs.sum((-1, -2))
        return out
    raise ValueError(f"unknown reward-model loss {loss!r}; expected pairwise or kwise")


def element_count(groups: Sequence[RankGroup], loss: str) -> int:
    if loss == "kwise":
        return len(groups)
    return sum(sum(1 for a in g.ranks for b in g.ranks if a > b) for g in groups)


def pair_stats(rewards: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> tuple[float, float, int]:
    """(correctly ordered pairs — ties count ½, Σ(r_w − r_l), number of pairs)."""
    pairs = pair_mask(ranks, valid)
    diff = (rewards.unsqueeze(-1) - rewards.unsqueeze(-2))[pairs]
    correct = float((diff > 0).sum()) + 0.5 * float((diff == 0).sum())
    return correct, float(diff.sum()), int(diff.numel())
