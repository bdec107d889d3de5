"""What the training commands share: their parser (``--config``, ``--out``, ``--resume``, ``--no-progress``),
the run directory and config (reopened with ``--resume``, else created fresh) and the closing summary."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rlft.run import ConfigError, RunDir, load_config

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
    process (:meth:`RunDir.claim`)."""
    if args.resume:
        run = RunDir.open(args.resume).claim()
        return run, load_config(config_cls, run.config_path, overrides=extra)
    cfg = load_config(config_cls, args.config, overrides=extra, base=base)
    if check is not None:
        check(cfg)
    out = args.out or getattr(cfg, "output_dir", None)
    run = RunDir.create(out, prefix=prefix(cfg) if callable(prefix) else prefix)
    run.claim()  # before anything is written: a second process on this --out stops here
    if run.metrics_path.exists() and run.metrics_path.stat().st_size:
        raise ConfigError(occupied.format(root=run.root))
    return run, cfg


def no_extra(extra: list[str]) -> None:
    """Stop a command that takes no ``--key value`` overrides when some were given."""
    if extra:
        raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


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
