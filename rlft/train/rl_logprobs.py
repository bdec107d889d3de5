"""Log-probs (and entropies) of sampled responses, with the LM head applied only where a token carries loss.

One forward of the transformer body over prompt + response; the hidden states that predict response
tokens are gathered at the positions ``positions`` marks (never padding), and only those rows go through
the LM head, in chunks of ``chunk_size`` rows. With a small model and a large vocabulary the head is a
large share of the work, so skipping padded positions is a real saving, not a detail.

    log π(y_t | x, y_<t) = z_t[y_t]/τ − logsumexp(z_t/τ)      (the sampler's formula, float32)
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from rlft.algos import entropy_from_logits
from rlft.models.logprobs import apply_lm_head, hidden_states

from .rollout_batch import RolloutBatch

__all__ = ["autocast_context", "batch_logprobs"]


def autocast_context(enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def batch_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    positions: Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = False,
    bf16_autocast: bool = False,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor | None]:
    """(B, R) log-probs of ``batch.response_ids`` at ``positions`` (0 elsewhere), and the entropies of
    π(·|x, y_<t) at the same positions when ``entropy`` (with gradient only if ``entropy_grad``)."""
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.response_mask.to(batch.prompt_mask.dtype)], dim=1)
    width = batch.prompt_ids.shape[1]
    with autocast_context(bf16_autocast):
        hidden = hidden_states(model, input_ids, attention)
    keep = positions.to(torch.bool)
    rows = hidden[:, width - 1 : -1][keep]  # (N, d): the states that predict each kept response token
    targets = batch.response_ids[keep]
    logps, entropies = [], []
    # The head runs in float32 even under autocast: log-probs feed exp(logp − logp_old).
    with torch.autocast("cpu", enabled=False):
        for lo in range(0, rows.shape[0], chunk_size):
            logits = apply_lm_head(model, rows[lo : lo + chunk_size].float()).float()
            if temperature != 1.0:
                logits = logits / temperature
            picked = logits.gather(-1, targets[lo : lo + chunk_size, None]).squeeze(-1)
            logps.append(picked - torch.logsumexp(logits, dim=-1))
            if entropy:
                with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                    entropies.append(entropy_from_logits(logits))
    flat = torch.cat(logps) if logps else hidden.new_zeros(0)
    logp = torch.zeros(keep.shape, dtype=torch.float32).masked_scatter(keep, flat)
    ent = None
    if entropy:
        flat_ent = torch.cat(entropies) if entropies else hidden.new_zeros(0)
        ent = torch.zeros(keep.shape, dtype=torch.float32).masked_scatter(keep, flat_ent.float())
    return logp, ent
