"""The rollout batch: the one plain dataclass of tensors that travels between the stages of the online loop.

    sample   fills  prompt_ids, prompt_mask, response_ids, response_mask, finished, group_ids,
                    prompt_index, sampler_logp
    score    fills  scores (and per-function rewards, logged, not carried), baseline_scores (ReMax)
    ref      fills  ref_logp (only when a KL term is used), values (only with a critic)
    estimate fills  token_rewards (KL-in-reward / per-token shaping), advantages, returns
    optimise reads  loss_mask, advantages, old_logp (or None: the current policy, detached), ref_logp

Rows are completions; row i belongs to prompt group ``group_ids[i]`` (unique within the batch) and came
from dataset prompt ``prompt_index[i]`` (stable across steps, e.g. the key of DCPO's per-prompt state).
Token tensors are (B, R) over the response, right-padded; prompts are (B, P), left-padded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlft.models.device import to_device
from rlft.models.logprobs import Responses

__all__ = ["RolloutBatch", "by_micro_batch"]

# The stage that fills each field that starts as None (named when a stage reads it before that one ran).
FILLED_BY = {
    "scores": "score",
    "baseline_scores": "score (ReMax's greedy baseline)",
    "loss_mask": "score",
    "ref_logp": "ref (a KL term)",
    "values": "ref (a critic)",
    "advantages": "estimate",
    "returns": "estimate",
}


@dataclass
class RolloutBatch:
    prompt_ids: Tensor  # (B, P) left-padded
    prompt_mask: Tensor  # (B, P)
    response_ids: Tensor  # (B, R) right-padded
    response_mask: Tensor  # (B, R) 1 on response tokens up to and including EOS
    finished: Tensor  # (B,) bool: ended by EOS / stop string (False: cut at max_new_tokens)
    group_ids: Tensor  # (B,) prompt group within this batch
    prompt_index: Tensor  # (B,) index of the prompt in the training data
    sampler_logp: Tensor  # (B, R) log π_rollout(token) reported by the sampler, at the sampling temperature
    scores: Tensor | None = None  # (B,) total reward Σ_f w_f r_f
    baseline_scores: Tensor | None = None  # (B,) reward of the greedy decode of the same prompt (ReMax)
    loss_mask: Tensor | None = None  # (B, R) tokens that carry loss (response_mask, minus masked rows)
    old_logp: Tensor | None = None  # (B, R) log π_old; None: the policy has not moved, use current.detach()
    ref_logp: Tensor | None = None  # (B, R) log π_ref
    values: Tensor | None = None  # (B, R) critic values V(s_t)
    token_rewards: Tensor | None = None  # (B, R) per-token rewards (KL shaping + score on the last token)
    advantages: Tensor | None = None  # (B, R)
    returns: Tensor | None = None  # (B, R)

    def filled(self, name: str) -> Tensor:
        """The field ``name`` that a stage fills (:data:`FILLED_BY`); a RuntimeError naming that stage
        when it has not run."""
        value: Tensor | None = getattr(self, name)
        if value is None:
            raise RuntimeError(f"RolloutBatch.{name} is not set: the {FILLED_BY[name]} stage has not run")
        return value

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1)

    @property
    def responses(self) -> Responses:
        """The model inputs of these rows, for :mod:`rlft.models.logprobs`."""
        return Responses(
            self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask, self.group_ids
        )

    def select(self, rows: Tensor | list[int]) -> RolloutBatch:
        """The rows ``rows`` (every tensor field indexed along dim 0)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return RolloutBatch._of(
            {k: None if v is None else v.index_select(0, index) for k, v in self._fields()}
        )

    def to(self, device: torch.device) -> RolloutBatch:
        """The same rows with every tensor on ``device`` (a micro-batch going to the model's device)."""
        return RolloutBatch._of({k: None if v is None else to_device(v, device) for k, v in self._fields()})

    def trimmed(self) -> RolloutBatch:
        """The same rows without all-padding columns (prompt columns on the left, response on the right).

        A micro-batch of short rows then costs what its own longest row costs, not the batch's.
        """
        p_keep = int(self.prompt_mask.sum(-1).max()) if len(self) else 0
        r_keep = max(int(self.response_mask.sum(-1).max()) if len(self) else 0, 1)
        p_drop = self.prompt_ids.shape[1] - max(p_keep, 1)
        out: dict[str, Tensor | None] = {}
        for name, value in self._fields():
            if value is not None and name in ("prompt_ids", "prompt_mask"):
                value = value[:, p_drop:]
            elif value is not None and value.ndim == 2:
                value = value[:, :r_keep]
            out[name] = value
        return RolloutBatch._of(out)

    def _fields(self) -> list[tuple[str, Tensor | None]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]

    @staticmethod
    def _of(fields: dict[str, Tensor | None]) -> RolloutBatch:
        """A batch of every field by name (the always-set ones are set whenever the source batch's were)."""
        kwargs: dict[str, Any] = fields
        return RolloutBatch(**kwargs)

    @staticmethod
    def concat(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
        """Stack batches row-wise: prompts re-padded on the left, responses on the right; group ids are
        offset so groups of different batches stay distinct."""
        if len(batches) == 1:
            return batches[0]
        p_width = max(b.prompt_ids.shape[1] for b in batches)
        r_width = max(b.response_ids.shape[1] for b in batches)
        out: dict[str, Tensor | None] = {}
        offset, group_parts = 0, []
        for b in batches:
            group_parts.append(b.group_ids + offset)
            offset += int(b.group_ids.max()) + 1 if len(b) else 0
        for f in dataclasses.fields(RolloutBatch):
            parts = [getattr(b, f.name) for b in batches]
            if f.name == "group_ids":
                out[f.name] = torch.cat(group_parts)
            elif any(p is None for p in parts):
                out[f.name] = None
            elif f.name in ("prompt_ids", "prompt_mask"):
                fill = pad_id if f.name == "prompt_ids" else 0
                out[f.name] = torch.cat([_pad_left(p, p_width, fill) for p in parts])
            elif parts[0].ndim == 2:
                fill = pad_id if f.name == "response_ids" else 0
                out[f.name] = torch.cat([_pad_right(p, r_width, fill) for p in parts])
            else:
                out[f.name] = torch.cat(parts)
        return RolloutBatch._of(out)


@torch.no_grad()
def by_micro_batch(batch: RolloutBatch, size: int | None, fn: Callable[[RolloutBatch], Tensor]) -> Tensor:
    """(B, R) float32 made of ``fn(micro_batch)`` over consecutive micro-batches of ``size`` rows (all rows
    when None), each with its padding columns trimmed, without gradient: the rollout-wide passes (π_old,
    π_ref, V_old) that must fit in the memory one training micro-batch takes. The result stays with the
    rollout, on the CPU, wherever the model computes."""
    out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
    if len(batch) == 0:  # (a rank may keep no rows of a dynamically sampled step)
        return out
    for rows in torch.arange(len(batch)).split(size or len(batch)):
        part = fn(batch.select(rows).trimmed())
        out[rows, : part.shape[1]] = part.to(out.device)
    return out


def _pad_left(x: Tensor, width: int, fill: float) -> Tensor:
    if x.shape[1] == width:
        return x
    return torch.cat([x.new_full((x.shape[0], width - x.shape[1]), fill), x], dim=1)


def _pad_right(x: Tensor, width: int, fill: float) -> Tensor:
    if x.shape[1] == width:
        return x
    return torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), fill)], dim=1)
