"""The `rlft` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError

from rlft.algos import UnknownNameError
from rlft.commands.dpo import add_dpo_commands
from rlft.commands.lm import add_lm_commands
from rlft.commands.pipeline import add_pipeline_commands
from rlft.commands.rewards import add_reward_commands
from rlft.commands.rl import add_rl_commands
from rlft.run import ConfigError, RunInterrupted
from rlft.run.lock import release_all


def _control_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from rlft.control import CONTROL_ALGOS, ControlConfig, preset_for, train
    from rlft.run import RunDir, load_config, plot_run, save_config

    if args.resume:
        run = RunDir.open(args.resume).claim()  # before reading anything a live trainer may be writing
    else:
        CONTROL_ALGOS.get(args.algo)
        preset_name, preset = preset_for(args.algo, args.env, args.preset)
        cli = [f"--algo={args.algo}", f"--env={args.env}"]
        if args.seed is not None:
            cli.append(f"--seed={args.seed}")
        if args.total_steps is not None:
            cli.append(f"--total_steps={args.total_steps}")
        cfg = load_config(ControlConfig, args.config, overrides=[*cli, *overrides], base=preset)
        run = RunDir.create(args.out, prefix=f"{args.prefix}{cfg.algo}-{cfg.env}").claim()
    try:
        if args.resume:
            cfg = load_config(ControlConfig, run.config_path, overrides=overrides)
            save_config(cfg, run.config_path)
            preset_name = "from run directory"
        else:
            if run.metrics_path.exists() and run.metrics_path.stat().st_size:
                raise ConfigError(
                    f"run directory {run.root} already holds a run (metrics.jsonl); continue it with "
                    f"--resume {run.root}, or pass a new --out"
                )
            save_config(cfg, run.config_path)
        print(
            f"rlft: {cfg.algo} on {cfg.env}, preset {preset_name}, seed {cfg.seed}, run dir {run.root}",
            file=sys.stderr,
        )
        result = train(cfg, run, show_progress=not args.no_progress, resume=bool(args.resume))
    finally:
        run.release()
    plot = plot_run(
        run.root,
        keys=[
            "return_mean_window",
            "episode_return",
            "episode_length",
            "approx_kl",
            "clipfrac",
            "explained_variance",
            "entropy",
            "value_loss",
            "steps_per_second",
        ],
    )
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


def _demo(args: argparse.Namespace, overrides: list[str]) -> int:
    """The built-in end-to-end job: PPO on CartPole-v1, then the language-model stage (a tiny Llama
    built offline, SFT on the built-in arithmetic task, before/after table)."""
    from rlft.commands.lm import lm_demo, parse_stages

    ns = argparse.Namespace(
        algo="ppo",
        env="CartPole-v1",
        config=None,
        preset="auto",
        seed=args.seed,
        total_steps=100_000,
        out=str(Path(args.out) / "control") if args.out else None,
        no_progress=args.no_progress,
        prefix="demo-",
        resume=None,
    )
    code = _control_train(ns, ["--target_return=475", *overrides])
    if code or args.control_only:
        return code
    out_root = Path(args.out) if args.out else Path("runs") / time.strftime("demo-lm-%Y%m%d-%H%M%S")
    return lm_demo(
        out_root / "lm" if args.out else out_root,
        seed=args.seed,
        show_progress=not args.no_progress,
        stages=parse_stages(args.stages),
    )


def _plot(args: argparse.Namespace, overrides: list[str]) -> int:
    from rlft.run import RunDir, plot_run

    run = RunDir.open(args.run_dir)
    keys = args.keys.split(",") if args.keys else None
    print(plot_run(run.root, keys=keys))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlft", description="Reinforcement-learning fine-tuning.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    train.set_defaults(func=_control_train, prefix="")

    ev = control.add_parser("eval", help="evaluate a trained policy", allow_abbrev=False)
    ev.add_argument("run_dir")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the mode")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--video", help="record the first episode to a .gif (or .mp4 with imageio-ffmpeg)")
    ev.set_defaults(func=_control_eval)

    demo = sub.add_parser(
        "demo",
        help="the built-in end-to-end job: PPO on CartPole-v1, then the language-model stages",
        allow_abbrev=False,
    )
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--out")
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--control-only", action="store_true", help="run only the CartPole stage")
    demo.add_argument(
        "--stages",
        default="sft,grpo,rm,dpo,ppo",
        help="language-model stages to run (comma-separated subset)",
    )
    demo.set_defaults(func=_demo)

    add_lm_commands(sub)
    add_reward_commands(sub)
    add_rl_commands(sub)
    add_dpo_commands(sub)
    add_pipeline_commands(sub)

    plot = sub.add_parser("plot", help="plot a run's metrics.jsonl to RUN_DIR/plots/metrics.png")
    plot.add_argument("run_dir")
    plot.add_argument("--keys", help="comma-separated metric names")
    plot.set_defaults(func=_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        return args.func(args, extra)
    except RunInterrupted as stop:  # SIGTERM / Ctrl-C during training: the checkpoint is written
        print(f"rlft: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (loading, evaluating): nothing to save
        print("rlft: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, UnknownNameError, FileNotFoundError) as err:
        print(f"rlft: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only directory: the OS's reason and the path
        where = f": {err.filename}" if err.filename else ""
        print(f"rlft: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except SafetensorError as err:  # safetensors' own wrapper of a failed write (e.g. a full disk)
        print(f"rlft: error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # EnvError and friends: one line, no traceback
        if type(err).__module__.startswith("rlft"):
            print(f"rlft: error: {err}", file=sys.stderr)
            return 2
        raise
    finally:
        release_all()  # the command's run directories (the process may run another command)


if __name__ == "__main__":
    sys.exit(main())
