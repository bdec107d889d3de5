"""Per-token log-probabilities of given sequences, in one forward pass, with the LM head applied in chunks.

For a sequence x_0 … x_{T−1} a causal LM gives, at every position t, logits z_t over the vocabulary for
the *next* token. The log-probability of the sequence's own next token at temperature τ is

    log π(x_{t+1} | x_{≤t}) = z_t[x_{t+1}]/τ − logsumexp(z_t/τ),

which is what the sampler reports for the tokens it draws and what PPO-style losses re-evaluate.
The transformer body runs once over the whole sequence (the model's own Hugging Face body: this is the
plain reference path the fused and shared-prompt paths are tested against) and the head runs in chunks
(:func:`~rlft.models.logprobs.head.head_logprobs`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..device import model_device, to_device
from ..errors import ModelError
from ..positions import position_ids_from_mask
from .head import head_logprobs


def _check_inputs(input_ids: Tensor, attention_mask: Tensor, temperature: float, chunk_size: int) -> None:
    if input_ids.ndim != 2:
        raise ModelError(f"input_ids must be 2-D (batch, time), got shape {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ModelError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
            f"{tuple(input_ids.shape)} (expected the same shape)"
        )
    if input_ids.shape[1] < 2:
        raise ModelError(f"sequences must have at least 2 tokens to score, got length {input_ids.shape[1]}")
    if not temperature > 0:
        raise ModelError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ModelError(f"chunk_size must be >= 1, got {chunk_size}")


def hidden_states(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final hidden states (B, T, d) of the transformer body, with left-padding-safe position ids."""
    body = model.get_decoder()
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden: Tensor = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden


def token_logprobs(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    logits_to_keep_from: int | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    return_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of each sequence's own next tokens: ``out[:, j] = log π(x[s+j+1] | x[≤ s+j]) at τ``.

    Alignment: with ``s = logits_to_keep_from or 0`` the result has shape (B, T−1−s) and column j
    scores token ``input_ids[:, s+j+1]`` from the logits at position ``s+j``. With the default s = 0 it
    is (B, T−1) and ``out[:, t]`` is the log-prob of ``input_ids[:, t+1]``. For prompt ids of width P
    followed by a response of width R, ``logits_to_keep_from=P−1`` gives exactly the (B, R) response
    log-probs (see :func:`response_logprobs`). Values at padded target positions are meaningless;
    mask them with the attention mask.

    The body runs once over the whole sequence; the head then runs on ``chunk_size`` rows (of the
    flattened B·(T−1−s) kept positions) at a time, so at most chunk_size × V logits exist at once (in
    inference; under autograd each chunk's logits are kept for the backward pass as usual). The
    log-prob is z[x]/τ − logsumexp(z/τ) in float32, the same formula the sampler uses.

    ``return_entropy=True`` also returns the entropy of π(·|x_{≤t}) at τ at the same positions
    (``rlft.algos.entropy_from_logits``), as a second (B, T−1−s) tensor. The inputs go to the model's
    device, and so do the results.
    """
    _check_inputs(input_ids, attention_mask, temperature, chunk_size)
    input_ids, attention_mask = to_device((input_ids, attention_mask), model_device(model))
    start = 0 if logits_to_keep_from is None else int(logits_to_keep_from)
    if not 0 <= start <= input_ids.shape[1] - 2:
        raise ModelError(
            f"logits_to_keep_from={logits_to_keep_from} is out of range (expected 0..{input_ids.shape[1] - 2})"
        )
    hidden = hidden_states(model, input_ids, attention_mask)[:, start:-1]  # positions s .. T−2
    targets = input_ids[:, start + 1 :]
    batch, width = targets.shape
    logp, entropy = head_logprobs(
        model,
        hidden.reshape(batch * width, hidden.shape[-1]),
        targets.reshape(-1),
        temperature=temperature,
        chunk_size=chunk_size,
        entropy=return_entropy,
    )
    if entropy is not None:
        return logp.view(batch, width), entropy.view(batch, width)
    return logp.view(batch, width)


def response_logprobs(
    model: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    return_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """(B, R) log-probs of right-padded ``response_ids`` after left-padded ``prompt_ids`` (a Rollout's layout).

    Same numbers as :func:`token_logprobs` on the concatenation with ``logits_to_keep_from=P−1``;
    positions where ``response_mask`` is 0 are set to 0.
    """
    prompt_ids, prompt_mask, response_ids, response_mask = to_device(
        (prompt_ids, prompt_mask, response_ids, response_mask), model_device(model)
    )
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    out = token_logprobs(
        model,
        input_ids,
        attention_mask,
        logits_to_keep_from=prompt_ids.shape[1] - 1,
        temperature=temperature,
        chunk_size=chunk_size,
        return_entropy=return_entropy,
    )
    keep = response_mask.bool()
    if isinstance(out, tuple):  # return_entropy
        logp, ent = out
        return logp.masked_fill(~keep, 0.0), ent.masked_fill(~keep, 0.0)
    return out.masked_fill(~keep, 0.0)
