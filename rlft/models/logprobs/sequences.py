"""Summed log-probabilities of completions: what offline preference losses (DPO family, KTO, RRHF) need
per sequence.

For a completion c after a prompt x:  Σ_t log π(c_t | x, c_<t)  and its token count |c|.

Only the hidden states of the positions that predict a completion token go through the LM head, in
chunks, and each chunk's logits are reduced to one log-prob per position (``z[c_t] − logsumexp z``) at
once: no (B, T, V) logits tensor, and none at all for prompt or padding positions.

Two entry points:

- :func:`sequence_logprob_sums` scores right-padded rows given as ``input_ids`` / ``attention_mask`` /
  ``loss_mask`` (1 on the completion tokens), one sequence per row;
- :func:`grouped_logprob_sums` scores groups of completions that share a prompt (a preference pair,
  an RRHF list). With the fused Llama forward each prompt runs once: the batch is the G prompts and
  the S completions as separate rows, every completion at positions |x|, |x|+1, … attending to its
  prompt's keys and values and causally to itself, its first token predicted from the prompt's last
  position — the numbers of separate prompt+completion rows with less work (16 of 130 tokens of a
  benchmark pair, a third of a ``preference`` task pair). Other models score one row per completion.

``bf16=True`` runs the transformer body with bfloat16 matmuls (CPU/GPU autocast for the model's own
forward); the head and the log-softmax stay in float32. The fused forward of
:mod:`rlft.models.fused.llama_forward` is used when the model qualifies (``forward="auto"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..device import model_device, to_device
from ..errors import ModelError
from ..fused.frozen import FrozenForward
from ..fused.llama_forward import (
    SharedPrompts,
    fused_hidden_rows,
    fused_hidden_states,
    linear,
    use_fused_forward,
)
from ..precision import bf16_autocast
from .head import head_logprobs

Group = tuple[Sequence[int], Sequence[Sequence[int]]]  # (prompt ids, [completion ids, ...])


def _fast_head(model: PreTrainedModel) -> Callable[[Tensor], Tensor]:
    weight = model.get_output_embeddings().weight  # a plain bias-free head (checked by the blocker)
    return lambda rows: linear(rows, weight)


def _check(input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> None:
    if input_ids.ndim != 2:
        raise ModelError(f"input_ids must be 2-D (batch, time), got shape {tuple(input_ids.shape)}")
    for name, t in (("attention_mask", attention_mask), ("loss_mask", loss_mask)):
        if t.shape != input_ids.shape:
            raise ModelError(
                f"{name} shape {tuple(t.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
    if input_ids.shape[1] < 2:
        raise ModelError(f"sequences must have at least 2 tokens to score, got length {input_ids.shape[1]}")
    if bool(loss_mask[:, 0].any()):
        raise ModelError("loss_mask marks the first token of a row, which no position predicts")


def sequence_logprob_sums(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor,
    *,
    bf16: bool = False,
    forward: str = "auto",
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    """(Σ log-probs of each row's labelled tokens (B,) float32, labelled-token counts (B,) long).

    Right-padded rows (``attention_mask`` 1 then 0) at positions 0, 1, 2, …; causal attention alone
    keeps every real token away from its row's padding. ``forward``: "auto" takes the fused Llama
    forward when :func:`~rlft.models.fused.llama_forward.fast_train_blocker` allows it, "hf" forces the model's
    own forward, "fast" demands the fused one. Differentiable (use ``torch.no_grad()`` for a reference).
    The inputs go to the model's device, and so do the results.
    """
    _check(input_ids, attention_mask, loss_mask)
    input_ids, attention_mask, loss_mask = to_device((input_ids, attention_mask, loss_mask), model_device(model))
    use_fast = use_fused_forward(model, forward)
    # Columns after the longest row are padding everywhere, and the last column predicts nothing.
    width = int(attention_mask.sum(-1).max())
    source_ids, source_mask = input_ids[:, : width - 1], attention_mask[:, : width - 1]
    target_mask = loss_mask[:, 1:width].bool()
    if use_fast:
        hidden = fused_hidden_states(model, source_ids, bf16=bf16)
    else:
        hidden = _hf_hidden(model, source_ids, source_mask, bf16)
    rows = hidden[target_mask]  # (N, d): the positions that predict a labelled token
    head = _fast_head(model) if use_fast else None
    logp, _ = head_logprobs(model, rows, input_ids[:, 1:width][target_mask], chunk_size=chunk_size, head=head)
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    sums = sums.index_add(0, target_mask.nonzero()[:, 0], logp)
    return sums, target_mask.sum(-1).long()


def _hf_hidden(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, bf16: bool) -> Tensor:
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(input_ids)
    with bf16_autocast(bf16, input_ids.device.type):
        out = model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        )
    hidden: Tensor = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden


# --- groups of completions sharing a prompt ---------------------------------------------------------------


@dataclass
class GroupedRows:
    """Groups laid out as flat rows for :func:`~rlft.models.fused.llama_forward.fused_hidden_rows`: ``layout``
    (prompts first, then completions); ``source`` (M,): the flat row whose hidden state predicts each
    completion token, ``target`` (M,) that token, ``sequence`` (M,) the index of its completion in
    group order; ``counts`` (S,) the completion lengths."""

    input_ids: Tensor
    position_ids: Tensor
    layout: SharedPrompts
    source: Tensor
    target: Tensor
    sequence: Tensor
    counts: Tensor


def layout_groups(groups: Sequence[Group], pad_id: int) -> GroupedRows:
    """Right-pad the G prompts to width P and the S completions to width C; completion s of group g has
    positions |x_g|, |x_g|+1, … and its token t is predicted by row (completion s, t−1), token 0 by the
    prompt's last real row."""
    prompts = [list(p) for p, _ in groups]
    completions = [list(c) for _, cs in groups for c in cs]
    owner = [g for g, (_, cs) in enumerate(groups) for _ in cs]
    for g, p in enumerate(prompts):
        if not p:
            raise ModelError(
                f"group {g}: empty prompt (the first completion token needs a position to predict it)"
            )
    for s, c in enumerate(completions):
        if not c:
            raise ModelError(f"group {owner[s]}: completion {s - owner.index(owner[s])} is empty")
    n_groups, n_seqs = len(prompts), len(completions)
    p_width, c_width = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.full((n_groups, p_width), pad_id, dtype=torch.long)
    completion_ids = torch.full((n_seqs, c_width), pad_id, dtype=torch.long)
    for g, p in enumerate(prompts):
        prompt_ids[g, : len(p)] = torch.as_tensor(p, dtype=torch.long)
    for s, c in enumerate(completions):
        completion_ids[s, : len(c)] = torch.as_tensor(c, dtype=torch.long)
    prompt_lengths = torch.tensor([len(p) for p in prompts])
    counts = torch.tensor([len(c) for c in completions])
    group = torch.tensor(owner, dtype=torch.long)
    start = prompt_lengths[group]  # (S,) each completion's first position
    cols = torch.arange(c_width)
    positions = torch.cat(
        [torch.arange(p_width).repeat(n_groups), (start[:, None] + cols[None, :]).reshape(-1)]
    )
    # token t of completion s: predicted from its own row t−1, or for t = 0 from the prompt's last token
    own = n_groups * p_width + torch.arange(n_seqs)[:, None] * c_width + cols[None, :] - 1
    source = torch.where(cols[None, :] == 0, (group * p_width + start - 1)[:, None], own)
    real = cols[None, :] < counts[:, None]
    return GroupedRows(
        input_ids=torch.cat([prompt_ids.reshape(-1), completion_ids.reshape(-1)]),
        position_ids=positions,
        layout=SharedPrompts(n_groups, p_width, n_seqs, c_width, group, prompt_lengths),
        source=source[real],
        target=completion_ids[real],
        sequence=torch.arange(n_seqs)[:, None].expand(-1, c_width)[real],
        counts=counts,
    )


def grouped_logprob_sums(
    model: PreTrainedModel,
    groups: Sequence[Group],
    pad_id: int,
    *,
    bf16: bool = False,
    forward: str = "auto",
    share_prompts: bool = True,
    chunk_size: int = 4096,
    frozen: FrozenForward | None = None,
) -> tuple[Tensor, Tensor]:
    """(Σ log π(c | prompt) (S,) float32, |c| (S,)) for every completion c of every group, in group
    order (group 0's completions, then group 1's, …). One forward pass over the whole batch.

    With the fused forward and ``share_prompts`` each prompt is computed once (:func:`layout_groups`);
    otherwise every completion is its own right-padded prompt+completion row. Differentiable, except
    with ``frozen`` (a reference model's fused body with its weights packed once, used for the shared-
    prompt layout).
    """
    if not groups:
        raise ModelError("grouped_logprob_sums: no groups to score")
    use_fast = use_fused_forward(model, forward)
    if not (use_fast and share_prompts):
        rows = [(list(p), list(c)) for p, cs in groups for c in cs]
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        loss = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, c) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.as_tensor(p + c, dtype=torch.long)
            attention[i, : len(p) + len(c)] = 1
            loss[i, len(p) : len(p) + len(c)] = 1
        return sequence_logprob_sums(
            model,
            ids,
            attention,
            loss,
            bf16=bf16,
            forward="fast" if use_fast else "hf",
            chunk_size=chunk_size,
        )
    grouped = layout_groups(groups, pad_id)
    if frozen is not None:
        hidden = frozen.hidden_rows(grouped.input_ids, grouped.position_ids, grouped.layout)
    else:
        hidden = fused_hidden_rows(model, grouped.input_ids, grouped.position_ids, grouped.layout, bf16=bf16)
    logp, _ = head_logprobs(
        model,
        hidden.index_select(0, grouped.source),
        grouped.target,
        chunk_size=chunk_size,
        head=_fast_head(model),
    )
    sums = torch.zeros(len(grouped.counts), dtype=torch.float32).index_add(0, grouped.sequence, logp)
    return sums, grouped.counts
