"""Scoring offline data for the preference losses: Σ log π of a micro-batch's sequences in one fused forward
(:func:`score_sequences`), the reference's log-probs (:class:`Reference`: a precomputed table or the frozen
model), the per-example losses of one micro-batch (:func:`micro_batch_loss`) and KTO's KL baseline z₀
over a step (:func:`kto_baseline`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlft.algos import kto_kl_baseline
from rlft.models.forward_path import ForwardPlan
from rlft.models.fused.frozen import FrozenForward
from rlft.models.logprobs import grouped_logprob_sums
from rlft.run.distributed import sum_over_ranks, world
from rlft.train.preference.config import DPOConfig
from rlft.train.preference.data import OfflineData
from rlft.train.preference.loss import offline_loss
from rlft.train.preference.ref_cache import reference_logprob_sums

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["Reference", "kto_baseline", "micro_batch_loss", "score_sequences"]


def score_sequences(
    model: PreTrainedModel,
    data: OfflineData,
    rows: Sequence[int],
    pad_id: int,
    cfg: DPOConfig,
    frozen: FrozenForward | None = None,
) -> tuple[Tensor, Tensor]:
    """Σ log π and token counts of ``data.sequences[rows]`` (in ``rows`` order) in ONE forward pass;
    sequences of the same example share their prompt, which the fused forward computes once
    (``rlft.models.logprobs.grouped_logprob_sums``). Differentiable."""
    owner = data.owners
    groups: dict[int, list[int]] = {}  # example → positions in `rows` of its sequences
    for pos, r in enumerate(rows):
        groups.setdefault(owner[r], []).append(pos)
    batch = [
        (data.sequences[rows[ps[0]]][0], [data.sequences[rows[p]][1] for p in ps]) for ps in groups.values()
    ]
    sums, counts = grouped_logprob_sums(
        model,
        batch,
        pad_id,
        bf16=cfg.bf16,
        forward=cfg.forward,
        share_prompts=cfg.share_prompts,
        frozen=frozen,
    )
    # the loss over these per-sequence numbers is taken on the CPU, beside the reference table (the copy
    # is part of the graph)
    sums, counts = sums.cpu(), counts.cpu()
    order = torch.tensor([p for ps in groups.values() for p in ps])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return sums[inverse], counts[inverse]


class Reference:
    """Reference log-probs of a dataset's sequences: looked up in a precomputed tensor, or scored by the
    reference model on the fly (``precompute_ref: false``)."""

    def __init__(self, model: PreTrainedModel, pad_id: int, cfg: DPOConfig) -> None:
        # None once every table is precomputed: the trainer releases the model (train_dpo)
        self.model: PreTrainedModel | None = model
        self.pad_id, self.cfg = pad_id, cfg
        self.tables: dict[int, Tensor] = {}
        # on-the-fly scoring: the fused weights packed once when the run's plan says so (follow)
        self.frozen: FrozenForward | None = None

    def follow(self, plan: ForwardPlan) -> None:
        """Take the on-the-fly reference passes' path from the run's plan (none when every score comes
        from a precomputed table)."""
        if self.model is not None and not self.tables:
            self.frozen = plan.frozen_reference(self.model, self.cfg.bf16)
            self.cfg = dataclasses.replace(self.cfg, forward=plan.reference_forward)

    def precompute(self, data: OfflineData, log: Callable[[str], None], model_fp: str) -> None:
        self.tables[id(data)] = reference_logprob_sums(
            self._model(),
            data.sequences,
            self.pad_id,
            cache_dir=self.cfg.ref_cache_dir,
            bf16=self.cfg.bf16,
            forward=self.cfg.forward,
            log=log,
            model_fp=model_fp,
        )

    def __call__(self, data: OfflineData, rows: Sequence[int]) -> Tensor:
        table = self.tables.get(id(data))
        if table is not None:
            return table[torch.as_tensor(list(rows))]
        with torch.no_grad():
            return score_sequences(self._model(), data, rows, self.pad_id, self.cfg, self.frozen)[0]

    def _model(self) -> PreTrainedModel:
        if self.model is None:
            raise RuntimeError(
                "Reference: the model was released, and these sequences have no precomputed table"
            )
        return self.model


def micro_batch_loss(
    model: PreTrainedModel,
    data: OfflineData,
    examples: Sequence[int],
    pad_id: int,
    cfg: DPOConfig,
    reference: Reference | None,
    z0: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-example losses and metrics of one micro-batch of ``examples`` (indices into ``data``)."""
    rows = data.rows(examples)
    policy, counts = score_sequences(model, data, rows, pad_id, cfg)
    ref = reference(data, rows) if reference is not None else None
    if data.kind == "unpaired":
        return offline_loss(cfg, policy, counts, ref, labels=data.label_tensor(examples), z0=z0)
    if data.kind == "ranked":
        scores, valid = data.score_tensors(examples)
        shape = scores.shape
        flat = valid.reshape(-1).nonzero()[:, 0]  # rows are the valid entries of (P, K_max), row-major
        grid_p = policy.new_zeros(shape[0] * shape[1]).index_put((flat,), policy).view(shape)
        grid_n = counts.new_ones(shape[0] * shape[1]).index_put((flat,), counts).view(shape)
        return offline_loss(cfg, grid_p, grid_n, scores=scores, valid=valid)
    return offline_loss(cfg, policy, counts, ref)


@torch.no_grad()
def kto_baseline(
    model: PreTrainedModel,
    data: OfflineData,
    examples: Sequence[int],
    pad_id: int,
    cfg: DPOConfig,
    reference: Reference | None,
) -> Tensor:
    """z₀ over ``examples`` (a whole optimiser step; on several ranks this rank's share, the mean taken
    over every rank's): mean policy − reference log-ratio of the mismatched (prompt_i, completion_{i+1})
    sequences, clamped at 0 and detached (KTO, arXiv 2402.01306)."""
    if reference is None:
        raise TypeError(
            "kto_baseline: KTO's baseline is a log-ratio to the reference model, and none was given"
        )
    rows = data.mismatched_rows(examples)
    policy, _ = score_sequences(model, data, rows, pad_id, cfg)
    logratio = (policy - reference(data, rows)).detach()
    if world().size == 1:
        return kto_kl_baseline(logratio)
    total, count = sum_over_ranks(float(logratio.double().sum()), logratio.numel())
    return kto_kl_baseline(torch.tensor([total / count], dtype=logratio.dtype))
