"""What every language-model trainer's loop does besides learning: hold the run directory, skip steps
with non-finite numbers, and stop cleanly on SIGTERM / Ctrl-C with a checkpoint.

A trainer is wrapped in :func:`owns_run` (by :func:`rlft.train.common.launch.lm_trainer`) and its loop
drives one :class:`RunControl` (held by :class:`rlft.train.common.bookkeeping.Bookkeeping`)::

    control = RunControl(run, "sft", cfg.max_consecutive_skips, say)
    with control:                                   # SIGTERM / SIGINT now only set a flag
        ...
        control.step_optimizer(optimizer, step + 1, loss=..., grad_norm=...)   # or skip the step
        ...
        control.stop_if_signalled(step, save, metrics, saved=...)   # checkpoint, then RunInterrupted
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Self, TypeVar

import torch

from rlft.run import MetricsWriter, RunDir, StepSkips, StopSignals
from rlft.run.distributed import max_over_ranks

__all__ = ["RunControl", "owns_run"]

F = TypeVar("F", bound=Callable[..., Any])


def owns_run(trainer: F) -> F:
    """Decorate a trainer taking a ``run`` argument: lock the run directory for the call (unless the
    command line already holds it), tidy the temporaries a killed run left, release it afterwards."""
    signature = inspect.signature(trainer)

    @functools.wraps(trainer)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        run: RunDir = signature.bind(*args, **kwargs).arguments["run"]
        acquired = not run.claimed
        run.claim()
        try:
            return trainer(*args, **kwargs)
        finally:
            if acquired:
                run.release()

    return wrapper  # type: ignore[return-value]


class RunControl:
    """Signals and the non-finite policy of one training loop (see the module docstring)."""

    def __init__(self, run: RunDir, command: str, max_consecutive_skips: int, say: Callable[[str], None]):
        self.run, self.command = run, command
        self.skips = StepSkips(max_consecutive_skips, say)
        self.signals = StopSignals()

    def __enter__(self) -> Self:
        self.signals.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.signals.__exit__(*exc)

    def step_optimizer(self, optimizer: torch.optim.Optimizer, step: int, **values: Any) -> bool:
        """``optimizer.step()`` when every value (loss, grad_norm, …) is finite; otherwise drop the
        gradients, count the skip (metric ``skipped_steps``) and return False. Raises
        :class:`~rlft.run.NonFiniteError` after ``max_consecutive_skips`` skips in a row."""
        if self.skips.check(step, **values):
            optimizer.step()
            return True
        optimizer.zero_grad(set_to_none=True)
        return False

    @property
    def skipped(self) -> int:
        return self.skips.total

    def stop_if_signalled(
        self, step: int, save: Callable[[int], Any], metrics: MetricsWriter, saved: bool = False
    ) -> None:
        """After a finished step: on a pending SIGTERM/SIGINT write the checkpoint (unless ``saved``
        already did at this step) and raise :class:`~rlft.run.RunInterrupted` saying how to resume."""
        # a signal caught by any rank stops every rank after the same step (torchrun forwards SIGTERM)
        self.signals.signum = max_over_ranks(self.signals.signum or 0) or None
        if not self.signals.requested:
            return
        metrics.flush()
        if not saved:
            save(step)
        where = self.run.checkpoints / f"step-{step}"
        raise self.signals.interrupted(
            f"checkpoint {where} written at step {step}; resume with: rlft {self.command} --resume {self.run.root}"
        )
