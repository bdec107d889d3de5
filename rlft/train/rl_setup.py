"""Set-up of an online RL run, the parts around the loop: the one-paragraph description of the algorithm
printed at start (:func:`describe_algorithm`), the reward specs it optimises (:func:`reward_specs`), the
policy (plain or with LoRA adapters, :func:`load_policy`), the reference model's log-probs
(:class:`Reference`) and the final save with adapters merged (:func:`save_final`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlft.algos import ADVANTAGES
from rlft.models import load_causal_lm, save_pretrained_atomic
from rlft.models.frozen_forward import FrozenForward, packed_reference
from rlft.run import ConfigError

from .rl_advantages import needs_critic
from .rl_config import RLConfig
from .rl_critic import reward_model_dir
from .rl_logprobs import batch_logprobs
from .rl_update import LossSettings
from .rollout_batch import RolloutBatch
from .sft import task_of

__all__ = ["Reference", "describe_algorithm", "load_policy", "reward_specs", "save_final"]


def describe_algorithm(cfg: RLConfig) -> str:
    """One paragraph naming the parts and numbers the run uses (printed at start)."""
    r = cfg.resolved()
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
        f"G={r.num_generations} × {r.prompts_per_step} prompts, ≤{r.max_new_tokens} tokens at τ={r.temperature:g}",
        f"μ={r.ppo_epochs} × {r.num_minibatches} mini-batch(es)",
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
        if r.advantage in ADVANTAGES and needs_critic(r.advantage)
        else "",
        f"ptx {r.ptx_coef:g}·NLL({r.ptx_data})" if r.ptx_coef else "",
        f"lr={r.lr:g}",
    ]
    changed = cfg.preset_overrides()
    note = f"; changed from the preset: {changed}" if changed else ""
    return f"algorithm {r.algorithm}: " + ", ".join(p for p in parts if p) + note


def reward_specs(cfg: RLConfig) -> list[Any]:
    """The reward specs of a run: ``rewards``, or the task's own reward for a built-in task; plus DAPO's
    overlong punishment when ``overlong_buffer`` > 0."""
    specs = list(cfg.rewards)
    if cfg.reward_model:
        specs.append({"reward_model": cfg.reward_model, "normalize": cfg.normalize_score})
    if not specs:
        task = task_of(cfg.data)
        if task is None:
            raise ConfigError(
                "config key 'rewards': expected at least one reward spec (the data is not a built-in task "
                "with its own reward), e.g. rewards: [exact_match]"
            )
        specs = [f"task:{task.name}"]
    if cfg.overlong_buffer:
        cache = max(round(cfg.overlong_buffer * cfg.max_new_tokens), 1)
        specs.append({"name": "overlong", "max_len": cfg.max_new_tokens, "cache": cache})
    task = task_of(cfg.data)
    if reward_model_dir(cfg) and task is not None and hasattr(task, "gold_score"):
        # Logged, not optimised: the hidden gold score next to the reward model's (overoptimisation).
        specs.append({"task": f"task:{task.name}", "weight": 0.0, "alias": "gold"})
    return specs


# --- models ---------------------------------------------------------------------------------------------


def load_policy(cfg: RLConfig, checkpoint: Path | None) -> torch.nn.Module:
    if cfg.lora is None:
        return load_causal_lm(str(checkpoint) if checkpoint else cfg.model)
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise ConfigError("config key 'lora': needs the peft package (pip install 'rlft[lora]')") from None
    base = load_causal_lm(cfg.model)
    if checkpoint is not None:
        return PeftModel.from_pretrained(base, str(checkpoint), is_trainable=True)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora)


class Reference:
    """log π_ref of rollout tokens: a frozen copy of the start model, or the policy with adapters off."""

    def __init__(self, cfg: RLConfig, policy: torch.nn.Module):
        self.policy = policy
        self.model = None
        self.frozen: FrozenForward | None = None  # the reference never changes: fused weights packed once
        if cfg.lora is None or cfg.ref_model is not None:
            self.model = load_causal_lm(cfg.ref_model or cfg.model)
            self.model.requires_grad_(False)
            self.frozen = packed_reference(self.model, cfg.forward, cfg.bf16_autocast)

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, s: LossSettings, micro: int | None) -> torch.Tensor:
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
        for chunk in torch.arange(len(batch)).split(micro or len(batch)):
            mb = batch.select(chunk).trimmed()
            kwargs = {
                "bf16_autocast": s.bf16_autocast,
                "share_prompts": s.share_prompts,
                "forward": s.forward,
            }
            if self.model is not None:
                logp, _ = batch_logprobs(
                    self.model, mb, mb.response_mask, s.temperature, frozen=self.frozen, **kwargs
                )
            else:
                with self.policy.disable_adapter():
                    logp, _ = batch_logprobs(self.policy, mb, mb.response_mask, s.temperature, **kwargs)
            out[chunk, : logp.shape[1]] = logp
        return out


def save_final(model: torch.nn.Module, tokenizer: Any, out: Path, lora: bool) -> None:
    if lora:  # a plain HF model: adapters merged into the base weights
        model = model.merge_and_unload()
    save_pretrained_atomic(model, tokenizer, out)
