"""Offline preference commands: ``dpo`` (DPO family and KTO) and ``rrhf``. The demo's DPO stage
(:func:`dpo_demo_stage`) is in ``demo.py``.

``rlft/cli.py`` calls :func:`add_dpo_commands`; each command's function takes ``(args, extra_overrides)``
and returns an exit code. User errors are raised as ConfigError / DataError / ModelError (one line).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rlft.run import ConfigError
from rlft.run.distributed import is_main

from .demo import DPO_PLOT_KEYS
from .run_setup import add_training_parser, announce, print_done, save_run_config, training_run

if TYPE_CHECKING:
    from rlft.train import DPOConfig

__all__ = ["add_dpo_commands"]


def _run_offline(args: argparse.Namespace, extra: list[str], loss: str | None) -> int:
    from rlft.run import plot_run
    from rlft.train import DPOConfig, train_dpo

    def check(cfg: DPOConfig) -> None:
        if loss and cfg.loss != loss:
            raise ConfigError(f"rlft {loss}: the config sets loss: {cfg.loss} (use 'rlft dpo' for it)")

    run, cfg = training_run(
        args, extra, DPOConfig, loss or "dpo", base={"loss": loss} if loss else None, check=check
    )
    save_run_config(cfg, run)
    announce(f"rlft {cfg.loss}: {cfg.model} on {cfg.data}, run dir {run.root}")
    result = train_dpo(
        cfg, run, resume=bool(args.resume), show_progress=not args.no_progress, stop_after=args.stop_after
    )
    if is_main():
        print_done(result, run, plot_run(run, keys=DPO_PLOT_KEYS))
    return 0


def _dpo(args: argparse.Namespace, extra: list[str]) -> int:
    return _run_offline(args, extra, None)


def _rrhf(args: argparse.Namespace, extra: list[str]) -> int:
    return _run_offline(args, extra, "rrhf")


def add_dpo_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dpo`` and ``rrhf`` to the ``rlft`` subparsers."""
    add_training_parser(
        sub,
        "dpo",
        "offline preference optimisation (loss: sigmoid, cdpo, robust, ipo, hinge, simpo, orpo, kto, rrhf); "
        "extra --key value pairs override the config",
        "DPOConfig",
        _dpo,
    )
    add_training_parser(
        sub,
        "rrhf",
        "RRHF on ranked responses; extra --key value pairs override the config",
        "DPOConfig",
        _rrhf,
    )
