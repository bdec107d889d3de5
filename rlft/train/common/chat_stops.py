"""Sampling stops at the end of the assistant's turn, for chat models whose turn ends with a token other
than ``eos_token`` (ChatML ``<|im_end|>``, Gemma ``<end_of_turn>``, Llama-3 ``<|eot_id|>``, Phi-3 ``<|end|>``).

The sampler stops at the tokenizer's EOS and at every id in ``model.generation_config.eos_token_id`` (as
``generate`` does). Real chat checkpoints usually list their end-of-turn token there, but a base model
given a chat template, or a checkpoint saved without it, does not — and would then run past the end of
its turn to ``max_new_tokens``, learning to ramble. So the template's end-of-turn token is added to the
generation config of the policy before anything is sampled; it is saved with the trained model, so the
result stops correctly in plain ``transformers`` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlft.data.chat import end_of_turn_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["stop_at_end_of_turn"]


def stop_at_end_of_turn(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Add the chat template's end-of-turn token to ``model.generation_config.eos_token_id``; returns the
    resulting EOS ids (unchanged when the tokenizer has no chat template or its turns end with EOS)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return []
    current = config.eos_token_id
    ids = [] if current is None else [int(current)] if isinstance(current, int) else [int(i) for i in current]
    for token_id in end_of_turn_token_ids(tokenizer):
        if token_id not in ids:
            ids.append(int(token_id))
    if ids:
        config.eos_token_id = ids[0] if len(ids) == 1 else ids
    return ids
