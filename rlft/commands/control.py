"""Classic-control commands: ``rlft control train`` and ``rlft control eval`` (gymnasium environments).

``rlft/cli.py`` calls :func:`add_control_commands`; ``rlft demo`` runs :func:`control_train` for its
CartPole stage. User errors are raised as ConfigError / UnknownNameError / EnvError (one line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlft.run import ConfigError

from .run_setup import training_run

__all__ = ["add_control_commands", "control_train"]

PLOT_KEYS = [
    "return_mean_window",
    "episode_return",
    "episode_length",
    "approx_kl",
    "clipfrac",
    "explained_variance",
    "entropy",
    "value_loss",
    "steps_per_second",
]


def control_train(args: argparse.Namespace, overrides: list[str]) -> int:
    """Train ``args.algo`` on ``args.env`` over its tuned preset (``--preset``), or continue ``--resume``;
    the run directory is named ``{args.prefix}ALGO-ENV-TIMESTAMP`` unless ``--out`` is given."""
    from rlft.control import CONTROL_ALGOS, ControlConfig, preset_for, train
    from rlft.run import plot_run, save_config

    preset_name, preset, cli = "from run directory", None, []
    if not args.resume:
        CONTROL_ALGOS.get(args.algo)
        preset_name, preset = preset_for(args.algo, args.env, args.preset)
        cli = [f"--algo={args.algo}", f"--env={args.env}"]
        if args.seed is not None:
            cli.append(f"--seed={args.seed}")
        if args.total_steps is not None:
            cli.append(f"--total_steps={args.total_steps}")
    run, cfg = training_run(
        args,
        [*cli, *overrides],
        ControlConfig,
        lambda c: f"{args.prefix}{c.algo}-{c.env}",
        base=preset,
        occupied="run directory {root} already holds a run (metrics.jsonl); continue it with "
        "--resume {root}, or pass a new --out",
    )
    try:
        save_config(cfg, run.config_path)
        print(
            f"rlft: {cfg.algo} on {cfg.env}, preset {preset_name}, seed {cfg.seed}, run dir {run.root}",
            file=sys.stderr,
        )
        result = train(cfg, run, show_progress=not args.no_progress, resume=bool(args.resume))
    finally:
        run.release()
    plot = plot_run(run.root, keys=PLOT_KEYS)
    solved = f", reached {cfg.target_return} at step {result.solved_at_step}" if result.solved_at_step else ""
    print(
        f"done: {result.steps} steps, {result.episodes} episodes in {result.seconds:.1f}s; "
        f"mean return (last {cfg.return_window}) {result.mean_return:.1f}{solved}\n"
        f"  metrics: {run.metrics_path}\n  curve:   {plot}\n"
        + (f"  policy:  {run.root / 'policy.safetensors'}" if cfg.save_policy else "")
    )
    return 0


def _control_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from rlft.control import evaluate

    if overrides:
        raise ConfigError(f"unexpected arguments: {' '.join(overrides)}")
    result = evaluate(
        args.run_dir, args.episodes, deterministic=not args.stochastic, seed=args.seed, video=args.video
    )
    mode = "stochastic" if args.stochastic else "deterministic"
    print(
        f"{args.episodes} {mode} episodes: return {result.mean:.1f} ± {result.std:.1f} "
        f"(min {min(result.returns):.1f}, max {max(result.returns):.1f})"
    )
    if args.video:
        print(f"video: {args.video}")
    return 0


def add_control_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``control train`` and ``control eval`` to the ``rlft`` subparsers."""
    control = sub.add_parser("control", help="classic control on gymnasium").add_subparsers(
        dest="action", required=True
    )
    train = control.add_parser(
        "train", help="train an agent; extra --key value pairs override the config", allow_abbrev=False
    )
    train.add_argument("--algo", default="ppo")
    train.add_argument("--env", default="CartPole-v1")
    train.add_argument("--config", type=Path, help="YAML config file")
    train.add_argument("--preset", default="auto", help="auto (tuned preset if any), none, or ALGO/ENV")
    train.add_argument("--seed", type=int)
    train.add_argument("--total-steps", type=int)
    train.add_argument("--out", help="run directory (default runs/ALGO-ENV-TIMESTAMP)")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=control_train, prefix="")

    ev = control.add_parser("eval", help="evaluate a trained policy", allow_abbrev=False)
    ev.add_argument("run_dir")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the mode")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--video", help="record the first episode to a .gif (or .mp4 with imageio-ffmpeg)")
    ev.set_defaults(func=_control_eval)
