"""Offline preference losses: per-sequence log-probs → per-example losses and metrics.

:func:`offline_loss` turns one micro-batch's Σ log-probs (policy and, where the loss has one, reference)
into per-example losses from ``rlft.algos.preference`` and the logged metrics (implicit rewards, margins,
accuracies, log-probs; NaN where a metric does not apply); :func:`summarize` averages them over a step or
an evaluation pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from rlft.algos import PREFERENCE_LOSSES
from rlft.run.distributed import sum_over_ranks
from rlft.train.preference.config import DPOConfig

__all__ = ["offline_loss", "summarize"]


def _nan_where(values: Tensor, keep: Tensor) -> Tensor:
    return torch.where(keep, values, torch.full_like(values, math.nan))


def offline_loss(
    cfg: DPOConfig,
    policy: Tensor,
    counts: Tensor,
    reference: Tensor | None = None,
    *,
    labels: Tensor | None = None,
    z0: Tensor | float | None = None,
    scores: Tensor | None = None,
    valid: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-example losses and per-example metrics (NaN where a metric does not apply) of one micro-batch.

    ``policy``, ``counts``, ``reference``: Σ log-probs, token counts and reference Σ log-probs of the
    batch's sequences in :meth:`OfflineData.rows` layout — preference: [chosen…, rejected…] (2B);
    unpaired: one per example, with ``labels`` (desirable?) and the batch's KL baseline ``z0``;
    ranked: (P, K) after reshaping by the caller, with ``scores`` and ``valid`` (P, K).
    """
    beta = cfg.beta_value
    fn = PREFERENCE_LOSSES.get(cfg.loss)
    counts = counts.to(policy.dtype).clamp(min=1)
    if cfg.loss == "rrhf":
        scores, valid = _given(scores, "scores", cfg), _given(valid, "valid", cfg)
        losses = fn(policy, counts, scores, cfg.rrhf_weight, cfg.length_penalty, valid)
        p = (policy / counts**cfg.length_penalty).detach()
        worse = (scores[:, :, None] < scores[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        right = (p[:, :, None] < p[:, None, :]) & worse
        pairs = worse.sum((-1, -2)).clamp(min=1)
        return losses, {"rank_accuracy": right.sum((-1, -2)) / pairs, "logps/mean": _masked_mean(p, valid)}
    if cfg.loss == "kto":
        labels = _given(labels, "labels", cfg)
        logratio = policy - _given(reference, "reference", cfg)
        losses = fn(logratio, labels, z0, beta, cfg.desirable_weight, cfg.undesirable_weight)
        reward = beta * logratio.detach()
        good = labels.to(torch.bool)
        return losses, {
            "rewards/chosen": _nan_where(reward, good),
            "rewards/rejected": _nan_where(reward, ~good),
            "logps/chosen": _nan_where(policy.detach(), good),
            "logps/rejected": _nan_where(policy.detach(), ~good),
        }
    half = policy.shape[0] // 2
    chosen, rejected = policy[:half], policy[half:]
    n_chosen, n_rejected = counts[:half], counts[half:]
    if cfg.loss in ("simpo", "orpo"):
        avg_c, avg_r = chosen / n_chosen, rejected / n_rejected
        if cfg.loss == "simpo":
            losses = fn(avg_c, avg_r, beta, cfg.gamma)
        else:  # ORPO's L_SFT is the token-mean NLL of the chosen response
            losses = fn(avg_c, avg_r, -avg_c, beta)
        reward_c, reward_r = beta * avg_c.detach(), beta * avg_r.detach()
    else:
        reference = _given(reference, "reference", cfg)
        lr_c, lr_r = chosen - reference[:half], rejected - reference[half:]
        if cfg.loss == "ipo":  # length-averaged log-ratios (TRL, with the IPO authors' agreement)
            losses = fn(lr_c / n_chosen, lr_r / n_rejected, beta)
        elif cfg.loss in ("cdpo", "robust"):
            losses = fn(lr_c, lr_r, beta, cfg.label_smoothing)
        else:
            losses = fn(lr_c, lr_r, beta)
        reward_c, reward_r = beta * lr_c.detach(), beta * lr_r.detach()
    return losses, {
        "rewards/chosen": reward_c,
        "rewards/rejected": reward_r,
        "rewards/margins": reward_c - reward_r,
        "rewards/accuracies": _accuracy(reward_c - reward_r),
        "logps/chosen": chosen.detach(),
        "logps/rejected": rejected.detach(),
    }


def _given(value: Tensor | None, name: str, cfg: DPOConfig) -> Tensor:
    """An argument that ``cfg.loss`` needs; its absence is a caller's bug, named here."""
    if value is None:
        raise TypeError(f"offline_loss: the {cfg.loss} loss needs {name}")
    return value


def _accuracy(margin: Tensor) -> Tensor:
    """1 where the chosen reward is higher, 0 where lower, ½ for a tie. Margins within 1e-5 are ties: the
    cached reference and the policy score a sequence in different batches, which moves sums by float
    rounding, and before any update every true margin is 0."""
    return torch.where(margin.abs() <= 1e-5, 0.5, (margin > 0).float())


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def summarize(
    losses: Sequence[Tensor], metrics: Sequence[dict[str, Tensor]], over_ranks: bool = False
) -> dict[str, float]:
    """Means over every example of a step (or an eval pass); NaN entries (metric n/a) are skipped.
    ``over_ranks``: the examples are this rank's share of a step, and the means are over all ranks'."""
    columns = {"loss": torch.cat([x.detach().reshape(-1) for x in losses]).double()}
    for key in metrics[0] if metrics else ():
        values = torch.cat([m[key].reshape(-1).double() for m in metrics])
        columns[key] = values[~values.isnan()]
    sums = [float(v.sum()) for v in columns.values()] + [v.numel() for v in columns.values()]
    if over_ranks:
        sums = sum_over_ranks(*sums)
    out = {}
    totals, counts = sums[: len(columns)], sums[len(columns) :]
    for key, total, count in zip(columns, totals, counts, strict=True):
        if count:
            out[key] = total / count
    if "rewards/chosen" in out and "rewards/rejected" in out and "rewards/margins" not in out:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]  # KTO: unpaired
    return out
