"""Scalar-head models: reward models (one score per sequence) and value models (one value per token).

A scalar-head model is a Hugging Face ``…ForSequenceClassification`` with ``num_labels=1``: the causal-LM
body plus a bias-free linear head ``score: d → 1`` applied to the final hidden states. So a reward model
saved here loads with ``AutoModelForSequenceClassification.from_pretrained(dir)``, and an existing HF
reward model (e.g. one trained with TRL's RewardTrainer) loads here the same way.

    r(x, y)  = score(h_T)      T: the rightmost attended token whose id is not ``config.pad_token_id``
    V(s_t)   = score(h_t)      every position (the PPO critic, initialised from the reward model as in
                               InstructGPT, arXiv 2203.02155)

T is Hugging Face's own pooling rule (``GenericForSequenceClassification.forward`` in
``transformers/modeling_layers.py``, and ``GPT2ForSequenceClassification.forward``: "the rightmost token that
is not equal to pad_token_id"), so a saved reward model scores the same in plain ``transformers``. Where the
pad token is the EOS (Phi-3, Qwen2, and every tokenizer without a pad token, which rlft pads with EOS) the
EOS that ends a response cannot be told from padding by that rule: T is then the token before it, in
training, in scoring and in ``transformers`` alike. ``config.pad_token_id`` is set from the tokenizer when
the model is built (:func:`reward_model_from_causal_lm`), so training already pools as the saved model will.

Positions come from the attention mask (``cumsum − 1``), so a left-padded row scores exactly like the
same row right-padded or alone (plain ``transformers`` numbers positions 0..T−1 whatever the mask: give it
the same ``position_ids`` for left-padded batches, which GPT-2's learned positions need).

Normalisation statistics (the mean and std of the scores on a reference set, so an RL reward can be
``(r − mean)/std``) travel inside ``config.json`` as ``rlft_reward_norm``: the checkpoint stays one atomic
directory and ``from_pretrained`` keeps the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .device import model_device, to_device
from .errors import ModelError
from .hf import _check_source, load_causal_lm, load_error, load_tokenizer, parse_dtype, save_pretrained_atomic
from .positions import position_ids_from_mask

__all__ = [
    "NORM_KEY",
    "load_reward_model",
    "pad_token_id_of",
    "pooled_positions",
    "reward_model_from_causal_lm",
    "reward_norm",
    "save_reward_model",
    "sequence_scores",
    "set_pad_token_id",
    "set_reward_norm",
    "token_values",
]

NORM_KEY = "rlft_reward_norm"


def _check_norm(norm: Any) -> dict[str, float] | None:  # Any: read from a config.json
    if norm is None:
        return None
    try:
        mean, std = float(norm["mean"]), float(norm["std"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"reward normalisation must be {{'mean': x, 'std': y}}, got {norm!r}") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ModelError(
            f"reward normalisation needs a finite mean and a std > 0, got mean={mean}, std={std}"
        )
    return {"mean": mean, "std": std}


def reward_norm(model: PreTrainedModel) -> dict[str, float] | None:
    """The ``{"mean", "std"}`` saved with a reward model, or None."""
    return _check_norm(getattr(model.config, NORM_KEY, None))


def set_reward_norm(model: PreTrainedModel, norm: dict[str, float] | None) -> None:
    setattr(model.config, NORM_KEY, _check_norm(norm))


def _head(model: PreTrainedModel) -> torch.nn.Linear | None:
    head = getattr(model, "score", None)
    return head if isinstance(head, torch.nn.Linear) else None


def _body(model: PreTrainedModel) -> torch.nn.Module:
    body: torch.nn.Module | None = getattr(model, model.base_model_prefix, None)
    if body is None:
        raise ModelError(
            f"{type(model).__name__} has no '{model.base_model_prefix}' body to read hidden states from"
        )
    return body


def load_reward_model(
    path: str | Path, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, float] | None]:
    """(model, tokenizer, norm) of a sequence-classification model with ``num_labels=1``, in eval mode.

    A plain causal LM is refused rather than given a random head: use :func:`reward_model_from_causal_lm`
    to start a reward model from one.
    """
    _check_source(str(path))
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise load_error(str(path), "reward model", err) from err
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelError(
            f"{path} is not a reward model (architectures {archs or 'unknown'}; expected a "
            "…ForSequenceClassification with num_labels=1 — train one with `rlft rm`)"
        )
    if config.num_labels != 1:
        raise ModelError(f"{path}: a reward model has num_labels=1, this one has {config.num_labels}")
    try:
        model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
            str(path), dtype=parse_dtype(dtype), trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        if isinstance(err, ModelError):
            raise
        raise load_error(str(path), "reward model", err) from err
    tokenizer = load_tokenizer(str(path))
    # A checkpoint without a pad id keeps none: transformers then pools the last token (batch of one),
    # which is what sequence_scores does too; filling in the tokenizer's pad (= EOS when it has none)
    # would move the pooled token off a final EOS and change the model's scores.
    model.eval()
    return model, tokenizer, reward_norm(model)


def pad_token_id_of(model: PreTrainedModel) -> int | None:
    """The pad id that pooling compares against: ``config.get_text_config().pad_token_id``, which is what
    ``GenericForSequenceClassification.forward`` reads (the outer config for GPT-2 and other text-only
    models, where the two are the same object)."""
    pad = model.config.get_text_config().pad_token_id
    return None if pad is None else int(pad)


def set_pad_token_id(model: PreTrainedModel, pad_token_id: int | None) -> None:
    """Record ``pad_token_id`` where HF's pooling reads it (the text config) and on the outer config."""
    model.config.pad_token_id = pad_token_id
    model.config.get_text_config().pad_token_id = pad_token_id


def _resolve_pad_id(
    causal_lm: str | Path | PreTrainedModel, lm: PreTrainedModel, pad: int | None
) -> int | None:
    """``pad``, else the pad id of the tokenizer beside a model directory (EOS where it has none: rlft's
    ``load_tokenizer`` rule), else the LM config's pad id, else its EOS (the same rule without a tokenizer)."""
    if pad is not None:
        return int(pad)
    if isinstance(causal_lm, (str, Path)):
        try:
            return int(load_tokenizer(str(causal_lm)).pad_token_id)
        except (ModelError, OSError, TypeError, ValueError):
            pass  # no usable tokenizer there: fall back to the config
    text = lm.config.get_text_config()
    if text.pad_token_id is not None:
        return int(text.pad_token_id)
    eos = text.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return None if eos is None else int(eos)


def reward_model_from_causal_lm(
    causal_lm: str | Path | PreTrainedModel, seed: int = 0, pad_token_id: int | None = None
) -> PreTrainedModel:
    """A ``…ForSequenceClassification`` (num_labels=1) with ``causal_lm``'s body weights and a fresh head.

    The head is drawn from N(0, 1/(d+1)) as in OpenAI's lm-human-preferences, from a forked RNG seeded
    with ``seed`` (so building it leaves the caller's random stream alone). The LM head is dropped.

    ``config.pad_token_id`` — which decides the pooled token (module docstring) — is set to
    ``pad_token_id``, else to the pad id of the tokenizer saved beside ``causal_lm`` (a directory), else kept
    from the LM config, else its EOS: the id the batches are padded with, so training pools exactly as the
    saved model will in ``transformers``.
    """
    lm = load_causal_lm(str(causal_lm)) if isinstance(causal_lm, (str, Path)) else causal_lm
    config = lm.config.__class__.from_dict(lm.config.to_dict())
    config.num_labels = 1
    config.architectures = None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model: PreTrainedModel = AutoModelForSequenceClassification.from_config(config, dtype=lm.dtype)
            head = _head(model)
            if head is None:
                raise ModelError(f"{type(model).__name__} has no linear 'score' head (expected a decoder LM)")
            torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(config.get_text_config().hidden_size + 1))
    except ValueError as err:
        if isinstance(err, ModelError):
            raise
        raise ModelError(f"{type(lm).__name__} has no sequence-classification variant: {err}") from None
    missing, unexpected = _body(model).load_state_dict(_body(lm).state_dict(), strict=False)
    if missing or unexpected:
        raise ModelError(f"body weights do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
    # Set after construction: a pad id in the config given to from_config becomes the embedding's
    # padding_idx, which would freeze that row (the EOS, often) where the LM itself trains it.
    set_pad_token_id(model, _resolve_pad_id(causal_lm, lm, pad_token_id))
    model.eval()
    return model


def token_values(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The head at every position, float32 (B, T), on the model's device: a value model's V(s_t). Padding
    positions hold whatever the head gives there; mask them."""
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ModelError(
            f"input_ids and attention_mask must be 2-D and the same shape, got {tuple(input_ids.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    head = _head(model)
    if head is None:
        raise ModelError(
            f"{type(model).__name__} has no linear 'score' head (expected a decoder reward model)"
        )
    input_ids, attention_mask = to_device((input_ids, attention_mask), model_device(model))
    out = _body(model)(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    scores: Tensor = head(hidden)
    return scores.squeeze(-1).float()


def pooled_positions(input_ids: Tensor, attention_mask: Tensor, pad_token_id: int | None) -> Tensor:
    """(B,) the position each row is scored at: the rightmost attended token whose id is not
    ``pad_token_id`` (the last attended token when ``pad_token_id`` is None).

    This is ``GenericForSequenceClassification.forward``'s rule (``transformers/modeling_layers.py``:
    ``(arange(T) * (input_ids != pad_token_id)).argmax(-1)``; no pad id: the last position) wherever the
    padding is made of ``pad_token_id``, on either side. It also reads the mask, so padding of any other
    id is skipped too. A row whose attended tokens are all ``pad_token_id`` is scored at its first
    attended token, which is where transformers' all-zero argmax lands (position 0) in an unpadded or
    right-padded batch.
    """
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    attended = attention_mask.to(torch.bool)
    last_attended = (positions * attended).argmax(-1)
    if pad_token_id is None:
        return last_attended
    keep = attended & (input_ids != pad_token_id)
    last_kept = (positions * keep).argmax(-1)
    first_attended = attended.to(torch.long).argmax(-1)
    return torch.where(keep.any(-1), last_kept, first_attended)


def sequence_scores(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The reward (B,): the head at each row's :func:`pooled_positions` (left or right padding), the
    token ``AutoModelForSequenceClassification`` pools for the same ids and ``config.pad_token_id``; on the
    model's device."""
    input_ids, attention_mask = to_device((input_ids, attention_mask), model_device(model))
    if _head(model) is None:  # an encoder classifier (BERT-style): its own pooling is the right one
        logits: Tensor = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[:, 0].float()
    if bool((attention_mask.sum(-1) == 0).any()):
        raise ModelError("sequence_scores: a row has no tokens (attention_mask all zero)")
    values = token_values(model, input_ids, attention_mask)
    last = pooled_positions(input_ids, attention_mask, pad_token_id_of(model))
    return values.gather(1, last[:, None]).squeeze(1)


def save_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    norm: dict[str, float] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save in HF format (safetensors), atomically; ``norm`` goes into config.json (None keeps the
    model's current statistics); ``state_dict``: the weights to write instead of the model's own (the
    whole of a sharded model).

    The config keeps the ``pad_token_id`` the model was trained and scored with, so
    ``AutoModelForSequenceClassification`` pools the same token (:func:`pooled_positions`). Only a model
    without one gets the tokenizer's, as transformers refuses batches of more than one row without it.
    """
    if norm is not None:
        set_reward_norm(model, norm)
    if pad_token_id_of(model) is None and tokenizer is not None and tokenizer.pad_token_id is not None:
        set_pad_token_id(model, int(tokenizer.pad_token_id))
    return save_pretrained_atomic(model, tokenizer, out_dir, state_dict=state_dict)
