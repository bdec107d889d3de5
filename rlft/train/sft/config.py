"""``SFTConfig``: every knob of supervised fine-tuning, loaded with ``rlft.run.load_config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlft.run.config_types import bad_value, check_common, check_required
from rlft.train.common.validation import check_epoch_config

__all__ = ["SFTConfig"]


@dataclass
class SFTConfig:
    """Supervised fine-tuning of a causal LM on prompt-completion, text or conversational data.

    Batching: one optimiser step consumes ``batch_size × grad_accum`` examples (``grad_accum`` micro-batches
    of ``batch_size``); the loss of a step is the sum of token losses over all its micro-batches divided by
    the total number of loss-carrying tokens, so accumulation changes memory use, not the update.
    Training length: ``max_steps`` optimiser steps, or ``epochs`` passes over the data when ``max_steps``
    is null. ``eval_every`` / ``save_every`` of 0 mean "only at the end".
    """

    model: str = ""  # a Hugging Face model directory (or hub id for online users)
    data: str = ""  # any load_records source: a file, a dataset dir, or "task:arithmetic?max_operand=20"
    eval_data: str | None = None  # null: the eval split of a built-in task, or no eval for other data
    format: str | None = None  # record format to validate against; null detects it
    eval_samples: int = 200  # eval records read (loss and generation)
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    overflow: str = "truncate"  # truncate | drop | error, for records over the length limits
    completion_only_loss: bool = True  # loss on completion tokens only (prompt labels are -100)
    pack: bool = False  # pack several examples per row of max_len tokens
    max_len: int | None = None  # max tokens per example (and row length when packing)
    batch_size: int = 16  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to lr × min_lr_ratio at the last step
    max_steps: int | None = 100
    epochs: int | None = None  # used when max_steps is null
    max_grad_norm: float = 1.0  # 0 disables clipping
    eval_every: int = 0
    save_every: int = 0
    log_every: int = 1
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {enable_thinking: false}
    keep_dropout: bool = False  # keep the model's dropout in training (off: every dropout p = 0, as TRL)
    seed: int = 0
    max_consecutive_skips: int = 10  # stop after this many steps in a row skipped as non-finite
    output_dir: str | None = None  # run directory; null: runs/sft-TIMESTAMP
    eval_generate: bool = True  # greedy-generate on eval prompts and report the task's metrics (tasks only)
    eval_max_new_tokens: int = 16
    torch_threads: int = 2  # 0 leaves torch's default
    parallel: str = "ddp"  # ddp | fsdp2: how the ranks of a torchrun launch share the model
    fsdp_offload: bool = False  # fsdp2: keep sharded parameters and optimiser state in CPU memory
    device: str = "auto"  # auto | cpu | cuda | cuda:N: where models compute (auto: the rank's GPU if any)
    precision: str = "fp32"  # fp32 | bf16: bfloat16 autocast matmuls; weights, optimiser and losses float32

    @property
    def bf16(self) -> bool:
        """``precision: bf16``: the transformer body under bfloat16 autocast."""
        return self.precision == "bf16"

    def validate(self) -> None:
        check_required(
            self,
            model="a model directory (set --model DIR)",
            data="a data source such as a .jsonl file or task:arithmetic (set --data)",
        )
        check_common(
            self, generation=("eval_max_new_tokens",), optional_text=("eval_data", "format", "output_dir")
        )
        check_epoch_config(self, positive=("eval_max_new_tokens",))
        if self.pack and self.max_len is None:
            raise bad_value(self, "max_len", "a row length when pack is true")
