"""The `rlft` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from safetensors import SafetensorError

from rlft.algos import UnknownNameError
from rlft.commands.control import add_control_commands, control_train
from rlft.commands.demo import lm_demo, parse_stages
from rlft.commands.dpo import add_dpo_commands
from rlft.commands.lm import add_lm_commands
from rlft.commands.pipeline import add_pipeline_commands
from rlft.commands.rewards import add_reward_commands
from rlft.commands.rl import add_rl_commands
from rlft.run import ConfigError, RunInterrupted
from rlft.run.distributed import PeerFailure, RankError, launched_world, session
from rlft.run.lock import release_all


def _demo(args: argparse.Namespace, overrides: list[str]) -> int:
    """The built-in end-to-end job: PPO on CartPole-v1, then the language-model stage (a tiny Llama
    built offline, SFT on the built-in arithmetic task, before/after table)."""
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
    code = control_train(ns, ["--target_return=475", *overrides])
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

    add_control_commands(sub)
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


# Commands that run on several ranks under torchrun; the others are single-process tools.
RANKED_COMMANDS = frozenset({"sft", "rm", "dpo", "rrhf", "rl"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    launched = launched_world()
    # An error every rank meets alike (a config key, a data file, rank 0's run directory) is printed
    # by rank 0 alone; the others only exit non-zero.
    quiet = not launched.main

    def fail(message: str, code: int, everywhere: bool = True) -> int:
        if not (quiet and everywhere):
            print(f"rlft: {message}", file=sys.stderr)
        return code

    try:
        if launched.size > 1 and args.command not in RANKED_COMMANDS:
            raise ConfigError(
                f"rlft {args.command} runs in one process; launch it without torchrun "
                f"(on several ranks: {', '.join(sorted(RANKED_COMMANDS))})"
            )
        command: Callable[[argparse.Namespace, list[str]], int] = args.func
        with session():
            return command(args, extra)
    except RunInterrupted as stop:  # SIGTERM / Ctrl-C during training: the checkpoint is written
        return fail(str(stop), stop.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (loading, evaluating): nothing to save
        return fail("interrupted", 130)
    except PeerFailure as err:  # this rank's collective broke off: the failing rank prints its own error
        return fail(f"error: {err}", 1, everywhere=False)
    except RankError as err:  # rank 0's error, already printed there
        return fail(f"error: {err}", 1)
    except (ConfigError, UnknownNameError, FileNotFoundError) as err:
        return fail(f"error: {err}", 2)
    except OSError as err:  # a full disk, a read-only directory: the OS's reason and the path
        where = f": {err.filename}" if err.filename else ""
        return fail(f"error: {err.strerror or err}{where}", 1, everywhere=False)
    except SafetensorError as err:  # safetensors' own wrapper of a failed write (e.g. a full disk)
        return fail(f"error: {err}", 1, everywhere=False)
    except ValueError as err:  # EnvError and friends: one line, no traceback
        if type(err).__module__.startswith("rlft"):
            return fail(f"error: {err}", 2)
        raise
    finally:
        release_all()  # the command's run directories (the process may run another command)


if __name__ == "__main__":
    sys.exit(main())
