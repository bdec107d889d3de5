"""Online RL commands: ``rlft rl`` (any preset or custom parts) and the GRPO and PPO stages of ``rlft demo``.

``rlft/cli.py`` calls :func:`add_rl_commands`; user errors are raised as ConfigError / DataError /
ModelError / RewardError and printed as one line by the CLI.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rlft.run import ConfigError

from .run_setup import training_run

__all__ = ["add_rl_commands", "ppo_demo_config", "ppo_demo_stage", "rl_demo_stage"]

# The demo: GRPO on the same arithmetic task (operands 0..20) the SFT stage of the demo trained on.
# 1200 steps of 16 prompts × 8 samples (estimated 1.5–2 minutes on 2 idle cores); max_minutes caps the
# training time on a slower or busy machine, where the run then ends early with fewer steps.
DEMO_OPERAND = 20
DEMO_STEPS = 1200
DEMO_MAX_MINUTES = 3.0
PLOT_KEYS = [
    "reward",
    "eval_accuracy",
    "eval_reward",
    "kl_ref",
    "entropy",
    "response_len_mean",
    "clipfrac_high",
    "tokens_per_s",
]
PPO_PLOT_KEYS = [
    "reward_reward_model",
    "reward_gold",
    "eval_gold_score",
    "kl_ref_seq",
    "kl_coef",
    "value_loss",
    "explained_variance",
    "entropy",
    "response_len_mean",
]
# The PPO demo: RLHF-PPO on `preference` from the demo's preference SFT model against its reward model.
PPO_DEMO = {
    "prompts_per_step": 8,
    "num_generations": 4,
    "max_new_tokens": 16,
    "lr": 3e-4,
    "max_steps": 60,
    "max_minutes": 0.75,
    "torch_threads": 1,  # the 1m model's matmuls are too small to split; a 2nd thread only spins on a busy CPU
}


def _print_presets() -> None:
    from rlft.train.rl_presets import PRESETS

    for name in sorted(PRESETS):
        parts = ", ".join(f"{k}={v}" for k, v in PRESETS[name].items())
        print(f"{name:22} {parts}")


def _pin_reward_files(run: Any, cfg: Any, resuming: bool) -> Any:
    """``cfg`` with its ``file.py:function`` rewards named by absolute path, their SHA-256 recorded in the
    run's reward_sources.json, so a resumed run scores with the same code whatever its current directory;
    on resume, a recorded file the run still uses that changed or is gone stops it (rlft.rewards.sources)."""
    import dataclasses
    import json

    from rlft.rewards import RewardError
    from rlft.rewards.sources import (
        REWARD_SOURCES,
        check_reward_sources,
        pin_reward_files,
        reward_files,
        reward_sources,
    )
    from rlft.run import atomic_write_json

    cfg = dataclasses.replace(cfg, rewards=pin_reward_files(cfg.rewards))
    record = run.root / REWARD_SOURCES
    if resuming and record.exists():
        try:
            stored = json.loads(record.read_text())
        except (OSError, ValueError) as err:
            raise RewardError(f"{record}: unreadable ({err}); expected the JSON list rlft rl wrote") from None
        check_reward_sources(stored, str(record), paths=[path for _, path in reward_files(cfg.rewards)])
    sources = reward_sources(cfg.rewards)
    if sources or record.exists():
        atomic_write_json(record, sources)
    return cfg


def _rl(args: argparse.Namespace, extra: list[str]) -> int:
    from rlft.run import plot_run, save_config
    from rlft.train import RLConfig, train_rl

    if args.presets:
        _print_presets()
        return 0
    if args.algorithm:
        extra = [f"--algorithm={args.algorithm}", *extra]
    if not args.resume and args.config is None and not extra:
        raise ConfigError("rl: give --config FILE (and/or --key value overrides); see rlft rl --presets")
    run, cfg = training_run(args, extra, RLConfig, lambda c: f"rl-{c.algorithm}")
    cfg = _pin_reward_files(run, cfg, resuming=bool(args.resume))
    save_config(cfg.resolved(), run.config_path)  # every preset value spelled out
    print(f"rlft rl: {cfg.model} on {cfg.data}, run dir {run.root}", file=sys.stderr)
    result = train_rl(cfg, run, resume=bool(args.resume), show_progress=not args.no_progress)
    from rlft.train.rl_advantages import needs_critic

    plot = plot_run(run, keys=PPO_PLOT_KEYS if needs_critic(cfg.resolved().advantage) else PLOT_KEYS)
    before = ", ".join(f"{k} {v:.4g}" for k, v in result.initial_eval.items())
    after = ", ".join(f"{k} {v:.4g}" for k, v in result.final_eval.items())
    print(
        f"done: {result.steps} steps in {result.seconds:.1f}s; last reward "
        f"{result.last_metrics.get('reward', float('nan')):.4g}"
        + (f"\n  before: {before}" if before else "")
        + (f"\n  after:  {after}" if after else "")
        + f"\n  model:   {result.model_dir}\n  metrics: {run.metrics_path}\n  curve:   {plot}"
    )
    return 0


def demo_config(sft_model_dir: str | Path, seed: int = 0, steps: int = DEMO_STEPS) -> Any:
    """The demo's GRPO config: the grpo preset (β = 0.04, ε = 0.2, seq-mean-token-mean) with settings
    tuned for the 1m tiny model after SFT. Sampling at τ = 0.7 sharpens toward the greedy answer, which
    is what held-out greedy accuracy measures: in runs of 600–2500 steps, τ = 1.0 gained about +8
    points and stalled, τ = 0.5 and 0.7 kept climbing (+25–29 points by 2000–2500 steps), 0.7 the
    steadier of the two. The learning rate decays to 0 (cosine): at a constant 1e-4 the greedy answers
    of a 16 × 8 batch policy still flip late in the run (one seed: 67% at step 900, 48% at 1200); with
    the decay the same run ends at 70%."""
    from rlft.train import RLConfig

    return RLConfig(
        model=str(sft_model_dir),
        data=f"task:arithmetic?max_operand={DEMO_OPERAND}&n=5000&seed={seed}",
        algorithm="grpo",
        prompts_per_step=16,
        num_generations=8,
        max_new_tokens=8,
        temperature=0.7,
        lr=1e-4,
        min_lr_ratio=0.0,
        max_steps=steps,
        max_minutes=DEMO_MAX_MINUTES,
        eval_every=max(steps // 4, 1),
        eval_samples=300,
        eval_max_new_tokens=8,
        seed=seed,
    )


def rl_demo_stage(
    out_root: str | Path,
    sft_model_dir: str | Path,
    seed: int = 0,
    show_progress: bool = True,
    steps: int = DEMO_STEPS,
) -> dict[str, Any]:
    """GRPO on ``arithmetic`` from the SFT model of the demo; prints greedy held-out accuracy before and
    after, and returns {"before", "after", "seconds", "steps", "model_dir", "run_dir", "plot"}."""
    from rlft.run import RunDir, plot_run, save_config
    from rlft.train import train_rl

    start = time.monotonic()
    cfg = demo_config(sft_model_dir, seed, steps)
    run = RunDir.create(Path(out_root) / "rl", prefix="rl")
    save_config(cfg.resolved(), run.config_path)
    result = train_rl(cfg, run, show_progress=show_progress)
    plot = plot_run(run, keys=PLOT_KEYS)
    before, after = result.initial_eval, result.final_eval
    print(
        f"\nGRPO on {cfg.data} from the SFT model ({result.steps} steps, {cfg.prompts_per_step} prompts × "
        f"{cfg.num_generations} samples per step)"
    )
    print(f"{'':24}{'before':>10}{'after':>10}")
    for key, name in (("eval_accuracy", "greedy acc"), ("eval_response_len", "response len")):
        print(f"{name:24}{before.get(key, float('nan')):>10.4f}{after.get(key, float('nan')):>10.4f}")
    seconds = time.monotonic() - start
    print(
        f"held-out prompts: {cfg.eval_samples} (eval split)   time: {seconds:.0f}s\n"
        f"  run dir:    {run.root}\n  GRPO model: {result.model_dir}\n  plot:       {plot}"
    )
    return {
        "before": before.get("eval_accuracy", float("nan")),
        "after": after.get("eval_accuracy", float("nan")),
        "seconds": seconds,
        "steps": result.steps,
        "model_dir": result.model_dir,
        "run_dir": run.root,
        "plot": plot,
    }


def add_rl_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``rl`` to the ``rlft`` subparsers."""
    rl = sub.add_parser(
        "rl",
        help="online RL (PPO, GRPO, DAPO, RLOO, …); extra --key value pairs override the config",
        allow_abbrev=False,
    )
    rl.add_argument("--config", type=Path, help="YAML config file (keys of RLConfig)")
    rl.add_argument("--algorithm", help="preset name (grpo, dapo, rloo, …) or custom; see --presets")
    rl.add_argument("--out", help="run directory (default: output_dir, else runs/rl-ALGO-TIMESTAMP)")
    rl.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    rl.add_argument("--presets", action="store_true", help="list the algorithm presets and exit")
    rl.add_argument("--no-progress", action="store_true")
    rl.set_defaults(func=_rl)


def ppo_demo_config(
    sft_model_dir: str | Path, reward_model_dir: str | Path, seed: int = 0, **overrides: Any
) -> Any:
    """The demo's PPO config: the ``ppo`` preset (k1 in the reward, GAE, whitened advantages, clipped value
    loss) with the critic initialised from the reward model, whose score is normalised with its saved
    statistics and clipped to ±5; ``overrides`` replace entries of :data:`PPO_DEMO`."""
    from rlft.train import RLConfig

    settings = {**PPO_DEMO, **overrides}
    settings.setdefault("eval_every", max(settings["max_steps"] // 3, 1))
    settings.setdefault("eval_max_new_tokens", settings["max_new_tokens"])
    return RLConfig(
        model=str(sft_model_dir),
        data=f"task:preference?seed={seed}",
        algorithm="ppo",
        reward_model=str(reward_model_dir),
        normalize_score=True,
        score_clip=5.0,
        eval_samples=32,
        seed=seed,
        **settings,
    )


def ppo_demo_stage(
    out_root: str | Path,
    sft_model_dir: str | Path,
    reward_model_dir: str | Path,
    seed: int = 0,
    show_progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """RLHF-PPO on ``preference`` from the SFT model against the reward model; prints the hidden gold score,
    the reward model's score and the KL to the SFT model before and after. Returns {"gold_before",
    "gold_after", "kl", "seconds", "steps", "model_dir", "run_dir", "plot"}."""
    from rlft.run import RunDir, plot_run, save_config
    from rlft.train import train_rl

    start = time.monotonic()
    cfg = ppo_demo_config(sft_model_dir, reward_model_dir, seed, **overrides)
    run = RunDir.create(Path(out_root) / "ppo", prefix="ppo")
    save_config(cfg.resolved(), run.config_path)
    result = train_rl(cfg, run, show_progress=show_progress, log=lambda _: None)
    plot = plot_run(run, keys=PPO_PLOT_KEYS)
    before, after = result.initial_eval, result.final_eval
    kl = result.last_metrics.get("kl_ref_seq", float("nan"))
    print(
        f"\nPPO (RLHF) on {cfg.data} from the SFT model against the reward model ({result.steps} steps, "
        f"{cfg.prompts_per_step} prompts × {cfg.num_generations} samples per step)"
    )
    print(f"{'held-out prompts, greedy':28}{'before':>10}{'after':>10}")
    for key, name in (
        ("eval_gold_score", "gold score (hidden)"),
        ("eval_reward", "reward-model score"),
        ("eval_mean_words", "words per completion"),
        ("eval_distinct_ratio", "distinct-word share"),
    ):
        print(f"{name:28}{before.get(key, float('nan')):>10.4f}{after.get(key, float('nan')):>10.4f}")
    sampled = [r["reward_gold"] for r in result.history if "reward_gold" in r]
    if sampled:  # the training samples (τ = 1): first step vs last step
        print(f"{'gold score, sampled (train)':28}{sampled[0]:>10.4f}{sampled[-1]:>10.4f}")
    seconds = time.monotonic() - start
    print(
        f"KL(policy ‖ SFT) per completion at the last step: {kl:.3f}   time: {seconds:.0f}s\n"
        f"  run dir:    {run.root}\n  PPO model:  {result.model_dir}\n  plot:       {plot}"
    )
    return {
        "gold_before": before.get("eval_gold_score", float("nan")),
        "gold_after": after.get("eval_gold_score", float("nan")),
        "sampled_gold_first": sampled[0] if sampled else float("nan"),
        "sampled_gold_last": sampled[-1] if sampled else float("nan"),
        "kl": kl,
        "seconds": seconds,
        "steps": result.steps,
        "model_dir": result.model_dir,
        "run_dir": run.root,
        "plot": plot,
    }
