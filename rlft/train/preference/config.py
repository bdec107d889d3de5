"""``DPOConfig``: every knob of offline preference optimisation (DPO family, KTO, RRHF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlft.algos import PREFERENCE_LOSSES
from rlft.run import ConfigError
from rlft.run.config_types import bad_value, check_common, check_required
from rlft.train.common.validation import check_epoch_config

__all__ = [
    "DEFAULT_BETA",
    "LOSS_DATA",
    "NO_REFERENCE",
    "OFFLINE_LOSSES",
    "DPOConfig",
]

# loss name → the record format it trains on
LOSS_DATA: dict[str, str] = {
    "sigmoid": "preference",
    "dpo": "preference",
    "cdpo": "preference",
    "robust": "preference",
    "ipo": "preference",
    "hinge": "preference",
    "simpo": "preference",
    "orpo": "preference",
    "kto": "unpaired",
    "rrhf": "ranked",
}
OFFLINE_LOSSES = tuple(LOSS_DATA)
NO_REFERENCE = ("simpo", "orpo", "rrhf")  # losses that never look at a reference model
# β when the config leaves it null: DPO/cDPO/robust/hinge/KTO 0.1 (DPO paper, KTO paper), IPO τ = 0.1
# (TRL), SimPO 2.0 with γ = 1.0 (γ/β = 0.5, the paper's range), ORPO λ = 0.1 (paper; TRL's `beta`).
DEFAULT_BETA: dict[str, float] = {"simpo": 2.0, "orpo": 0.1}


@dataclass
class DPOConfig:
    """Offline preference optimisation of a causal LM.

    ``loss`` picks the objective (formulas in ``rlft/algos/preference.py``): ``sigmoid`` (= ``dpo``),
    ``cdpo``, ``robust``, ``ipo``, ``hinge``, ``simpo``, ``orpo`` on preference pairs
    {prompt, chosen, rejected}; ``kto`` on unpaired {prompt, completion, label}; ``rrhf`` on ranked
    lists {prompt, responses, scores}.

    ``beta`` is β of the DPO family and KTO, τ of IPO, β of SimPO and λ of ORPO; null picks the loss's
    usual value (0.1; SimPO 2.0). The reference model (``ref_model``, default: ``model`` itself) scores
    each sequence once before training when ``precompute_ref`` is true, and those log-probs are cached
    in ``ref_cache_dir`` keyed by the tokenised data and the reference weights, so a second run on the
    same data and reference skips the pass; with ``precompute_ref: false`` the reference scores every
    batch during training. SimPO, ORPO and RRHF use no reference.

    Batching: one optimiser step takes ``batch_size × grad_accum`` pairs (KTO: examples; RRHF: prompts).
    ``eval_every`` / ``save_every`` of 0 mean "only at the end".
    """

    # Keys with a new name (the same name for the same concept in every trainer config).
    RENAMED: ClassVar[dict[str, str]] = {"share_prompt": "share_prompts", "bf16": "precision"}

    model: str = ""  # the policy to start from (usually an SFT model directory)
    ref_model: str | None = None  # null: the starting policy (``model``) is the reference
    data: str = ""  # a preference/unpaired/ranked file or dataset, or e.g. "task:preference?n=2000"
    eval_data: str | None = None  # null: the eval split of a built-in task, else no eval data
    format: str | None = None  # null: the loss's format (preference, unpaired or ranked)
    loss: str = "sigmoid"
    beta: float | None = None
    gamma: float = 1.0  # SimPO's target margin γ
    label_smoothing: float = 0.1  # ε of cdpo and robust (the flip probability of a label)
    desirable_weight: float = 1.0  # KTO λ_D
    undesirable_weight: float = 1.0  # KTO λ_U
    rrhf_weight: float = 1.0  # RRHF w on the ranking term (paper 1, official code 100)
    length_penalty: float = 1.0  # RRHF α: p_i = Σ log π / |y_i|^α
    precompute_ref: bool = True
    ref_cache_dir: str | None = None  # null: $RLFT_CACHE/ref_logps, else ~/.cache/rlft/ref_logps
    eval_samples: int = 200  # eval records (pairs / examples / ranked lists)
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_len: int | None = None  # prompt + one completion
    overflow: str = "truncate"  # truncate | drop | error
    batch_size: int = 16  # pairs (KTO: examples, RRHF: prompts) per micro-batch
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    max_steps: int | None = 100
    epochs: int | None = None  # used when max_steps is null
    max_grad_norm: float = 1.0  # 0 disables clipping
    forward: str = "auto"  # auto | fast | hf: the fused Llama forward when possible, or the model's own
    share_prompts: bool = True  # fused forward: one row per example, its prompt computed once
    eval_every: int = 0
    save_every: int = 0
    log_every: int = 1
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {enable_thinking: false}
    keep_dropout: bool = False  # keep the model's dropout in training (off: every dropout p = 0, as TRL)
    seed: int = 0
    max_consecutive_skips: int = 10  # stop after this many steps in a row skipped as non-finite
    output_dir: str | None = None  # null: runs/dpo-TIMESTAMP
    win_rate: bool = True  # on the built-in preference task: gold win rate against the reference model
    win_rate_samples: int = 8  # sampled completions per held-out prompt for the win rate
    win_rate_max_new_tokens: int = 24
    torch_threads: int = 2  # 0 leaves torch's default
    parallel: str = "ddp"  # ddp | fsdp2: how the ranks of a torchrun launch share the model
    fsdp_offload: bool = False  # fsdp2: keep sharded parameters and optimiser state in CPU memory
    device: str = "auto"  # auto | cpu | cuda | cuda:N: where models compute (auto: the rank's GPU if any)
    precision: str = "fp32"  # fp32 | bf16: bfloat16 autocast matmuls; weights, optimiser and losses float32

    @property
    def bf16(self) -> bool:
        """``precision: bf16``: the transformer body under bfloat16 autocast."""
        return self.precision == "bf16"

    def __post_init__(self) -> None:
        if self.loss == "dpo":
            self.loss = "sigmoid"

    @property
    def data_format(self) -> str:
        return self.format or LOSS_DATA.get(self.loss, "preference")

    @property
    def needs_reference(self) -> bool:
        return self.loss not in NO_REFERENCE

    @property
    def beta_value(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.loss, 0.1)

    def validate(self) -> None:
        check_required(
            self,
            model="a model directory (set --model DIR)",
            data="a data source such as a .jsonl file or task:preference (set --data)",
        )
        if self.loss not in LOSS_DATA or self.loss not in PREFERENCE_LOSSES:
            raise bad_value(self, "loss", f"one of {', '.join(OFFLINE_LOSSES)}")
        if self.format is not None and self.format != LOSS_DATA[self.loss]:
            raise bad_value(self, "format", f"{LOSS_DATA[self.loss]} data for loss {self.loss} (or null)")
        check_common(
            self,
            generation=("win_rate_max_new_tokens",),
            optional_text=("ref_model", "eval_data", "format", "ref_cache_dir", "output_dir"),
        )
        if self.ref_model is not None and not self.needs_reference:
            raise ConfigError(
                f"config keys 'ref_model' and 'loss': loss {self.loss} uses no reference model, but ref_model "
                f"is set to {self.ref_model!r} (remove ref_model, or pick a loss that uses it)"
            )
        check_epoch_config(
            self,
            positive=("win_rate_samples", "win_rate_max_new_tokens"),
            numbers_at_least_zero=("desirable_weight", "undesirable_weight", "rrhf_weight"),
        )
        if self.forward not in ("auto", "fast", "hf"):
            raise bad_value(self, "forward", "one of auto, fast, hf")
        if self.beta is not None and self.beta <= 0:
            raise bad_value(self, "beta", "a number > 0 (or null for the loss's default)")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise bad_value(self, "label_smoothing", "a number in [0, 0.5)")
