"""Reward-model data: preference or ranked records as :class:`RankGroup` (one prompt's responses as full
token sequences with their ranks), collated into one padded batch of every response with the (P, K) layout
back to groups, and scored once per response by the reward model (:func:`group_rewards`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rlft.data import (
    DataError,
    Encoded,
    LengthLimits,
    PreferenceRecord,
    RankedRecord,
    encode_preference,
    encode_ranked,
    pad_sequences,
)
from rlft.models import sequence_scores
from rlft.models.device import model_device
from rlft.models.precision import bf16_autocast

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["RankGroup", "collate_groups", "encode_groups", "group_rewards"]


@dataclass
class RankGroup:
    """One prompt's responses as full token sequences (prompt + response + EOS) with their ranks
    (higher = preferred; a preference pair is ranks [1, 0]); ``texts`` keeps the strings for gold scoring."""

    seqs: list[list[int]]
    ranks: list[float]
    margin: float | None = None
    prompt: Any = None
    texts: list[str] = field(default_factory=list)
    where: str = ""


def encode_groups(
    records: Sequence[Any], tokenizer: PreTrainedTokenizerBase, limits: LengthLimits | None = None
) -> Encoded[RankGroup]:
    """Preference or ranked records → :class:`RankGroup` (with ``.report``, what the length limits did),
    tokenised as the reward-model source scores them: prompt, response, EOS."""
    if records and isinstance(records[0], PreferenceRecord):
        encoded = encode_preference(records, tokenizer, limits)
        report = encoded.report
        out = [
            RankGroup(
                [e.prompt_ids + e.chosen_ids, e.prompt_ids + e.rejected_ids],
                [1.0, 0.0],
                e.margin,
                where=e.where,
            )
            for e in encoded
        ]
        texts = {r.where: (r.prompt, [r.chosen, r.rejected]) for r in records}
    elif records and isinstance(records[0], RankedRecord):
        ranked = encode_ranked(records, tokenizer, limits)
        report = ranked.report
        out = [
            RankGroup([e.prompt_ids + r for r in e.response_ids], list(e.scores), where=e.where)
            for e in ranked
        ]
        texts = {r.where: (r.prompt, list(r.responses)) for r in records}
        for g in out:
            if len(set(g.ranks)) < 2:
                raise DataError(
                    f"{g.where}: all {len(g.ranks)} responses have the same score (no pair to learn from)"
                )
    else:
        kind = type(records[0]).__name__ if records else "no records"
        raise DataError(f"reward-model training needs preference or ranked records, got {kind}")
    if len(texts) == len(records):  # locations are unique: match by location (robust to dropped records)
        for g in out:
            g.prompt, g.texts = texts[g.where]
    elif len(out) == len(records):  # in-memory records without locations: nothing was dropped
        for g, r in zip(out, records, strict=True):
            g.prompt, g.texts = (
                r.prompt,
                ([r.chosen, r.rejected] if isinstance(r, PreferenceRecord) else r.responses),
            )
    return Encoded(out, report)


def collate_groups(groups: Sequence[RankGroup], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch of every response of every group, and the (P, K) layout back to groups.

    ``slot`` (P, K) holds each response's row in ``input_ids`` (−1 where a group has fewer than K).
    """
    seqs = [s for g in groups for s in g.seqs]
    k = max(len(g.seqs) for g in groups)
    slot = torch.full((len(groups), k), -1, dtype=torch.long)
    ranks = torch.zeros(len(groups), k)
    row = 0
    for p, g in enumerate(groups):
        n = len(g.seqs)
        slot[p, :n] = torch.arange(row, row + n)
        ranks[p, :n] = torch.tensor(g.ranks, dtype=torch.float32)
        row += n
    ids = pad_sequences(seqs, pad_id)
    lengths = torch.tensor([len(s) for s in seqs])
    return {
        "input_ids": ids,
        "attention_mask": (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long(),
        "slot": slot,
        "ranks": ranks,
        "valid": slot >= 0,
        "margin": torch.tensor([math.nan if g.margin is None else g.margin for g in groups]),
    }


def group_rewards(model: PreTrainedModel, batch: dict[str, torch.Tensor], bf16: bool = False) -> torch.Tensor:
    """(P, K) rewards: each response scored once in one forward (under bfloat16 autocast with ``bf16``); 0
    in empty slots. On the batch's device (the CPU) wherever the model computes: the copy back is part of
    the graph, so the loss over these few numbers is taken beside the batch."""
    with bf16_autocast(bf16, model_device(model).type):
        flat = sequence_scores(model, batch["input_ids"], batch["attention_mask"]).to(batch["slot"].device)
    return torch.where(batch["valid"], flat[batch["slot"].clamp(min=0)], torch.zeros((), dtype=flat.dtype))
