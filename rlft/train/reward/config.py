"""``RMConfig``: every knob of reward-model training, loaded with ``rlft.run.load_config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlft.run.config_types import bad_value, check_common, check_required
from rlft.train.common.validation import check_epoch_config

__all__ = ["RM_LOSSES", "RMConfig"]

RM_LOSSES = ("auto", "pairwise", "kwise")


@dataclass
class RMConfig:
    """Reward-model training on preference pairs (prompt, chosen, rejected[, margin]) or ranked lists
    (prompt, responses, scores).

    One *element* of a batch is a pair (``loss: pairwise``) or a prompt with all its responses
    (``loss: kwise``, InstructGPT); ``batch_size`` counts elements, and a step's loss is the sum of element
    losses over all its micro-batches divided by the step's element count. ``auto`` picks pairwise for
    preference data and kwise for ranked data; pairwise on ranked data uses every pair as its own element.
    """

    model: str = ""  # an SFT causal-LM directory (gets a fresh scalar head) or a reward model to continue
    data: str = ""  # a preference/ranked file, or e.g. "task:preference?n=8000&label_noise=0.1"
    eval_data: str | None = None  # null: the eval split of a built-in task, or no eval for other data
    format: str | None = None  # preference | ranked; null: detect (tasks: preference, or ranked for kwise)
    eval_samples: int = 500  # held-out records read
    loss: str = "auto"  # auto | pairwise | kwise
    use_margin: bool = True  # pairwise: subtract each row's `margin` (Llama 2) when the data has one
    center_coef: float = 0.0  # η of the centring term η·(r_w + r_l)² (TRL uses 0.01)
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_len: int | None = None  # max tokens of prompt + response
    overflow: str = "truncate"  # truncate | drop | error
    batch_size: int = 32  # elements (pairs or prompts) per micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    max_steps: int | None = None
    epochs: int | None = 1  # used when max_steps is null (InstructGPT trains its RM for one epoch)
    max_grad_norm: float = 1.0
    eval_every: int = 0  # 0: only at the start and the end
    save_every: int = 0  # 0: no intermediate checkpoints
    log_every: int = 1
    norm_samples: int = 1000  # responses of the reference set for the saved mean/std
    norm_data: str | None = None  # null: the responses of the training data (the policy's distribution)
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {enable_thinking: false}
    keep_dropout: bool = False  # keep the model's dropout in training (off: every dropout p = 0, as TRL)
    seed: int = 0
    max_consecutive_skips: int = 10  # stop after this many steps in a row skipped as non-finite
    output_dir: str | None = None
    torch_threads: int = 2
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
            model="an SFT model directory (set --model DIR)",
            data="preference or ranked data, e.g. task:preference (set --data)",
        )
        check_common(self, optional_text=("eval_data", "format", "norm_data", "output_dir"))
        if self.loss not in RM_LOSSES:
            raise bad_value(self, "loss", f"one of {', '.join(RM_LOSSES)}")
        if self.format not in (None, "preference", "ranked"):
            raise bad_value(self, "format", "preference, ranked or null")
        check_epoch_config(self, positive=("norm_samples",), numbers_at_least_zero=("center_coef",))
