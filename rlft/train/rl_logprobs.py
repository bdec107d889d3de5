"""Log-probs (and entropies) of sampled responses, with the LM head applied only where a token carries loss.

The transformer body runs over prompt + response; the hidden states that predict response tokens are
gathered at the positions ``positions`` marks (never padding), and only those rows go through the LM head,
in chunks of ``chunk_size`` rows. With a small model and a large vocabulary the head is a large share of
the work, so skipping padded positions is a real saving, not a detail.

Shared prompts: the G completions of a group share one prompt, so by default the body runs each distinct
prompt once, keeps its keys/values, and runs the responses on top of a copy of that cache per row (the
copies are index_selects, so gradients from all G rows flow back into the one prompt pass). The result
is the same function; the work on prompt tokens drops G-fold — for RL on short answers (arithmetic: ~5
prompt tokens, ~3 answer tokens) about half of all the work of the reference and training passes.

    log π(y_t | x, y_<t) = z_t[y_t]/τ − logsumexp(z_t/τ)      (the sampler's formula, float32)
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from rlft.algos import entropy_from_logits
from rlft.models.logprobs import apply_lm_head, hidden_states, position_ids_from_mask

from .rollout_batch import RolloutBatch

__all__ = ["autocast_context", "batch_logprobs", "logprobs_from_states", "response_states"]


def autocast_context(enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def response_states(model: torch.nn.Module, batch: RolloutBatch, share_prompts: bool = True) -> Tensor:
    """(B, R, d) final hidden states that predict each response token (position t predicts token t)."""
    width = batch.prompt_ids.shape[1]
    attention = torch.cat([batch.prompt_mask, batch.response_mask.to(batch.prompt_mask.dtype)], dim=1)
    groups, inverse = torch.unique(batch.group_ids, return_inverse=True)
    if not share_prompts or groups.numel() == len(batch):
        input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
        return hidden_states(model, input_ids, attention)[:, width - 1 : -1]
    from transformers import DynamicCache

    # One row per distinct prompt (the first row of each group), through the body with a cache …
    first = torch.full((groups.numel(),), len(batch)).scatter_reduce(
        0, inverse, torch.arange(len(batch)), "amin"
    )
    body = model.get_decoder()
    cache = DynamicCache(config=model.config)
    prompt_mask = batch.prompt_mask[first]
    out = body(
        input_ids=batch.prompt_ids[first],
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        past_key_values=cache,
        use_cache=True,
    )
    last_prompt_state = out.last_hidden_state[:, -1]  # left padding: the last column is the last prompt token
    # … then every response on top of its prompt's keys/values.
    cache.reorder_cache(inverse)
    out = body(
        input_ids=batch.response_ids,
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention)[:, width:],
        past_key_values=cache,
        use_cache=True,
    )
    return torch.cat([last_prompt_state[inverse, None], out.last_hidden_state[:, :-1]], dim=1)


def batch_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    positions: Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = False,
    bf16_autocast: bool = False,
    chunk_size: int = 4096,
    share_prompts: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """(B, R) log-probs of ``batch.response_ids`` at ``positions`` (0 elsewhere), and the entropies of
    π(·|x, y_<t) at the same positions when ``entropy`` (with gradient only if ``entropy_grad``)."""
    with autocast_context(bf16_autocast):
        states = response_states(model, batch, share_prompts)
    return logprobs_from_states(
        model, states, batch, positions, temperature, entropy, entropy_grad, chunk_size
    )


def logprobs_from_states(
    model: torch.nn.Module,
    states: Tensor,
    batch: RolloutBatch,
    positions: Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = False,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor | None]:
    """:func:`batch_logprobs` from the (B, R, d) states of :func:`response_states` (so that a value head
    can read the same states: PPO's critic on a shared backbone)."""
    keep = positions.to(torch.bool)
    rows = states[keep]  # (N, d): the states that predict each kept response token
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
    flat = torch.cat(logps) if logps else states.new_zeros(0)
    logp = torch.zeros(keep.shape, dtype=torch.float32).masked_scatter(keep, flat)
    ent = None
    if entropy:
        flat_ent = torch.cat(entropies) if entropies else states.new_zeros(0)
        ent = torch.zeros(keep.shape, dtype=torch.float32).masked_scatter(keep, flat_ent.float())
    return logp, ent
