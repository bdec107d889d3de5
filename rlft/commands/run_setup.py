"""The run directory and config of a training command: reopened with ``--resume``, else created fresh."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rlft.run import ConfigError, RunDir, load_config


def training_run(
    args: argparse.Namespace,
    extra: list[str],
    config_cls: type,
    prefix: str | Callable[[Any], str],
    base: dict[str, Any] | None = None,
    check: Callable[[Any], None] | None = None,
    occupied: str = "run directory {root} already holds a run; pass a new --out or --resume",
) -> tuple[RunDir, Any]:
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
