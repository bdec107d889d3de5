"""The training loop of the epoch-based trainers (SFT, reward model, DPO family), written once.

    for each optimiser step:
        chunk   ← the next batch_size × grad_accum example indices of this epoch's permutation
        step_fn(chunk)  → backward over its micro-batches, the step's loss and metrics   (the trainer's part)
        clip the gradient norm; step the optimiser unless loss or norm is non-finite      (RunControl)
        step the schedule; log; evaluate / checkpoint / stop on a signal                  (end_of_step)

Each trainer supplies only ``step_fn``: how its examples become a loss. The position (step, epoch, batch in
the epoch) lives in one :class:`Position` that the trainer's checkpoint closure reads, so a checkpoint
always records where the loop stands.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rlft.data import DataError
from rlft.run import MetricsWriter, Progress, RunDir
from rlft.train.common.epochs import end_of_step, epoch_order
from rlft.train.common.run_control import RunControl

__all__ = ["EpochsOutcome", "Position", "StepResult", "planned_steps", "train_epochs"]


@dataclass
class Position:
    """Where an epoch-based run stands: optimiser steps taken, the epoch, the next batch of the epoch."""

    step: int
    epoch: int
    batch_index: int


@dataclass
class StepResult:
    """What a trainer's ``step_fn`` reports for one optimiser step.

    ``counted``: (metric name, count) logged as a rate, count per second of the step (``tokens_per_s``);
    None logs the step's duration as ``step_seconds`` instead."""

    loss: float
    row: dict[str, float] = field(default_factory=dict)  # logged with the step's lr, grad_norm and epoch
    shown: dict[str, float] = field(default_factory=dict)  # the progress bar's postfix
    counted: tuple[str, float] | None = None


def planned_steps(cfg: Any, n_examples: int, unit: str = "examples") -> int:
    """Optimiser steps of the run: ``max_steps``, or ``epochs`` × the full steps in one pass over the data
    (the ragged tail of each epoch is dropped). Fewer examples than one step takes is a DataError."""
    global_batch = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = n_examples // global_batch
    if steps_per_epoch == 0:
        raise DataError(
            f"{cfg.data}: {n_examples} training {unit}, fewer than one step's batch_size × grad_accum "
            f"= {global_batch}"
        )
    return int(cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch)


@dataclass
class EpochsOutcome:
    last: StepResult | None  # the last step's result (None: no step ran)
    initial_eval: dict[str, float]  # before the first step (empty when resumed or without eval data)
    final_eval: dict[str, float]  # the latest evaluation


def train_epochs(
    run: RunDir,
    command: str,
    cfg: Any,
    pos: Position,
    resumed: bool,
    n_examples: int,
    total_steps: int,
    step_fn: Callable[[list[int]], StepResult],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    params: list[torch.nn.Parameter],
    evaluate: Callable[[], dict[str, float]],
    save: Callable[[int], None],
    say: Callable[[str], None],
    desc: str,
    show_progress: bool,
    stop_after: int | None,
) -> EpochsOutcome:
    """Run optimiser steps until ``total_steps`` (or ``stop_after`` steps, or a signal); ``pos`` advances
    in place. Metrics go to ``run`` (an evaluation at step 0 first, unless ``resumed``); ``command`` names
    the trainer in the resume line of a signal. ``cfg`` supplies batch_size, grad_accum, seed,
    max_grad_norm, log_every, eval_every, save_every and max_consecutive_skips. The ragged tail of each
    epoch (fewer than one step's examples) is not used."""
    metrics = MetricsWriter(run.root, resume_step=pos.step if resumed else -1)
    control = RunControl(run, command, cfg.max_consecutive_skips, say)
    initial_eval: dict[str, float] = {}
    if pos.step == 0:
        initial_eval = evaluate()
        if initial_eval:
            metrics.log(0, initial_eval)
    progress = Progress(total_steps, desc=desc, unit="step", enabled=show_progress)
    progress.update(pos.step)
    with control:
        try:
            last, final_eval = _steps(
                cfg, pos, n_examples, total_steps, step_fn, optimizer, scheduler, params, evaluate, save,
                metrics, progress, control, stop_after, dict(initial_eval),
            )  # fmt: skip
        finally:
            progress.close()
            metrics.close()
    return EpochsOutcome(last, initial_eval, final_eval)


def _steps(
    cfg: Any,
    pos: Position,
    n_examples: int,
    total_steps: int,
    step_fn: Callable[[list[int]], StepResult],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    params: list[torch.nn.Parameter],
    evaluate: Callable[[], dict[str, float]],
    save: Callable[[int], None],
    metrics: MetricsWriter,
    progress: Progress,
    control: RunControl,
    stop_after: int | None,
    last_eval: dict[str, float],
) -> tuple[StepResult | None, dict[str, float]]:
    global_batch = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = n_examples // global_batch
    order = epoch_order(n_examples, cfg.seed, pos.epoch)
    steps_run, result = 0, None
    while pos.step < total_steps:
        if pos.batch_index == steps_per_epoch:  # next epoch: a new permutation
            pos.epoch, pos.batch_index = pos.epoch + 1, 0
            order = epoch_order(n_examples, cfg.seed, pos.epoch)
        t0 = time.perf_counter()
        chunk = order[pos.batch_index * global_batch : (pos.batch_index + 1) * global_batch].tolist()
        lr = scheduler.get_last_lr()[0]
        optimizer.zero_grad(set_to_none=True)
        result = step_fn(chunk)
        # Clip the norm of the full gradient (inf: measure only) to tame early spikes.
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        control.step_optimizer(optimizer, pos.step + 1, loss=result.loss, grad_norm=grad_norm)
        scheduler.step()
        pos.step, pos.batch_index, steps_run = pos.step + 1, pos.batch_index + 1, steps_run + 1
        elapsed = time.perf_counter() - t0
        if pos.step % cfg.log_every == 0 or pos.step == total_steps:
            name, count = result.counted or ("step_seconds", None)
            metrics.log(
                pos.step,
                {
                    **result.row,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    name: elapsed if count is None else count / max(elapsed, 1e-9),
                    "epoch": pos.epoch + pos.batch_index / steps_per_epoch,
                    "skipped_steps": control.skipped,
                },
            )
        progress.update(1, **result.shown)
        last_eval, stop = end_of_step(
            cfg, pos.step, total_steps, steps_run, stop_after, evaluate, save, metrics, last_eval, control
        )
        if stop:
            break
    return result, last_eval
