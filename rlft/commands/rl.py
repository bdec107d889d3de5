"""Online RL commands: ``rlft rl`` (any preset or custom parts). The GRPO and PPO stages of ``rlft demo``
(:func:`rl_demo_stage`, :func:`ppo_demo_stage`) are in ``demo.py``.

``rlft/cli.py`` calls :func:`add_rl_commands`; user errors are raised as ConfigError / DataError /
ModelError / RewardError and printed as one line by the CLI.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rlft.run import ConfigError
from rlft.run.distributed import is_main, main_only

from .demo import PPO_PLOT_KEYS, RL_PLOT_KEYS
from .run_setup import add_training_parser, announce, save_run_config, training_run

if TYPE_CHECKING:
    from rlft.run import RunDir
    from rlft.train import RLConfig

__all__ = ["add_rl_commands"]


def _print_presets() -> None:
    from rlft.train.online.presets import PRESETS

    for name in sorted(PRESETS):
        parts = ", ".join(f"{k}={v}" for k, v in PRESETS[name].items())
        print(f"{name:22} {parts}")


def _pin_reward_files(run: RunDir, cfg: RLConfig, resuming: bool) -> RLConfig:
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
        main_only(lambda: atomic_write_json(record, sources))
    return cfg


def _rl(args: argparse.Namespace, extra: list[str]) -> int:
    from rlft.run import plot_run
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
    save_run_config(cfg.resolved(), run)  # every preset value spelled out
    announce(f"rlft rl: {cfg.model} on {cfg.data}, run dir {run.root}")
    result = train_rl(
        cfg, run, resume=bool(args.resume), show_progress=not args.no_progress, stop_after=args.stop_after
    )
    if not is_main():
        return 0
    from rlft.train.online.config import preset_value
    from rlft.train.online.rollout import needs_critic

    advantage = preset_value(cfg.resolved().advantage, "advantage")
    plot = plot_run(run, keys=PPO_PLOT_KEYS if needs_critic(advantage) else RL_PLOT_KEYS)
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


def add_rl_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rl`` to the ``rlft`` subparsers."""
    rl = add_training_parser(
        sub,
        "rl",
        "online RL (PPO, GRPO, DAPO, RLOO, …); extra --key value pairs override the config",
        "RLConfig",
        _rl,
    )
    rl.add_argument("--algorithm", help="preset name (grpo, dapo, rloo, …) or custom; see --presets")
    rl.add_argument("--presets", action="store_true", help="list the algorithm presets and exit")
