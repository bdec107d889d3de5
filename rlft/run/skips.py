"""The non-finite policy of every trainer: a step whose loss, gradient or rewards are NaN or infinite is
skipped (no optimiser step, so the weights stay as they were), counted in the ``skipped_steps`` metric and
reported once per streak; ``max_consecutive`` skips in a row stop the run with one line, because a model
that keeps producing non-finite numbers has diverged and more steps will not bring it back."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["NonFiniteError", "StepSkips", "first_nonfinite", "first_nonfinite_tensor"]


class NonFiniteError(ValueError):
    """Too many consecutive steps had a non-finite loss, gradient or reward."""


def first_nonfinite(values: Mapping[str, Any]) -> str | None:
    """The name of the first value that is NaN or ±inf (tensors are reduced with ``.item()``), else None."""
    for name, value in values.items():
        if hasattr(value, "item"):
            value = value.item()
        if value is None or not math.isfinite(float(value)):
            return name
    return None


def first_nonfinite_tensor(tensors: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first floating tensor holding NaN or ±inf, else None: the check
    before any weights are written."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            return name, tensor.numel() - int(finite.sum()), tensor.numel()
    return None


class StepSkips:
    """Counts skipped steps. ``check(step, loss=..., grad_norm=...)`` → True when the step may be applied.

    A value of None counts as non-finite (e.g. a batch with no reward at all)."""

    def __init__(self, max_consecutive: int, say: Callable[[str], None]) -> None:
        self.max_consecutive = max_consecutive
        self.say = say
        self.total = 0
        self.consecutive = 0

    def check(self, step: int, **values: Any) -> bool:
        bad = first_nonfinite(values)
        if bad is None:
            if self.consecutive:
                self.say(f"step {step}: finite again after {self.consecutive} skipped step(s)")
            self.consecutive = 0
            return True
        self.total += 1
        self.consecutive += 1
        if self.consecutive == 1:
            value = values[bad]
            shown = float(value.item() if hasattr(value, "item") else value) if value is not None else None
            self.say(f"step {step}: {bad} is {shown}; step skipped (weights unchanged)")
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"step {step}: {self.consecutive} consecutive steps skipped for a non-finite {bad}; the run "
                "has diverged (lower lr, check the data and rewards) — the last checkpoint is intact; "
                "config key max_consecutive_skips sets the limit"
            )
        return False
