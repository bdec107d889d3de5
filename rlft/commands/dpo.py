"""Offline preference commands: ``dpo`` (DPO family and KTO) and ``rrhf``. The demo's DPO stage
(:func:`dpo_demo_stage`) is in ``demo.py``.

``rlft/cli.py`` calls :func:`add_dpo_commands`; each command's function takes ``(args, extra_overrides)``
and returns an exit code. User errors are raised as ConfigError / DataError / ModelError (one line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rlft.run import ConfigError

from .demo import DPO_PLOT_KEYS
from .run_setup import training_run

__all__ = ["add_dpo_commands"]


def _run_offline(args: argparse.Namespace, extra: list[str], loss: str | None) -> int:
    from rlft.run import plot_run, save_config
    from rlft.train import DPOConfig, train_dpo

    def check(cfg: Any) -> None:
        if loss and cfg.loss != loss:
            raise ConfigError(f"rlft {loss}: the config sets loss: {cfg.loss} (use 'rlft dpo' for it)")

    run, cfg = training_run(
        args, extra, DPOConfig, loss or "dpo", base={"loss": loss} if loss else None, check=check
    )
    save_config(cfg, run.config_path)
    print(f"rlft {cfg.loss}: {cfg.model} on {cfg.data}, run dir {run.root}", file=sys.stderr)
    result = train_dpo(cfg, run, resume=bool(args.resume), show_progress=not args.no_progress)
    plot = plot_run(run, keys=DPO_PLOT_KEYS)
    evals = ", ".join(f"{k} {v:.4g}" for k, v in result.final_eval.items())
    print(
        f"done: {result.steps} steps in {result.seconds:.1f}s, train loss {result.train_loss:.4f}"
        + (f"; {evals}" if evals else "")
        + f"\n  model:   {result.model_dir}\n  metrics: {run.metrics_path}\n  curve:   {plot}"
    )
    return 0


def _dpo(args: argparse.Namespace, extra: list[str]) -> int:
    return _run_offline(args, extra, None)


def _rrhf(args: argparse.Namespace, extra: list[str]) -> int:
    return _run_offline(args, extra, "rrhf")


def _add_run_parser(sub: argparse._SubParsersAction, name: str, help_text: str, func: Any) -> None:
    p = sub.add_parser(name, help=help_text, allow_abbrev=False)
    p.add_argument("--config", type=Path, help="YAML config file (keys of DPOConfig)")
    p.add_argument("--out", help=f"run directory (default: output_dir, else runs/{name}-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=func)


def add_dpo_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``dpo`` and ``rrhf`` to the ``rlft`` subparsers."""
    _add_run_parser(
        sub,
        "dpo",
        "offline preference optimisation (loss: sigmoid, cdpo, robust, ipo, hinge, simpo, orpo, kto, rrhf); "
        "extra --key value pairs override the config",
        _dpo,
    )
    _add_run_parser(
        sub, "rrhf", "RRHF on ranked responses; extra --key value pairs override the config", _rrhf
    )
