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
import functools
from collections.abc import Callable

import torch
from torch import Tensor

from rlft.algos import entropy_from_logits
from rlft.models.fused.frozen import FrozenForward
from rlft.models.fused.llama_forward import SharedPrompts, fused_hidden_rows, use_fused_forward
from rlft.models.kv_cache import cache_argument
from rlft.models.logprobs import apply_lm_head, hidden_states, position_ids_from_mask
from rlft.train.online.rollout_batch import RolloutBatch

__all__ = ["autocast_context", "batch_logprobs", "logprobs_from_states", "response_states"]


def autocast_context(enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def response_states(
    model: torch.nn.Module,
    batch: RolloutBatch,
    share_prompts: bool = True,
    forward: str = "auto",
    frozen: FrozenForward | None = None,
) -> Tensor:
    """(B, R, d) final hidden states that predict each response token (position t predicts token t).

    ``forward``: "auto" runs the fused Llama forward (:mod:`rlft.models.fused.llama_forward`) when the model
    qualifies, "fast" demands it, "hf" uses the model's own body. Under CPU bfloat16 autocast the fused
    forward runs its bfloat16 variant. ``frozen``: the same fused body with weights packed once, for a
    model that never changes (the reference; no gradient)."""
    if int(batch.prompt_mask.sum(-1).min()) > 0:
        if frozen is not None:
            return _fused_states(frozen.hidden_rows, batch, share_prompts)
        if use_fused_forward(model, forward):
            bf16 = torch.is_autocast_enabled("cpu")
            with torch.autocast("cpu", enabled=False):
                return _fused_states(
                    functools.partial(fused_hidden_rows, model, bf16=bf16), batch, share_prompts
                )
    return _hf_states(model, batch, share_prompts)


def _first_of_groups(batch: RolloutBatch, share_prompts: bool) -> tuple[Tensor, Tensor]:
    """(index of the first row of each distinct prompt (G,), each row's prompt (B,) in 0..G−1)."""
    if not share_prompts:
        rows = torch.arange(len(batch))
        return rows, rows
    groups, inverse = torch.unique(batch.group_ids, return_inverse=True)
    first = torch.full((groups.numel(),), len(batch)).scatter_reduce(
        0, inverse, torch.arange(len(batch)), "amin"
    )
    return first, inverse


def _fused_states(body: Callable[..., Tensor], batch: RolloutBatch, share_prompts: bool) -> Tensor:
    """The fused forward ``body(input_ids, position_ids, layout)`` over G right-padded distinct prompts
    followed by the B responses, each response at positions |x|, |x|+1, … attending to its prompt's keys
    (``SharedPrompts``); with ``share_prompts`` off every row has its own copy of its prompt (G = B),
    which is the same function."""
    first, owner = _first_of_groups(batch, share_prompts)
    prompt_ids, lengths = batch.prompt_ids[first], batch.prompt_mask[first].sum(-1)
    n_groups, width = prompt_ids.shape
    p_width = int(lengths.max())
    cols = torch.arange(p_width)
    # Left-padded → right-padded: a prompt of length L sits in the last L columns.
    source = ((width - lengths)[:, None] + cols[None, :]).clamp(max=width - 1)
    prompts = prompt_ids.gather(1, source)  # columns ≥ L repeat the last token: never attended to
    n_rows, c_width = batch.response_ids.shape
    start = lengths[owner]
    positions = torch.cat(
        [cols.repeat(n_groups), (start[:, None] + torch.arange(c_width)[None, :]).reshape(-1)]
    )
    layout = SharedPrompts(n_groups, p_width, n_rows, c_width, owner, lengths)
    input_ids = torch.cat([prompts.reshape(-1), batch.response_ids.reshape(-1)])
    hidden = body(input_ids, positions, layout)
    prompt_part = hidden[: n_groups * p_width].view(n_groups, p_width, -1)
    last_prompt_state = prompt_part[torch.arange(n_groups), lengths - 1]  # predicts response token 0
    responses = hidden[n_groups * p_width :].view(n_rows, c_width, -1)
    return torch.cat([last_prompt_state[owner, None], responses[:, :-1]], dim=1)


def _hf_states(model: torch.nn.Module, batch: RolloutBatch, share_prompts: bool) -> Tensor:
    """:func:`response_states` through the model's own body; shared prompts run once with a cache that
    every response continues."""
    width = batch.prompt_ids.shape[1]
    attention = torch.cat([batch.prompt_mask, batch.response_mask.to(batch.prompt_mask.dtype)], dim=1)
    first, inverse = _first_of_groups(batch, share_prompts)
    if first.numel() == len(batch):
        input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
        return hidden_states(model, input_ids, attention)[:, width - 1 : -1]
    from transformers import DynamicCache

    # One row per distinct prompt (the first row of each group), through the body with a cache …
    body = model.get_decoder()
    cache = DynamicCache(config=model.config)
    prompt_mask = batch.prompt_mask[first]
    out = body(
        input_ids=batch.prompt_ids[first],
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        **cache_argument(body, cache),
        use_cache=True,
    )
    last_prompt_state = out.last_hidden_state[:, -1]  # left padding: the last column is the last prompt token
    # … then every response on top of its prompt's keys/values.
    cache.reorder_cache(inverse)
    out = body(
        input_ids=batch.response_ids,
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention)[:, width:],
        **cache_argument(body, cache),
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
    forward: str = "auto",
    frozen: FrozenForward | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(B, R) log-probs of ``batch.response_ids`` at ``positions`` (0 elsewhere), and the entropies of
    π(·|x, y_<t) at the same positions when ``entropy`` (with gradient only if ``entropy_grad``)."""
    with autocast_context(bf16_autocast):
        states = response_states(model, batch, share_prompts, forward, frozen)
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
