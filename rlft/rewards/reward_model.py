"""A reward model as a reward source: the same ``f(prompts, completions, **fields)`` as any rule.

Each (prompt, completion) is tokenised exactly as the reward-model trainer tokenises a preference pair
(prompt, then completion, then EOS; chat prompts through the tokenizer's template), scored in batches of
``batch_size`` with the head at the token the trainer and ``transformers`` pool (the rightmost one that is
not ``config.pad_token_id``: the token before the EOS where EOS is the pad token, see
``rlft.models.scalar_head.pooled_positions``), and optionally normalised with the statistics saved with
the model: r' = (r − mean)/std.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlft.data import LengthLimits, PromptCompletionRecord, encode_sft, pad_sequences
from rlft.data.formats import Completion, Prompt
from rlft.data.tasks.base import text_of

from .errors import RewardError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["RewardModelFunction", "score_texts"]


@torch.no_grad()
def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    batch_size: int = 32,
    max_length: int | None = None,
) -> torch.Tensor:
    """Raw reward-model scores (B,) float32 of ``completions`` answering ``prompts``.

    Sequences over ``max_length`` tokens keep their prompt's end and lose the completion's tail (the
    trainer's rule, see ``rlft.data.lengths``); EOS is kept unless the completion itself is cut.
    """
    from rlft.models.scalar_head import sequence_scores

    records = [
        PromptCompletionRecord(prompt=p, completion=text_of(c), where=f"sample {i}")
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
    ]
    limits = LengthLimits(max_total_tokens=max_length) if max_length else None
    examples = encode_sft(records, tokenizer, limits)
    if len(examples) != len(records):  # truncate never drops, but be loud if that ever changes
        raise RewardError(f"reward model: {len(records) - len(examples)} samples could not be encoded")
    pad = int(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(examples), batch_size):
        seqs = [e.input_ids for e in examples[i : i + batch_size]]
        ids = pad_sequences(seqs, pad)  # right padding; sequence_scores reads the mask, so either side works
        lengths = torch.tensor([len(s) for s in seqs])
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        out.append(sequence_scores(model, ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


class RewardModelFunction:
    """``{"reward_model": DIR, "batch_size": 32, "normalize": false, "max_length": null, "dtype": "float32",
    "chat_template_kwargs": {}}``.

    ``normalize`` needs the statistics that ``rlft rm`` saves with the model; ``chat_template_kwargs`` go
    to the reward model's chat template when it renders conversational prompts.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 32,
        normalize: bool = False,
        max_length: int | None = None,
        dtype: str = "float32",
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        from rlft.data import DataError, set_chat_template_kwargs
        from rlft.models import ModelError
        from rlft.models.scalar_head import load_reward_model

        if not isinstance(batch_size, int) or batch_size < 1:
            raise RewardError(f"reward_model {path}: batch_size={batch_size!r}: expected a positive integer")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise RewardError(
                f"reward_model {path}: max_length={max_length!r}: expected an integer >= 2 or null"
            )
        try:
            self.model, self.tokenizer, self.norm = load_reward_model(str(path), dtype=dtype)
        except ModelError as err:
            raise RewardError(f"reward_model: {err}") from None
        try:
            set_chat_template_kwargs(self.tokenizer, chat_template_kwargs)
        except DataError as err:
            raise RewardError(f"reward_model {path}: {err}") from None
        if normalize and self.norm is None:
            raise RewardError(
                f"reward_model {path}: normalize is true but the model has no saved mean/std "
                "(train it with `rlft rm`, or set normalize: false)"
            )
        self.path, self.batch_size, self.normalize, self.max_length = (
            str(path),
            batch_size,
            normalize,
            max_length,
        )
        self.__name__ = "reward_model"

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[Completion], **_: Any) -> list[float]:
        scores = score_texts(
            self.model, self.tokenizer, prompts, completions, self.batch_size, self.max_length
        )
        if self.normalize and self.norm is not None:  # __init__ refused normalize without a norm
            scores = (scores - self.norm["mean"]) / self.norm["std"]
        return scores.tolist()
