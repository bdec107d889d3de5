"""Log-probs (and entropies) of sampled responses after their prompts, the LM head applied only where a
token carries loss.

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

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..device import model_device, to_device
from ..fused.frozen import FrozenForward
from ..fused.llama_forward import SharedPrompts, fused_hidden_rows, use_fused_forward
from ..kv_cache import cache_argument
from ..positions import position_ids_from_mask
from ..precision import bf16_autocast
from .head import head_logprobs
from .tokens import hidden_states

__all__ = ["Responses", "logprobs_from_states", "response_states", "rollout_logprobs"]


def _causal_lm(model: nn.Module) -> PreTrainedModel:
    """``model`` as the Hugging Face model it is or wraps: the trainers pass their policy as a plain module
    (a PEFT model among them), which forwards ``config``, ``get_decoder`` and the output embeddings to the
    model it wraps."""
    return cast(PreTrainedModel, model)


@dataclass(frozen=True)
class Responses:
    """The tensors that describe sampled responses after their prompts (a rollout batch's model inputs).

    ``prompt_ids``/``prompt_mask`` (B, P) left-padded; ``response_ids``/``response_mask`` (B, R)
    right-padded; ``group_ids`` (B,): rows with the same id share one prompt (None: every row its own).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    group_ids: Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def to(self, device: torch.device) -> Responses:
        """The same responses on ``device`` (the model's, before a pass)."""
        return Responses(*to_device(dataclasses.astuple(self), device))


def response_states(
    model: nn.Module,
    responses: Responses,
    *,
    share_prompts: bool = True,
    forward: str = "auto",
    frozen: FrozenForward | None = None,
    bf16: bool = False,
) -> Tensor:
    """(B, R, d) final hidden states that predict each response token (position t predicts token t).

    ``forward``: "auto" runs the fused Llama forward (:mod:`rlft.models.fused.llama_forward`) when the
    model qualifies, "fast" demands it, "hf" uses the model's own body. ``bf16`` runs the body with
    bfloat16 matmuls (the fused forward's bfloat16 variant, or autocast around the Hugging Face body).
    ``frozen``: the same fused body with weights packed once, for a model that never changes (the
    reference; no gradient). The responses go to the model's device, and so do the states."""
    lm = _causal_lm(model)
    responses = responses.to(model_device(lm))
    if int(responses.prompt_mask.sum(-1).min()) > 0:
        if frozen is not None:
            return _fused_states(frozen.hidden_rows, responses, share_prompts)
        if use_fused_forward(lm, forward):
            body = functools.partial(fused_hidden_rows, lm, bf16=bf16)
            with torch.autocast(responses.response_ids.device.type, enabled=False):  # bf16 is the body's own
                return _fused_states(body, responses, share_prompts)
    with bf16_autocast(bf16, responses.response_ids.device.type):
        return _hf_states(lm, responses, share_prompts)


def _first_of_groups(responses: Responses, share_prompts: bool) -> tuple[Tensor, Tensor]:
    """(index of the first row of each distinct prompt (G,), each row's prompt (B,) in 0..G−1)."""
    device = responses.response_ids.device
    if not share_prompts or responses.group_ids is None:
        rows = torch.arange(len(responses), device=device)
        return rows, rows
    groups, inverse = torch.unique(responses.group_ids, return_inverse=True)
    first = torch.full((groups.numel(),), len(responses), device=device).scatter_reduce(
        0, inverse, torch.arange(len(responses), device=device), "amin"
    )
    return first, inverse


def _fused_states(body: Callable[..., Tensor], batch: Responses, share_prompts: bool) -> Tensor:
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


def _hf_states(model: PreTrainedModel, batch: Responses, share_prompts: bool) -> Tensor:
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
    # transformers annotates index tensors as torch.LongTensor, a legacy class no tensor is typed as
    cache.reorder_cache(inverse)  # type: ignore[arg-type]
    out = body(
        input_ids=batch.response_ids,
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention)[:, width:],
        **cache_argument(body, cache),
        use_cache=True,
    )
    return torch.cat([last_prompt_state[inverse, None], out.last_hidden_state[:, :-1]], dim=1)


def rollout_logprobs(
    model: nn.Module,
    responses: Responses,
    positions: Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = False,
    bf16: bool = False,
    chunk_size: int = 4096,
    share_prompts: bool = True,
    forward: str = "auto",
    frozen: FrozenForward | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(B, R) log-probs of ``responses.response_ids`` at ``positions`` (0 elsewhere), and the entropies of
    π(·|x, y_<t) at the same positions when ``entropy`` (with gradient only if ``entropy_grad``); on the
    model's device."""
    states = response_states(
        model, responses, share_prompts=share_prompts, forward=forward, frozen=frozen, bf16=bf16
    )
    return logprobs_from_states(
        model,
        states,
        responses.response_ids,
        positions,
        temperature=temperature,
        entropy=entropy,
        entropy_grad=entropy_grad,
        chunk_size=chunk_size,
    )


def logprobs_from_states(
    model: nn.Module,
    states: Tensor,
    response_ids: Tensor,
    positions: Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = False,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor | None]:
    """:func:`rollout_logprobs` from the (B, R, d) states of :func:`response_states` (so that a value head
    can read the same states: PPO's critic on a shared backbone)."""
    keep = positions.to(states.device, torch.bool)
    response_ids = response_ids.to(states.device)
    flat, flat_entropy = head_logprobs(
        _causal_lm(model),
        states[keep],  # (N, d): the states that predict each kept response token
        response_ids[keep],
        temperature=temperature,
        chunk_size=chunk_size,
        entropy=entropy,
        entropy_grad=entropy_grad,
    )
    logp = keep.new_zeros(keep.shape, dtype=torch.float32).masked_scatter(keep, flat)
    if flat_entropy is None:
        return logp, None
    return logp, keep.new_zeros(keep.shape, dtype=torch.float32).masked_scatter(keep, flat_entropy)
