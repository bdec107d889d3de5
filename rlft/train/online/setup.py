"""Set-up of an online RL run, the parts around the loop: the one-paragraph description of the algorithm
printed at start (:func:`describe_algorithm`), the reward specs it optimises (:func:`reward_specs`), the
policy (plain or with LoRA adapters, :func:`load_policy`), the reference model's log-probs
(:class:`Reference`) and the final save with adapters merged (:func:`save_final`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from rlft.algos import ADVANTAGES
from rlft.data.tasks import task_of
from rlft.models import load_causal_lm, save_pretrained_atomic
from rlft.run import ConfigError
from rlft.train.online.config import RLConfig
from rlft.train.online.critic import reward_model_dir
from rlft.train.online.rollout import needs_critic

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "describe_adapters",
    "describe_algorithm",
    "linear_layers",
    "load_policy",
    "lora_targets",
    "peft_policy",
    "reward_specs",
    "save_final",
]


def describe_algorithm(cfg: RLConfig) -> str:
    """One paragraph naming the parts and numbers the run uses (printed at start)."""
    r = cfg.resolved()
    s = r.sampling
    kl = "none"
    if r.kl.active:
        kl = f"{r.kl.estimator} in the {r.kl.placement}, β={r.kl.coef:g}" + (
            f" (adaptive, target {r.kl.target:g})" if r.kl.controller == "adaptive" else ""
        )
    parts = [
        f"advantage={r.advantage}" + (f" (scale {r.scale_rewards})" if r.advantage == "group_norm" else ""),
        f"policy_loss={r.policy_loss}",
        f"clip={r.clip_low:g}/{r.clip_high:g}"
        if r.policy_loss in ("ppo_clip", "gspo", "gspo_token", "cispo", "dcpo")
        else "",
        f"τ={r.tau_pos:g}/{r.tau_neg:g}" if r.policy_loss == "sapo" else "",
        f"dual_clip={r.dual_clip:g}" if r.dual_clip else "",
        f"kl={kl}",
        f"aggregation={r.aggregation}",
        f"G={s.num_generations} × {s.prompts_per_step} prompts, ≤{s.max_new_tokens} tokens at τ={s.temperature:g}",
        f"μ={r.optim.ppo_epochs} × {r.num_minibatches} mini-batch(es)",
        f"dynamic sampling (≤{r.max_sample_rounds} rounds)" if r.dynamic_sampling else "",
        f"overlong buffer {r.overlong_buffer:g}" if r.overlong_buffer else "",
        "truncated completions masked" if r.mask_truncated else "",
        f"entropy bonus {r.entropy_coef:g}" if r.entropy_coef else "",
        "advantages whitened" if r.whiten_advantages else "",
        f"score clip ±{r.score_clip:g}" if r.score_clip else "",
        (
            f"critic ({'shared backbone' if r.critic.shared_backbone else 'init ' + r.critic.init}, "
            f"ε_v={r.critic.value_clip}, γ={r.gamma:g}, λ={r.lam:g})"
        )
        if r.advantage is not None and r.advantage in ADVANTAGES and needs_critic(r.advantage)
        else "",
        f"ptx {r.ptx.coef:g}·NLL({r.ptx.data})" if r.ptx.coef else "",
        f"lr={r.optim.lr:g}",
    ]
    changed = cfg.preset_overrides()
    note = f"; changed from the preset: {changed}" if changed else ""
    return f"algorithm {r.algorithm}: " + ", ".join(p for p in parts if p) + note


def reward_specs(cfg: RLConfig) -> list[Any]:
    """The reward specs of a run: ``rewards``, or the task's own reward for a built-in task; plus DAPO's
    overlong punishment when ``overlong_buffer`` > 0."""
    specs = list(cfg.rewards)
    if cfg.reward_model:
        spec = {"reward_model": cfg.reward_model, "normalize": cfg.normalize_score}
        if cfg.chat_template_kwargs:  # the reward model renders the same conversations as the policy
            spec["chat_template_kwargs"] = cfg.chat_template_kwargs
        specs.append(spec)
    if not specs:
        task = task_of(cfg.data)
        if task is None:
            raise ConfigError(
                "config key 'rewards': expected at least one reward spec (the data is not a built-in task "
                "with its own reward), e.g. rewards: [exact_match]"
            )
        specs = [f"task:{task.name}"]
    if cfg.overlong_buffer:
        max_len = cfg.sampling.max_new_tokens
        cache = max(round(cfg.overlong_buffer * max_len), 1)
        specs.append({"name": "overlong", "max_len": max_len, "cache": cache})
    task = task_of(cfg.data)
    if reward_model_dir(cfg) and task is not None and hasattr(task, "gold_score"):
        # Logged, not optimised: the hidden gold score next to the reward model's (overoptimisation).
        specs.append({"task": f"task:{task.name}", "weight": 0.0, "alias": "gold"})
    return specs


# --- models ---------------------------------------------------------------------------------------------


def linear_layers(model: torch.nn.Module) -> list[str]:
    """Full names of ``model``'s ``nn.Linear`` and transformers ``Conv1D`` modules except its output head
    (``get_output_embeddings()``): what ``target_modules: all-linear`` adapts (PEFT's
    ``_maybe_include_all_linear_layers`` keeps the same classes and drops the same head)."""
    from transformers.pytorch_utils import Conv1D

    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
    ]


def _short_names(names: list[str]) -> list[str]:
    """The last component of each module name, once each, in model order (``c_attn, c_proj, c_fc``)."""
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))


def lora_targets(model: torch.nn.Module, target_modules: list[str] | str) -> list[str] | str:
    """``target_modules`` for PEFT, checked against ``model``: a list entry matches a module named it or
    ending in ``.entry`` (PEFT's ``check_target_module_exists``). A list that matches nothing is a
    ConfigError naming the linear layers the model has, instead of PEFT's traceback."""
    if isinstance(target_modules, str):
        return target_modules
    names = [n for n, _ in model.named_modules() if n]
    matched = [t for t in target_modules if any(n == t or n.endswith("." + t) for n in names)]
    if not matched:
        raise ConfigError(
            f"config key 'lora.target_modules': {list(target_modules)} match no module of "
            f"{type(model).__name__}; its linear layers are {', '.join(_short_names(linear_layers(model)))} "
            "(or use all-linear)"
        )
    return list(target_modules)


def describe_adapters(model: torch.nn.Module, target_modules: list[str] | str) -> str:
    """One line naming the layers that got adapters, and the listed names that matched none."""
    from peft.tuners.lora import LoraLayer

    adapted = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    short = _short_names(adapted)
    line = f"lora: adapters on {', '.join(short)} ({len(adapted)} modules)"
    if not isinstance(target_modules, str):
        unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in adapted)]
        if unmatched:
            line += f"; {', '.join(unmatched)} matched nothing"
    return line


def load_policy(
    cfg: RLConfig, checkpoint: Path | None, log: Callable[[str], None] | None = None
) -> PreTrainedModel:
    """The policy: ``cfg.model`` (or ``checkpoint``), or under ``lora`` the base with PEFT adapters (fresh,
    or the checkpoint's), the adapted layers reported through ``log`` in one line.

    The PEFT model is returned as the model it wraps: it stands in for it everywhere (its forward,
    ``generate``, ``config`` and every other attribute reach the base model); :func:`peft_policy` gives
    it back as a ``PeftModel`` where the adapters themselves are used."""
    if cfg.lora is None:
        return load_causal_lm(str(checkpoint) if checkpoint else cfg.model)
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise ConfigError("config key 'lora': needs the peft package (pip install 'rlft[lora]')") from None
    say = log or (lambda msg: print(msg, file=sys.stderr))
    base = load_causal_lm(cfg.model)
    targets = cfg.lora.target_modules
    if checkpoint is not None:
        model = PeftModel.from_pretrained(base, str(checkpoint), is_trainable=True)
        say(describe_adapters(model, targets))
        return cast("PreTrainedModel", model)
    from transformers.pytorch_utils import Conv1D

    lora = LoraConfig(
        r=cfg.lora.r,
        # PEFT annotates lora_alpha as int, but only divides by it (scaling = lora_alpha / r): a float is
        # what the config takes, and what PEFT computes with.
        lora_alpha=cfg.lora.alpha,  # type: ignore[arg-type]
        lora_dropout=cfg.lora.dropout,
        target_modules=lora_targets(base, targets),
        # Conv1D (GPT-2) stores its weight transposed; PEFT would flip this per layer with a warning.
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in base.modules()),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(base, lora)
    except ValueError as err:  # e.g. a name that matches a module PEFT cannot adapt (a norm, a block)
        raise ConfigError(f"config key 'lora.target_modules': {str(err).splitlines()[0]}") from None
    say(describe_adapters(model, targets))
    return cast("PreTrainedModel", model)


def peft_policy(model: torch.nn.Module) -> PeftModel:
    """``model``, the policy :func:`load_policy` made under ``lora``, as the ``PeftModel`` it is."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(f"expected a policy with LoRA adapters (peft.PeftModel), got {type(model).__name__}")
    return model


def save_final(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out: Path,
    lora: bool,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """The trained policy as a plain Hugging Face model (``state_dict``: the whole of a sharded one)."""
    if lora:  # a plain HF model: adapters merged into the base weights
        model = peft_policy(model).merge_and_unload()
    save_pretrained_atomic(model, tokenizer, out, state_dict=state_dict)
