"""Offline preference data as flat lists of scored sequences.

Every loss of the DPO family, KTO and RRHF needs, per example, the summed log-prob of a few
(prompt, completion) sequences. An :class:`OfflineData` holds all those sequences of a dataset in one
list, in a fixed layout, plus for each example the indices of its sequences:

- preference pairs: example i → (chosen, rejected);
- unpaired (KTO):   example i → (its completion, the mismatched sequence prompt_i + completion_{i+1});
  KTO's KL baseline z₀ is estimated on the mismatched ones. The pairing is fixed by dataset order (TRL
  rotates completions inside each batch instead), so reference log-probs of the mismatched sequences
  can be precomputed and cached like the others;
- ranked lists (RRHF): example i → its k responses.

The flat list is also exactly what the reference cache keys and scores.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rlft.data import (
    DataError,
    LengthLimits,
    encode_preference,
    encode_ranked,
    encode_unpaired,
    load_records,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["OfflineData", "encode_offline", "load_offline"]

ScoredSequence = tuple[list[int], list[int]]  # (prompt ids, completion ids)


@dataclass
class OfflineData:
    """``kind``: "preference", "unpaired" or "ranked"; ``groups[i]``: sequence indices of example i."""

    kind: str
    sequences: list[ScoredSequence]
    groups: list[list[int]]
    labels: list[bool] = field(default_factory=list)  # unpaired: desirable?
    scores: list[list[float]] = field(default_factory=list)  # ranked: one score per response
    report: str = ""

    def __len__(self) -> int:
        return len(self.groups)

    @functools.cached_property
    def owners(self) -> list[int]:
        """The example each sequence belongs to (sequences of one example share its prompt)."""
        out = [0] * len(self.sequences)
        for i, group in enumerate(self.groups):
            for s in group:
                out[s] = i
        return out

    def rows(self, examples: Sequence[int]) -> list[int]:
        """Sequence indices of a micro-batch, laid out for one forward pass: preference →
        [chosen…, rejected…]; unpaired → [completions…] (the mismatched ones are scored apart);
        ranked → every response of every prompt, prompt by prompt."""
        if self.kind == "preference":
            return [self.groups[i][0] for i in examples] + [self.groups[i][1] for i in examples]
        if self.kind == "unpaired":
            return [self.groups[i][0] for i in examples]
        return [s for i in examples for s in self.groups[i]]

    def mismatched_rows(self, examples: Sequence[int]) -> list[int]:
        """KTO: the (prompt_i, completion_{i+1}) sequences of a micro-batch."""
        return [self.groups[i][1] for i in examples]

    def label_tensor(self, examples: Sequence[int]) -> Tensor:
        return torch.tensor([self.labels[i] for i in examples], dtype=torch.bool)

    def score_tensors(self, examples: Sequence[int]) -> tuple[Tensor, Tensor]:
        """RRHF: (scores (P, K_max), valid (P, K_max)) for prompts with different response counts."""
        width = max(len(self.scores[i]) for i in examples)
        scores = torch.zeros(len(examples), width)
        valid = torch.zeros(len(examples), width, dtype=torch.bool)
        for row, i in enumerate(examples):
            scores[row, : len(self.scores[i])] = torch.tensor(self.scores[i])
            valid[row, : len(self.scores[i])] = True
        return scores, valid


def _fit_mismatched(prompt: list[int], completion: list[int], limits: LengthLimits) -> list[int]:
    """Cut a borrowed completion so prompt + completion respects the limits (at least one token kept)."""
    room = len(completion)
    if limits.max_completion_tokens is not None:
        room = min(room, limits.max_completion_tokens)
    if limits.max_total_tokens is not None:
        room = min(room, limits.max_total_tokens - len(prompt))
    return completion[: max(room, 1)]


def encode_offline(
    records: Sequence[Any], kind: str, tokenizer: PreTrainedTokenizerBase, limits: LengthLimits
) -> OfflineData:
    """Tokenise ``records`` of format ``kind`` into an :class:`OfflineData` (see the module docstring)."""
    sequences: list[ScoredSequence] = []
    groups: list[list[int]] = []
    data = OfflineData(kind=kind, sequences=sequences, groups=groups)
    if kind == "preference":
        paired = encode_preference(records, tokenizer, limits)
        report = paired.report
        for ex in paired:
            groups.append([len(sequences), len(sequences) + 1])
            sequences += [(ex.prompt_ids, ex.chosen_ids), (ex.prompt_ids, ex.rejected_ids)]
    elif kind == "unpaired":
        unpaired = encode_unpaired(records, tokenizer, limits)
        report = unpaired.report
        if len(unpaired) < 2:
            raise DataError(
                f"unpaired data: {len(unpaired)} example(s); KTO needs at least 2 (its KL baseline scores "
                "each prompt with another example's completion)"
            )
        for i, single in enumerate(unpaired):
            other = unpaired[(i + 1) % len(unpaired)].completion_ids
            groups.append([len(sequences), len(sequences) + 1])
            sequences += [
                (single.prompt_ids, single.completion_ids),
                (single.prompt_ids, _fit_mismatched(single.prompt_ids, other, limits)),
            ]
            data.labels.append(bool(single.label))
    elif kind == "ranked":
        ranked = encode_ranked(records, tokenizer, limits)
        report = ranked.report
        for group in ranked:
            groups.append(list(range(len(sequences), len(sequences) + len(group.response_ids))))
            sequences += [(group.prompt_ids, r) for r in group.response_ids]
            data.scores.append(list(group.scores))
    else:
        raise DataError(f"offline preference data must be preference, unpaired or ranked, got {kind!r}")
    data.report = str(report)
    return data


def load_offline(
    source: str,
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    limits: LengthLimits,
    split: str = "train",
    limit: int | None = None,
) -> OfflineData:
    """Read ``source`` as ``kind`` records (malformed rows raise a DataError naming file, line, field)."""
    records = load_records(source, fmt=kind, split=split, limit=limit)
    return encode_offline(records, kind, tokenizer, limits)
