"""The training loop of the epoch-based trainers (SFT, reward model, DPO family), written once.

    for each optimiser step:
        chunk   ← the next batch_size × grad_accum example indices of this epoch's permutation
        step_fn(chunk)  → backward over its micro-batches, the step's loss and metrics   (the trainer's part)
        clip the gradient norm; step the optimiser unless loss or norm is non-finite      (RunControl)
        step the schedule; log / evaluate / checkpoint / stop on a signal                (Bookkeeping)

Each trainer supplies only ``step_fn``: how its examples become a loss. The position (step, epoch, batch in
the epoch) lives in the :class:`~rlft.train.common.epochs.Position` of its
:class:`~rlft.train.common.epochs.EpochTraining`, which its checkpoints read, so a checkpoint always
records where the loop stands.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import torch

from rlft.data import DataError
from rlft.run import ConfigError
from rlft.run.distributed import rank_share, world
from rlft.train.common.bookkeeping import Bookkeeping
from rlft.train.common.epochs import EpochTraining, epoch_order
from rlft.train.common.launch import TrainerCall

__all__ = ["EpochsOutcome", "EpochsResult", "StepResult", "planned_steps", "train_epochs"]


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
    ranks = world().size
    if cfg.batch_size % ranks:
        raise ConfigError(
            f"config key 'batch_size': {cfg.batch_size} examples per micro-batch do not divide over {ranks} "
            f"ranks (batch sizes are global: each rank takes batch_size / {ranks})"
        )
    if steps_per_epoch == 0:
        raise DataError(
            f"{cfg.data}: {n_examples} training {unit}, fewer than one step's batch_size × grad_accum "
            f"= {global_batch}"
        )
    return int(cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch)


@dataclass
class EpochsOutcome:
    """How :func:`train_epochs` ended."""

    steps: int  # optimiser steps taken, those of a resumed checkpoint included
    finished: bool  # all planned steps taken: the trainer writes ``model_dir``
    last: StepResult | None  # the last step's result (None: no step ran)
    initial_eval: dict[str, float]  # before the first step (empty when resumed or without eval data)
    final_eval: dict[str, float]  # the latest evaluation
    model_dir: Path
    run_dir: Path
    started: float  # time.monotonic() when the loop was called


@dataclass
class EpochsResult:
    """What an epoch-based trainer returns; a trainer's own result type adds what is particular to it."""

    steps: int
    seconds: float  # the whole call: evaluations and the final save included
    train_loss: float  # mean loss of the last step (nan: no step ran)
    initial_eval: dict[str, float]  # before training (empty when resumed or without eval data)
    final_eval: dict[str, float]
    model_dir: Path
    run_dir: Path

    @classmethod
    def of(cls, outcome: EpochsOutcome, **extra: Any) -> Self:
        """The result of a run that ended with ``outcome``, timed until now."""
        return cls(
            steps=outcome.steps,
            seconds=time.monotonic() - outcome.started,
            train_loss=outcome.last.loss if outcome.last else math.nan,
            initial_eval=outcome.initial_eval,
            final_eval=outcome.final_eval,
            model_dir=outcome.model_dir,
            run_dir=outcome.run_dir,
            **extra,
        )


def train_epochs(
    call: TrainerCall,
    training: EpochTraining,
    n_examples: int,
    step_fn: Callable[[list[int]], StepResult],
    *,
    evaluate: Callable[[], dict[str, float]],
    desc: str,
) -> EpochsOutcome:
    """Run optimiser steps until ``training.total_steps`` (or ``call.stop_after`` steps, or a signal);
    ``training.pos`` advances in place. Metrics go to ``call.run``, an evaluation at step 0 first unless
    resumed. The ragged tail of each epoch (fewer than one step's examples) is not used.

    On several ranks ``step_fn`` gets this rank's share of the step's examples (:func:`rank_share`:
    ``grad_accum`` micro-batches of batch_size / ranks each) and must divide its losses by counts summed
    over ranks; the gradients are then summed over ranks before clipping, so the step is the one-rank
    step over the same global batch."""
    started, pos = time.monotonic(), training.pos
    book = Bookkeeping(
        call,
        training.cfg,
        training.total_steps,
        pos.step,
        training.resumed,
        evaluate,
        training.save,
        desc,
        eval_every=training.cfg.eval_every,
    )
    with book:
        last = _steps(training, n_examples, step_fn, book)
    return EpochsOutcome(
        steps=pos.step,
        finished=pos.step == training.total_steps,
        last=last,
        initial_eval=book.initial_eval,
        final_eval=book.last_eval,
        model_dir=call.run.root / "model",
        run_dir=call.run.root,
        started=started,
    )


def _steps(
    training: EpochTraining,
    n_examples: int,
    step_fn: Callable[[list[int]], StepResult],
    book: Bookkeeping,
) -> StepResult | None:
    cfg, pos, scheduler = training.cfg, training.pos, training.scheduler
    global_batch = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = n_examples // global_batch
    order = epoch_order(n_examples, cfg.seed, pos.epoch)
    result = None
    while pos.step < training.total_steps:
        if pos.batch_index == steps_per_epoch:  # next epoch: a new permutation
            pos.epoch, pos.batch_index = pos.epoch + 1, 0
            order = epoch_order(n_examples, cfg.seed, pos.epoch)
        t0 = time.perf_counter()
        chunk = order[pos.batch_index * global_batch : (pos.batch_index + 1) * global_batch].tolist()
        lr = scheduler.get_last_lr()[0]
        training.optimizer.zero_grad(set_to_none=True)
        result = step_fn(rank_share(chunk, cfg.grad_accum))
        training.parallel.finish_gradients(training.params)
        # Clip the norm of the full gradient (inf: measure only) to tame early spikes.
        grad_norm = training.parallel.norm(
            torch.nn.utils.clip_grad_norm_(training.params, cfg.max_grad_norm or float("inf"))
        )
        book.control.step_optimizer(training.optimizer, pos.step + 1, loss=result.loss, grad_norm=grad_norm)
        training.parallel.after_step()
        scheduler.step()
        pos.step, pos.batch_index = pos.step + 1, pos.batch_index + 1
        elapsed = time.perf_counter() - t0
        name, count = result.counted or ("step_seconds", None)
        row = {
            **result.row,
            "lr": lr,
            "grad_norm": float(grad_norm),
            name: elapsed if count is None else count / max(elapsed, 1e-9),
            "epoch": pos.epoch + pos.batch_index / steps_per_epoch,
            "skipped_steps": book.control.skipped,
        }
        if book.end_of_step(pos.step, row, result.shown, elapsed):
            break
    return result
