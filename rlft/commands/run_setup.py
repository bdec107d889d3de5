"""What the training commands share: their parser (``--config``, ``--out``, ``--resume``, ``--no-progress``),
the run directory and config (reopened with ``--resume``, else created fresh) and the closing summary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from rlft.run import ConfigError, RunDir, load_config, save_config
from rlft.run.distributed import is_main, main_only

if TYPE_CHECKING:
    from rlft.train.common.epoch_loop import EpochsResult

T = TypeVar("T")


def training_run(
    args: argparse.Namespace,
    extra: list[str],
    config_cls: type[T],
    prefix: str | Callable[[T], str],
    base: dict[str, Any] | None = None,
    check: Callable[[T], None] | None = None,
    occupied: str = "run directory {root} already holds a run; pass a new --out or --resume",
) -> tuple[RunDir, T]:
    """(run, config). ``--resume RUN_DIR`` reloads the run's saved config (plus ``--key value`` overrides);
    otherwise ``--config`` (over ``base``) is loaded, ``check``-ed, and a new run directory is created
    under ``--out`` or the config's ``output_dir`` (if it has one) — never one that already holds a run:
    that stops with ``occupied`` (``{root}``: the directory). The run directory is locked for this
    process (:meth:`RunDir.claim`).

    Under torchrun rank 0 alone creates, locks and checks the directory; every rank then opens the one
    rank 0 chose (a fresh timestamped name would differ between ranks), and a failure on rank 0 (a file in
    the way, a directory in use) stops every rank with the same message."""
    if args.resume:
        run = shared_run(lambda: RunDir.open(args.resume).claim())
        return run, load_config(config_cls, run.config_path, overrides=extra)
    cfg = load_config(config_cls, args.config, overrides=extra, base=base)
    if check is not None:
        check(cfg)
    out = args.out or getattr(cfg, "output_dir", None)

    def create() -> RunDir:
        run = RunDir.create(out, prefix=prefix(cfg) if callable(prefix) else prefix)
        run.claim()  # before anything is written: a second process on this --out stops here
        if run.metrics_path.exists() and run.metrics_path.stat().st_size:
            raise ConfigError(occupied.format(root=run.root))
        return run

    return shared_run(create), cfg


def shared_run(make: Callable[[], RunDir]) -> RunDir:
    """The run directory ``make()`` gives on rank 0 (which claims it), opened on every other rank."""
    made: list[RunDir] = []

    def on_main() -> str:
        made.append(make())
        return str(made[0].root)

    root = main_only(on_main)
    return made[0] if made else RunDir.open(root)


def save_run_config(cfg: Any, run: RunDir) -> None:
    """Write ``run/config.yaml`` (rank 0; every rank waits for it, so a failed write stops them all)."""
    main_only(lambda: save_config(cfg, run.config_path))


def announce(text: str) -> None:
    """A command's opening line on stderr, from rank 0 only."""
    if is_main():
        print(text, file=sys.stderr)


def no_extra(extra: list[str]) -> None:
    """Stop a command that takes no ``--key value`` overrides when some were given."""
    if extra:
        raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


def add_compute_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` of a command that runs a model outside a trainer (the trainers
    take the ``device`` and ``precision`` config keys)."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: a GPU when there is one)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: bfloat16 autocast")


def compute_of(args: argparse.Namespace) -> torch.device:
    """The device ``--device`` names (checked: a missing GPU is one line)."""
    from rlft.run.device import resolve_device

    return resolve_device(args.device)


def add_training_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    config_name: str,
    func: Callable[..., int],
) -> argparse.ArgumentParser:
    """The ``name`` subcommand of a trainer: ``--config`` (keys of ``config_name``), ``--out``, ``--resume``
    and ``--no-progress``, run by ``func``."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, allow_abbrev=False)
    p.add_argument("--config", type=Path, help=f"YAML config file (keys of {config_name})")
    p.add_argument("--out", help=f"run directory (default: output_dir, else runs/{name}-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="end after N steps without writing the final model, as a crash would (to try --resume)",
    )
    p.set_defaults(func=func)
    return p


def print_done(result: EpochsResult, run: RunDir, plot: Path, notes: str = "") -> None:
    """The closing summary of an epoch trainer's command (SFT, reward model, DPO family): steps, time, train
    loss, the final evals and ``notes``, then where the model, the metrics and the curve are."""
    evals = ", ".join(f"{k} {v:.4g}" for k, v in result.final_eval.items())
    print(
        f"done: {result.steps} steps in {result.seconds:.1f}s, train loss {result.train_loss:.4f}"
        + (f"; {evals}" if evals else "")
        + notes
        + f"\n  model:   {result.model_dir}\n  metrics: {run.metrics_path}\n  curve:   {plot}"
    )
