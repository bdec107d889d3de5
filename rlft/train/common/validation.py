"""The checks every epoch-based trainer config (SFT, reward model, DPO family) shares: batching, length
limits, schedule and step counts. Each config's ``validate`` adds its own keys to these tables."""

from __future__ import annotations

from typing import Any

from rlft.data.lengths import OVERFLOW_MODES
from rlft.run import ConfigError
from rlft.run.config_types import check_ranges
from rlft.train.common.parallel import PARALLEL_MODES

__all__ = ["check_epoch_config"]

POSITIVE = ("eval_samples", "batch_size", "grad_accum", "log_every")
POSITIVE_OR_NULL = ("max_prompt_tokens", "max_completion_tokens", "max_len", "max_steps", "epochs")
AT_LEAST_ZERO = ("warmup_steps", "eval_every", "save_every", "torch_threads", "seed")
NUMBERS_AT_LEAST_ZERO = ("weight_decay", "max_grad_norm")


def check_epoch_config(
    cfg: Any, positive: tuple[str, ...] = (), numbers_at_least_zero: tuple[str, ...] = ()
) -> None:
    """The shared range checks plus ``positive`` / ``numbers_at_least_zero`` keys of the config itself;
    a one-line ConfigError names the first bad key."""
    check_ranges(
        cfg,
        positive=POSITIVE + positive,
        positive_or_null=POSITIVE_OR_NULL,
        at_least_zero=AT_LEAST_ZERO,
        numbers_at_least_zero=NUMBERS_AT_LEAST_ZERO + numbers_at_least_zero,
    )

    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"config key '{key}': expected {expected}, got {getattr(cfg, key)!r}")

    if cfg.parallel not in PARALLEL_MODES:
        raise bad("parallel", f"one of {', '.join(PARALLEL_MODES)}")
    if cfg.overflow not in OVERFLOW_MODES:
        raise bad("overflow", f"one of {', '.join(OVERFLOW_MODES)}")
    if cfg.lr <= 0:
        raise bad("lr", "a number > 0")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise bad("min_lr_ratio", "a number in [0, 1]")
    if cfg.max_steps is None and cfg.epochs is None:
        raise bad("max_steps", "a step count (or set epochs)")
