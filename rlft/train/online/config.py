"""``RLConfig``: every knob of the online RL trainer (``rlft rl``), loaded with ``rlft.run.load_config``.

The algorithm keys (``algorithm``, ``advantage``, ``policy_loss``, ``clip_low``, …, ``kl:``) and the run
keys (``max_steps``, ``seed``, ``output_dir``, …) are top-level; the rest is grouped in sections:
``sampling:`` (the rollout), ``optim:`` (the optimiser and the update passes), ``eval:``, ``ptx:``,
``performance:`` (how the passes run, not what they compute), ``critic:`` and ``lora:``. A section key
given flat (``lr``, ``eval_every``, ``ptx_coef``, …) is refused with one line naming its place
(``RLConfig.RENAMED``).

Algorithm keys left null take the value of the chosen preset (``presets.PRESETS``); ``resolved()``
returns the config with every such key filled in, which is what the trainer runs and what it saves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from rlft.algos import ADVANTAGES, AGGREGATIONS, ESTIMATOR_ARGS, KL_ESTIMATORS, POLICY_LOSSES
from rlft.models.fused.llama_forward import FORWARDS
from rlft.run import ConfigError
from rlft.run.config_types import check_common, check_ranges, dotted_value
from rlft.train.common.parallel import PARALLEL_MODES
from rlft.train.online.presets import FALLBACKS, PRESETS

__all__ = [
    "CriticConfig",
    "EvalConfig",
    "KLConfig",
    "LoRAConfig",
    "OptimConfig",
    "PerformanceConfig",
    "PtxConfig",
    "RLConfig",
    "SamplingConfig",
    "preset_value",
]

T = TypeVar("T")

KL_PLACEMENTS = ("loss", "reward", "none")
KL_CONTROLLER_NAMES = ("fixed", "adaptive")
SCALES = ("group", "batch", "none")
ON_INVALID = ("error", "skip")
PRESET_KEYS = (
    "advantage",
    "policy_loss",
    "aggregation",
    "scale_rewards",
    "std_unbiased",
    "clip_low",
    "clip_high",
    "dual_clip",
    "tau_pos",
    "tau_neg",
    "max_ratio",
    "baseline_alpha",
    "dynamic_sampling",
    "max_sample_rounds",
    "overlong_buffer",
    "num_minibatches",
    "whiten_advantages",
)
CRITIC_INITS = ("auto", "reward_model", "actor")
_KL_DEFAULTS = {"placement": "none", "estimator": "k3", "coef": 0.0}


# The range checks of RLConfig.validate, one table (rlft.run.config_types.check_ranges).
RANGES: dict[str, tuple[str, ...]] = {
    "positive": (
        "sampling.prompts_per_step", "sampling.num_generations", "sampling.max_new_tokens", "max_steps",
        "optim.ppo_epochs", "num_minibatches", "eval.samples", "log_every",
    ),
    "positive_or_null": ("optim.micro_batch_size", "max_prompt_tokens", "eval.max_new_tokens"),
    "at_least_zero": (
        "optim.warmup_steps", "eval.every", "save_every", "torch_threads", "seed", "sampling.top_k",
        "sampling.rollout_shards",
    ),
    "numbers_at_least_zero": (
        "optim.weight_decay", "optim.max_grad_norm", "entropy_coef", "clip_low", "clip_high", "dual_clip",
        "max_minutes",
    ),
}  # fmt: skip


@dataclass
class KLConfig:
    """The KL to the reference policy: where it goes, which estimator, and β.

    ``placement: loss`` adds +β·k(π_θ, π_ref) to the loss, aggregated like the policy loss (GRPO);
    ``reward`` subtracts β·k(π_old, π_ref) from the reward, per token or summed per sequence, as the
    advantage estimator takes it (RLHF-PPO, RLOO, REINFORCE++); ``none`` (or β = 0) loads no reference.
    ``controller: adaptive`` adapts β toward ``target`` (Ziegler et al., arXiv 1909.08593).
    """

    placement: str | None = None
    estimator: str | None = None  # k1 | k2 | k3 | k1+ | k3+
    coef: float | None = None  # β (the starting β with the adaptive controller)
    controller: str = "fixed"
    target: float = 6.0  # adaptive: target of the batch-mean summed per-sequence KL
    horizon: float = 10000.0  # adaptive: β ← β·(1 + clip(KL/target − 1, ±0.2)·B/horizon)

    @property
    def active(self) -> bool:
        """True when a reference model is needed (a KL term that can be non-zero)."""
        return self.placement in ("loss", "reward") and (bool(self.coef) or self.controller == "adaptive")


@dataclass
class LoRAConfig:
    """Train low-rank adapters (PEFT) instead of all weights; the reference is the base with adapters off.

    ``target_modules``: ``all-linear`` (every ``nn.Linear`` and transformers ``Conv1D`` of the model except
    the output head: PEFT's own shorthand, ``peft.tuners.tuners_utils._maybe_include_all_linear_layers``),
    so fused layers (GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` / ``gate_up_proj``) train without a list per
    architecture; or a list of module names, each matching a module whose name is it or ends in ``.name``
    (PEFT's rule).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


@dataclass
class CriticConfig:
    """The value model V(s_t) of critic-based estimators (``advantage: gae``, the ``ppo`` preset).

    ``init``: ``auto`` (the run's reward model when it has one, as in InstructGPT, else the actor),
    ``reward_model``, ``actor``, or the directory of a scalar-head (value/reward) model. The critic is a
    separate model with its own optimiser, or with ``shared_backbone`` a value head on the actor's own
    hidden states: one body, one backward of policy loss + vf_coef·value loss; the head has its own
    optimiser, the body's share of the value gradient goes through the actor's.
    """

    init: str = "auto"
    shared_backbone: bool = False
    lr: float | None = None  # null: the actor's optim.lr
    value_clip: float | None = (
        0.2  # ε_v of the clipped value loss (verl, TRL, DeepSpeed-Chat); null: unclipped
    )
    vf_coef: float = 0.1  # weight of the value loss in the actor's loss (shared backbone only; TRL 0.1)
    max_grad_norm: float | None = None  # null: the actor's optim.max_grad_norm


@dataclass
class SamplingConfig:
    """The rollout of each step: ``num_generations`` completions (G) of each of ``prompts_per_step``
    prompts, at most ``max_new_tokens`` tokens each, sampled at ``temperature`` with ``top_p`` / ``top_k``
    filtering (``rlft.models.sampling``); a completion also ends at any of ``stop_strings``."""

    prompts_per_step: int = 8
    num_generations: int = 8  # G completions per prompt
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    stop_strings: list[str] = field(default_factory=list)
    # The step's prompts are split into this many shards, each sampled as one batch with its own seed; under
    # torchrun each rank samples its shards. 0: one per rank. A one-process run with rollout_shards N
    # samples exactly what N ranks sample (the same completions whatever the number of processes).
    rollout_shards: int = 0


@dataclass
class OptimConfig:
    """The actor's optimiser (AdamW, ``rlft.train.common.optimizer``), its warmup-cosine schedule and the
    update passes: ``ppo_epochs`` passes over each rollout, each optimiser step run as micro-batches of
    ``micro_batch_size`` rows (which changes memory use, not the update)."""

    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0  # cosine decay to lr × min_lr_ratio at the last step; 1.0 = constant
    ppo_epochs: int = 1  # μ: passes over each rollout
    micro_batch_size: int | None = None  # rows per forward/backward; null: the whole mini-batch
    max_grad_norm: float = 1.0  # 0 disables clipping


@dataclass
class EvalConfig:
    """Held-out evaluation: greedy completions of ``samples`` prompts of ``data`` (null: the eval split of
    a built-in task, else no evaluation), scored with the run's rewards, before training, every ``every``
    steps and after training."""

    data: str | None = None  # null: the eval split of a built-in task, else no evaluation
    samples: int = 200
    every: int = 0  # 0: only before and after training
    max_new_tokens: int | None = None  # null: sampling.max_new_tokens


@dataclass
class PtxConfig:
    """PPO-ptx (InstructGPT, arXiv 2203.02155, eq. 2): each optimiser step adds ``coef`` × the token-mean
    NLL of a batch of ``batch_size`` examples of ``data`` to the loss, keeping the policy close to its
    SFT/pretraining distribution."""

    data: str | None = None  # any load_records source of SFT/pretraining text, e.g. task:preference
    format: str | None = None
    coef: float = 0.0  # γ_ptx (InstructGPT 27.8 with their loss scale; DeepSpeed-Chat unsup_coef)
    batch_size: int = 8
    max_tokens: int | None = None  # longer ptx examples are truncated


@dataclass
class PerformanceConfig:
    """How the sampling, training and reference passes run: settings that change speed and memory, and
    numerics only within rounding (``rlft.models.forward_path`` records the path a run took)."""

    RENAMED: ClassVar[dict[str, str]] = {"bf16": "/precision"}  # now a top-level key of every trainer

    onednn_linear: bool = True  # float32 linear layers of training/reference passes on oneDNN (CPU)
    share_prompts: bool = True  # run each group's prompt once in the training/reference passes
    forward: str = (
        "auto"  # training/reference passes: auto | fast (the fused Llama forward) | hf (the model's)
    )
    recompute_old_logp: bool = False  # false: π_old = the sampler's log-probs (same policy, same τ; float32
    # only — under precision bf16 they are always recomputed, since the two bf16 paths round differently)


def preset_value(value: T | None, key: str) -> T:
    """``value`` of the algorithm key ``key`` of a resolved config: null only under algorithm ``custom``
    with the key left unset, which is refused here with the line ``RLConfig.validate`` gives."""
    if value is None:
        raise ConfigError(
            f"config key '{key}': expected a value (algorithm 'custom' sets no default), got None"
        )
    return value


def _moved(section: str, cls: type, old_prefix: str = "") -> dict[str, str]:
    """{old flat key: its dotted place} for every key of the section ``cls`` (``RLConfig.RENAMED``)."""
    return {f"{old_prefix}{f.name}": f"{section}.{f.name}" for f in dataclasses.fields(cls)}


@dataclass
class RLConfig:
    """Online RL of a causal LM: sample G completions per prompt, score them, estimate advantages, and
    take ``optim.ppo_epochs`` passes of ``num_minibatches`` optimiser steps over the rollout.

    Batching: a step samples ``sampling.prompts_per_step × sampling.num_generations`` completions. Each
    optimiser step takes one mini-batch, run as micro-batches of ``optim.micro_batch_size`` rows whose
    losses are divided by the normaliser of the whole mini-batch (``rlft.algos.global_normalizer``), so
    the micro-batch size changes memory use, not the update. ``max_steps`` counts rollout steps.
    """

    # Keys refused with one line naming their place (rlft.run.config): the same name for the same concept in
    # every trainer config, and each section key given flat.
    RENAMED: ClassVar[dict[str, str]] = {
        "bf16_autocast": "precision",
        "bf16": "precision",
        **_moved("sampling", SamplingConfig),
        **_moved("optim", OptimConfig),
        **_moved("eval", EvalConfig, "eval_"),
        **_moved("ptx", PtxConfig, "ptx_"),
        **_moved("performance", PerformanceConfig),
    }

    # --- model and data ---
    model: str = ""  # a Hugging Face model directory
    ref_model: str | None = None  # null: the starting policy (under LoRA: the base with adapters disabled)
    data: str = ""  # prompts: any load_records source, e.g. "task:arithmetic?max_operand=20"
    format: str | None = None  # record format to validate against; null detects (prompt_only for tasks)
    max_prompt_tokens: int | None = None  # longer prompts are dropped (counted in the data report)
    rewards: list[Any] = field(default_factory=list)  # reward specs (rlft.rewards); [] = the task's reward
    on_invalid_reward: str = "error"  # error | skip (NaN/inf or no reward: the sample carries no loss)
    reward_model: str | None = (
        None  # shorthand: add {reward_model: DIR, normalize: normalize_score} to rewards
    )
    normalize_score: bool = False  # (r − mean)/std with the statistics `rlft rm` saved with reward_model
    missing_eos_penalty: float | None = None  # subtracted from the score of completions without EOS (TRL)
    # --- the algorithm: a preset, or "custom" with the parts spelled out (null = the preset's value) ---
    algorithm: str = "grpo"
    advantage: str | None = None
    policy_loss: str | None = None
    aggregation: str | None = None
    kl: KLConfig = field(default_factory=KLConfig)
    scale_rewards: str | None = None  # group | batch | none: divide centred rewards by the group/batch std
    std_unbiased: bool | None = None  # N−1 std (verl, TRL) or population std; null: the estimator's default
    clip_low: float | None = None  # ε_low (ratio ≥ 1 − ε_low)
    clip_high: float | None = None  # ε_high (ratio ≤ 1 + ε_high); null: = clip_low
    dual_clip: float | None = None  # c > 1 caps the loss of Â < 0 tokens at −c·Â; 0 = off
    tau_pos: float | None = None  # SAPO gate temperatures
    tau_neg: float | None = None
    max_ratio: float | None = None  # DCPO's cap on the dynamic upper bound
    baseline_alpha: float | None = None  # REINFORCE's moving-average baseline: b ← α·b + (1 − α)·R̄
    dynamic_sampling: bool | None = None  # DAPO: drop groups whose rewards are all equal, sample more
    max_sample_rounds: int | None = None  # dynamic sampling gives up after this many rounds (≤ 0: never)
    overlong_buffer: float | None = None  # DAPO soft overlong punishment over the last fraction of tokens
    num_minibatches: int | None = None  # optimiser steps per pass over the rollout
    whiten_advantages: bool | None = None  # (Â − mean)/std over the batch's tokens (TRL/verl PPO)
    advantage_kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments of the estimator
    loss_kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments of the policy loss
    score_clip: float | None = None  # clip the score to ±c before it joins the per-token rewards (RLHF-PPO)
    gamma: float = 1.0  # discount of per-token returns
    lam: float = 0.95  # GAE λ (critic-based estimators)
    entropy_coef: float = 0.0  # entropy bonus: loss −= c·aggregate(H)
    mask_truncated: bool = False  # completions cut at the token budget carry no loss (DAPO overlong filter)
    critic: CriticConfig = field(default_factory=CriticConfig)  # used when the advantage needs values
    # --- the sections ---
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ptx: PtxConfig = field(default_factory=PtxConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    lora: LoRAConfig | None = None
    # --- the run: length, logging, checkpoints ---
    max_steps: int = 100
    max_minutes: float = (
        0.0  # stop after this much training time (evaluation excluded), save, evaluate; 0 = off
    )
    save_every: int = 0  # 0: only the final model
    log_every: int = 1
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {enable_thinking: false}
    seed: int = 0
    max_consecutive_skips: int = 10  # stop after this many steps in a row skipped as non-finite
    output_dir: str | None = None
    # Set with the seed by the opening every trainer shares (rlft.train.common.launch), so it stays beside it.
    torch_threads: int = 2  # 0 leaves torch's default
    parallel: str = "ddp"  # ddp | fsdp2: how the ranks of a torchrun launch share the policy
    fsdp_offload: bool = False  # fsdp2: keep sharded parameters and optimiser state in CPU memory
    device: str = "auto"  # auto | cpu | cuda | cuda:N: where models compute (auto: the rank's GPU if any)
    precision: str = "fp32"  # fp32 | bf16: bfloat16 autocast matmuls; weights, optimiser and losses float32

    @property
    def bf16(self) -> bool:
        """``precision: bf16``: the transformer body under bfloat16 autocast."""
        return self.precision == "bf16"

    # --- presets ---

    def resolved(self) -> RLConfig:
        """This config with every null algorithm key filled from the preset (then the generic fallback)."""
        preset = self._preset()
        changes: dict[str, Any] = {}
        for key in PRESET_KEYS:
            if getattr(self, key) is None:
                changes[key] = preset.get(key, FALLBACKS.get(key))
        if changes.get("clip_high", self.clip_high) is None:
            changes["clip_high"] = changes.get("clip_low", self.clip_low)
        kl_preset = {**_KL_DEFAULTS, **preset.get("kl", {})}
        kl_changes = {k: kl_preset[k] for k in _KL_DEFAULTS if getattr(self.kl, k) is None}
        return dataclasses.replace(self, **changes, kl=dataclasses.replace(self.kl, **kl_changes))

    def preset_overrides(self) -> dict[str, Any]:
        """Algorithm keys whose value differs from the preset's (what the user changed)."""
        preset, out = self._preset(), {}
        for key in PRESET_KEYS:
            if key in preset and getattr(self, key) is not None and getattr(self, key) != preset[key]:
                out[key] = getattr(self, key)
        for key, value in preset.get("kl", {}).items():
            mine = getattr(self.kl, key)
            if mine is not None and mine != value:
                out[f"kl.{key}"] = mine
        return out

    def _preset(self) -> dict[str, Any]:
        if self.algorithm == "custom":
            return {}
        if self.algorithm not in PRESETS:
            raise ConfigError(
                f"config key 'algorithm': expected 'custom' or a preset ({', '.join(sorted(PRESETS))}), "
                f"got {self.algorithm!r}"
            )
        return PRESETS[self.algorithm]

    # --- checks ---

    def validate(self) -> None:
        def bad(key: str, expected: str, value: Any = None) -> ConfigError:
            got = dotted_value(cfg, key) if value is None else value
            return ConfigError(f"config key '{key}': expected {expected}, got {got!r}")

        cfg = self.resolved()
        if not cfg.model:
            raise bad("model", "a model directory (set --model DIR)")
        if not cfg.data:
            raise bad("data", "a prompt source such as task:arithmetic or a .jsonl file (set --data)")
        check_common(
            cfg,
            lrs=("optim.lr", "critic.lr"),
            generation=("sampling.max_new_tokens", "eval.max_new_tokens"),
            optional_text=(
                "ref_model",
                "format",
                "reward_model",
                "ptx.data",
                "ptx.format",
                "eval.data",
                "output_dir",
            ),
        )
        for key, registry in (
            ("advantage", ADVANTAGES),
            ("policy_loss", POLICY_LOSSES),
            ("aggregation", AGGREGATIONS),
        ):
            value = getattr(cfg, key)
            if value is None:
                raise bad(key, f"a name (algorithm 'custom' sets no default): one of {registry.names()}")
            if value not in registry:
                raise bad(key, f"one of {', '.join(registry.names())}")
        if cfg.kl.placement not in KL_PLACEMENTS:
            raise bad("kl.placement", f"one of {', '.join(KL_PLACEMENTS)}", cfg.kl.placement)
        if cfg.performance.forward not in FORWARDS:
            raise bad("performance.forward", f"one of {', '.join(FORWARDS)}")
        if cfg.kl.estimator not in KL_ESTIMATORS:
            raise bad("kl.estimator", f"one of {', '.join(KL_ESTIMATORS.names())}", cfg.kl.estimator)
        if cfg.kl.controller not in KL_CONTROLLER_NAMES:
            raise bad("kl.controller", f"one of {', '.join(KL_CONTROLLER_NAMES)}", cfg.kl.controller)
        if preset_value(cfg.kl.coef, "kl.coef") < 0:
            raise bad("kl.coef", "a number >= 0", cfg.kl.coef)
        self._validate_kl_placement(cfg)
        if cfg.kl.target <= 0 or cfg.kl.horizon <= 0:
            raise bad("kl.target", "kl.target and kl.horizon > 0", (cfg.kl.target, cfg.kl.horizon))
        if cfg.scale_rewards not in SCALES:
            raise bad("scale_rewards", f"one of {', '.join(SCALES)}")
        if cfg.on_invalid_reward not in ON_INVALID:
            raise bad("on_invalid_reward", f"one of {', '.join(ON_INVALID)}")
        check_ranges(cfg, **RANGES)
        if cfg.score_clip is not None and cfg.score_clip <= 0:
            raise bad("score_clip", "a number > 0 or null")
        if cfg.optim.lr <= 0:
            raise bad("optim.lr", "a number > 0")
        if cfg.sampling.temperature <= 0:
            raise bad("sampling.temperature", "a number > 0")
        if not 0 < cfg.sampling.top_p <= 1:
            raise bad("sampling.top_p", "a number in (0, 1]")
        if cfg.dual_clip and cfg.dual_clip <= 1:
            raise bad("dual_clip", "0 (off) or a number > 1")
        if not 0 <= cfg.optim.min_lr_ratio <= 1:
            raise bad("optim.min_lr_ratio", "a number in [0, 1]")
        if not 0 < cfg.optim.adam_beta2 < 1:
            raise bad("optim.adam_beta2", "a number in (0, 1)")
        if not 0 <= preset_value(cfg.baseline_alpha, "baseline_alpha") <= 1:
            raise bad("baseline_alpha", "a number in [0, 1]")
        if not 0 <= preset_value(cfg.overlong_buffer, "overlong_buffer") < 1:
            raise bad("overlong_buffer", "a fraction of sampling.max_new_tokens in [0, 1)")
        if not (0 <= cfg.gamma <= 1 and 0 <= cfg.lam <= 1):
            raise bad("gamma", "gamma and lam in [0, 1]", (cfg.gamma, cfg.lam))
        groups_needed = "group_ids" in ESTIMATOR_ARGS.get(preset_value(cfg.advantage, "advantage"), ())
        generations = cfg.sampling.num_generations
        if groups_needed and generations < 2:
            raise bad(
                "sampling.num_generations",
                f"at least 2 for the {cfg.advantage!r} advantage (it compares a group)",
            )
        if cfg.dynamic_sampling and generations < 2:
            raise bad(
                "sampling.num_generations", "at least 2 with dynamic_sampling (it filters groups by variance)"
            )
        rows = cfg.sampling.prompts_per_step * generations
        if preset_value(cfg.num_minibatches, "num_minibatches") > rows:
            raise bad(
                "num_minibatches",
                f"at most sampling.prompts_per_step × sampling.num_generations = {rows}",
            )
        self._validate_ppo(cfg, bad)
        if cfg.parallel not in PARALLEL_MODES:
            raise bad("parallel", f"one of {', '.join(PARALLEL_MODES)}")
        if cfg.lora is not None and cfg.parallel == "fsdp2":
            raise bad("parallel", "ddp with LoRA (sharding adapters with fsdp2 is not supported)")
        if cfg.critic.shared_backbone and cfg.parallel == "fsdp2":
            raise bad(
                "parallel",
                "ddp with critic.shared_backbone (a value head on a sharded body is not supported)",
            )
        if cfg.lora is not None:
            if cfg.lora.r < 1 or cfg.lora.alpha <= 0 or not 0 <= cfg.lora.dropout < 1:
                raise bad("lora", "r >= 1, alpha > 0, dropout in [0, 1)", dataclasses.asdict(cfg.lora))
            targets = cfg.lora.target_modules
            if not targets or (isinstance(targets, str) and targets != "all-linear"):
                raise bad("lora.target_modules", "all-linear or a non-empty list of module names", targets)

    @staticmethod
    def _validate_kl_placement(cfg: RLConfig) -> None:
        """A KL coefficient or controller with placement none would be silently ignored: refuse it."""
        if cfg.kl.placement != "none":
            return
        if cfg.kl.coef:
            raise ConfigError(
                f"config keys 'kl.coef' and 'kl.placement': kl.coef is {cfg.kl.coef}, but kl.placement none "
                f"applies no KL (set kl.placement to loss or reward, or kl.coef to 0)"
            )
        if cfg.kl.controller == "adaptive":
            raise ConfigError(
                "config keys 'kl.controller' and 'kl.placement': the adaptive controller needs a KL term, but "
                "kl.placement is none (set kl.placement to loss or reward, or kl.controller to fixed)"
            )

    def _validate_ppo(self, cfg: RLConfig, bad: Callable[..., ConfigError]) -> None:
        """The critic, score shaping and PPO-ptx keys."""
        c = cfg.critic
        if not isinstance(c.init, str) or not c.init:
            raise bad("critic.init", f"one of {', '.join(CRITIC_INITS)} or a model directory", c.init)
        if c.shared_backbone and c.init not in ("auto", "actor"):
            raise bad(
                "critic.init", "auto or actor with critic.shared_backbone (the head reads the actor)", c.init
            )
        if c.lr is not None and c.lr <= 0:
            raise bad("critic.lr", "a number > 0 or null", c.lr)
        if c.value_clip is not None and c.value_clip <= 0:
            raise bad("critic.value_clip", "a number > 0 or null", c.value_clip)
        if c.vf_coef < 0:
            raise bad("critic.vf_coef", "a number >= 0", c.vf_coef)
        if c.max_grad_norm is not None and c.max_grad_norm < 0:
            raise bad("critic.max_grad_norm", "a number >= 0 or null", c.max_grad_norm)
        if cfg.missing_eos_penalty is not None and cfg.missing_eos_penalty < 0:
            raise bad("missing_eos_penalty", "a number >= 0 or null")
        if cfg.normalize_score and not cfg.reward_model:
            raise bad("normalize_score", "reward_model to be set (or put normalize: true in its reward spec)")
        ptx = cfg.ptx
        if ptx.coef < 0:
            raise bad("ptx.coef", "a number >= 0")
        if ptx.coef > 0 and not ptx.data:
            raise bad("ptx.data", "a data source (ptx.coef > 0), e.g. task:preference")
        if ptx.data and ptx.coef == 0:
            raise ConfigError(
                f"config keys 'ptx.data' and 'ptx.coef': ptx.data is {ptx.data!r}, but ptx.coef 0 never "
                f"uses it (set ptx.coef > 0, or remove ptx.data)"
            )
        if ptx.batch_size < 1:
            raise bad("ptx.batch_size", "a positive integer")
        if ptx.max_tokens is not None and ptx.max_tokens < 2:
            raise bad("ptx.max_tokens", "an integer >= 2 or null")
