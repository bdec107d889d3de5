"""Batches of encoded examples as tensors: padded SFT batches, packed SFT rows, prompts and preference pairs.

Labels stay aligned with ``input_ids`` (HF convention: the model shifts them, so position t's logits are
scored against ``labels[t + 1]``).

Packing puts several examples in one row of ``max_len`` tokens. Two things keep examples apart:
``position_ids`` restart at 0 for each example (and for the padding tail), and the label of each
example's first token is IGNORE_INDEX, so the last token of one example is never trained to predict the
first token of the next.

A Hugging Face model must be given the packed row as ``input_ids`` + ``position_ids`` with NO attention
mask and ``use_cache=False`` (what :func:`rlft.train.sft.trainer.token_loss_sum` does): transformers 5 then finds
the example boundaries where the positions restart (``masking_utils.find_packed_sequence_indices``) and
builds each layer's mask itself — causal or sliding-window, in the form its attention implementation
wants — exactly as for the examples unpacked. The ``(rows, 1, L, L)`` boolean ``attention_mask`` and
``cu_seqlens`` describe the same boundaries for code that does its own attention (varlen kernels,
tests); handed to a model they are wrong in two ways: a 4-D mask is used as given, so sliding-window
layers (Gemma 2/3, Mistral) lose their window, and eager attention *adds* it to the scores, so a boolean
mask (0/1) masks nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import DataError
from .tokenize import IGNORE_INDEX, Example, PreferenceExample, PromptExample


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_value: int, side: str = "right", length: int | None = None
) -> torch.Tensor:
    """Stack int sequences into a (batch, length) long tensor, padding on ``side`` ("right" or "left")."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    width = max((len(s) for s in seqs), default=0) if length is None else length
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) > width:
            raise ValueError(f"sequence {i} has {len(s)} tokens, longer than the padded length {width}")
        if s:
            row = torch.as_tensor(list(s), dtype=torch.long)
            if side == "right":
                out[i, : len(s)] = row
            else:
                out[i, width - len(s) :] = row
    return out


def _check_fits(examples: Sequence[Example], max_len: int) -> None:
    for ex in examples:
        if len(ex.input_ids) > max_len:
            raise DataError(
                f"{ex.where or 'example'}: {len(ex.input_ids)} tokens, longer than max_len={max_len} "
                f"(set LengthLimits.max_total_tokens when encoding)"
            )


def collate_sft(
    examples: Sequence[Example], pad_id: int, pack: bool = False, max_len: int | None = None
) -> dict[str, Any]:
    """A training batch of SFT examples.

    Unpacked: right-padded ``input_ids``, ``attention_mask`` (1 = token) and ``labels`` (IGNORE_INDEX on
    padding), padded to the longest example or to ``max_len`` when given.

    Packed (``max_len`` required): examples are laid, in order, into rows of ``max_len`` tokens (a new row
    starts when the next example does not fit). Returns ``input_ids``, ``labels``, ``position_ids`` (what
    a Hugging Face model needs, without any attention mask: see the module docstring),
    ``attention_mask`` (the block-diagonal causal 4D mask of ``packed_attention_mask``, for code doing its
    own attention — not for the model), ``seq_lens`` (the example lengths in each row, a list of lists) and
    ``cu_seqlens`` / ``max_seqlen`` for varlen kernels: int32 cumulative boundaries over the flattened
    (rows × max_len) batch, where each row's padding tail counts as one more sequence so that
    ``cu_seqlens[-1] == rows * max_len``.
    """
    if not examples:
        raise DataError("collate_sft: no examples to collate")
    if not pack:
        if max_len is not None:
            _check_fits(examples, max_len)
        input_ids = pad_sequences([e.input_ids for e in examples], pad_id, length=max_len)
        labels = pad_sequences([e.labels for e in examples], IGNORE_INDEX, length=max_len)
        lengths = torch.tensor([len(e.input_ids) for e in examples])
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    if max_len is None:
        raise DataError("collate_sft: pack=True needs max_len (the length of a packed row)")
    _check_fits(examples, max_len)
    rows: list[list[Example]] = [[]]
    used = 0
    for ex in examples:
        if used + len(ex.input_ids) > max_len:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += len(ex.input_ids)

    input_ids = torch.full((len(rows), max_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), max_len), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), max_len), dtype=torch.long)
    seq_lens: list[list[int]] = []
    boundaries = [0]
    for r, row in enumerate(rows):
        pos = 0
        for ex in row:
            n = len(ex.input_ids)
            input_ids[r, pos : pos + n] = torch.as_tensor(ex.input_ids)
            ex_labels = torch.as_tensor(ex.labels)
            ex_labels[0] = IGNORE_INDEX  # never predicted from the previous example's last token
            labels[r, pos : pos + n] = ex_labels
            position_ids[r, pos : pos + n] = torch.arange(n)
            pos += n
            boundaries.append(r * max_len + pos)
        if pos < max_len:  # the padding tail is its own short "sequence", isolated like the others
            position_ids[r, pos:] = torch.arange(max_len - pos)
            boundaries.append((r + 1) * max_len)
        seq_lens.append([len(ex.input_ids) for ex in row])
    cu_seqlens = torch.tensor(boundaries, dtype=torch.int32)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": packed_attention_mask(seq_lens, max_len),
        "seq_lens": seq_lens,
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int((cu_seqlens[1:] - cu_seqlens[:-1]).max()),
    }


def packed_attention_mask(
    seq_lens: Sequence[Sequence[int]], max_len: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Block-diagonal causal mask, shape (rows, 1, max_len, max_len): query i may attend to key j iff both
    are in the same example and j ≤ i. Padding positions attend only to themselves (a fully masked row
    would make softmax return NaN).

    Boolean (True = attend) by default, which SDPA accepts; pass a float ``dtype`` for an additive mask
    (0 = attend, dtype's minimum = blocked), which eager attention implementations add to the scores.
    Either way it knows no sliding window, so a model whose layers have one must not be given it (see the
    module docstring for what to give a Hugging Face model instead).
    """
    segment = torch.empty((len(seq_lens), max_len), dtype=torch.long)
    for r, lens in enumerate(seq_lens):
        if sum(lens) > max_len:
            raise DataError(
                f"packed_attention_mask: row {r} holds {sum(lens)} tokens, more than max_len={max_len}"
            )
        segment[r] = -1 - torch.arange(max_len)  # padding: a distinct segment per position
        pos = 0
        for s, n in enumerate(lens):
            segment[r, pos : pos + n] = s
            pos += n
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.ones(max_len, max_len, dtype=torch.bool).tril()
    mask = (same & causal)[:, None, :, :]
    if dtype is None:
        return mask
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


def collate_prompts(examples: Sequence[PromptExample], pad_id: int) -> dict[str, torch.Tensor]:
    """LEFT-padded prompt ids and attention mask, ready for batched generation."""
    if not examples:
        raise DataError("collate_prompts: no examples to collate")
    ids = [e.prompt_ids for e in examples]
    input_ids = pad_sequences(ids, pad_id, side="left")
    width = input_ids.shape[1]
    lengths = torch.tensor([len(s) for s in ids])
    attention_mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate_preference(examples: Sequence[PreferenceExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+chosen and prompt+rejected sequences with completion-only labels.

    Returns ``chosen_input_ids``, ``chosen_attention_mask``, ``chosen_labels`` and the same for
    ``rejected_``, plus ``margin`` (NaN where a pair has none).
    """
    if not examples:
        raise DataError("collate_preference: no examples to collate")
    out: dict[str, torch.Tensor] = {}
    for side in ("chosen", "rejected"):
        seqs, labels = [], []
        for e in examples:
            completion = getattr(e, f"{side}_ids")
            seqs.append(e.prompt_ids + completion)
            labels.append([IGNORE_INDEX] * len(e.prompt_ids) + completion)
        ids = pad_sequences(seqs, pad_id)
        lengths = torch.tensor([len(s) for s in seqs])
        out[f"{side}_input_ids"] = ids
        out[f"{side}_attention_mask"] = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        out[f"{side}_labels"] = pad_sequences(labels, IGNORE_INDEX)
    out["margin"] = torch.tensor([float("nan") if e.margin is None else e.margin for e in examples])
    return out
