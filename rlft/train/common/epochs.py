"""Plumbing shared by the epoch-based trainers (SFT, reward model, DPO): the length limits of their
configs, the data order of each epoch, the optimiser and schedule of a run, and the part of a checkpoint that
says where training stands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlft.data import DataError, LengthLimits, context_length
from rlft.run import RunDir, capture_rng_state, restore_rng_state
from rlft.run.seeding import epoch_seed
from rlft.train.common.checkpoint import load_trainer_state, restore_optimizer
from rlft.train.common.optimizer import adamw
from rlft.train.common.run_control import RunControl
from rlft.train.common.schedule import warmup_cosine_scheduler

__all__ = [
    "end_of_step",
    "epoch_order",
    "length_limits",
    "model_length_limits",
    "position_state",
    "restore_position",
    "shuffle_seed",
    "start_training",
]


def length_limits(cfg: Any, context: int | None = None) -> LengthLimits:
    """The :class:`LengthLimits` of a trainer config with ``max_prompt_tokens``, ``max_completion_tokens``,
    ``max_len`` and ``overflow`` fields.

    ``context`` is the model's context length (``rlft.data.lengths.context_length``): the total is held to
    the tighter of it and ``max_len``, with the config's overflow policy, so a row longer than the model can
    read is truncated, dropped or refused before anything of its size is built."""
    limits = LengthLimits(
        max_prompt_tokens=cfg.max_prompt_tokens,
        max_completion_tokens=cfg.max_completion_tokens,
        max_total_tokens=cfg.max_len,
        overflow=cfg.overflow,
    )
    return limits.within(context)


def model_length_limits(cfg: Any, tokenizer: Any) -> LengthLimits:
    """:func:`length_limits` held to the context of ``cfg.model`` (read from its config.json)."""
    return length_limits(cfg, context_length(cfg.model, tokenizer))


def shuffle_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s data order: a fresh permutation every epoch, reproducible from (seed, epoch)."""
    return epoch_seed(seed, epoch)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed(seed, epoch)))


def position_state(
    step: int, epoch: int, batch_index: int, seed: int, optimizer: Any, scheduler: Any
) -> dict[str, Any]:
    """The trainer state of an epoch-based trainer's checkpoint (the model is saved beside it)."""
    return {
        "step": step,
        "epoch": epoch,
        "batch_index": batch_index,
        "shuffle_seed": shuffle_seed(seed, epoch),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
    }


def restore_position(
    checkpoint: Path, run: RunDir, seed: int, optimizer: Any, scheduler: Any, say: Callable[[str], None]
) -> tuple[int, int, int, dict[str, Any]]:
    """Load what :func:`position_state` saved into ``optimizer``, ``scheduler`` and the RNGs, trim the
    metrics to the checkpoint, and return (step, epoch, batch_index, the whole state dict) so a trainer
    can read its own extra keys."""
    state = load_trainer_state(checkpoint)
    restore_optimizer(optimizer, scheduler, state, checkpoint)
    restore_rng_state(state["rng"])
    step, epoch, batch_index = state["step"], state["epoch"], state["batch_index"]
    if state["shuffle_seed"] != shuffle_seed(seed, epoch):
        raise DataError(f"{checkpoint}: saved with a different seed than the config's seed={seed}")
    run.trim_metrics(step)
    say(f"resuming from {checkpoint} (step {step}, epoch {epoch}, batch {batch_index})")
    return step, epoch, batch_index, state


def start_training(
    model: Any, cfg: Any, total_steps: int, checkpoint: Path | None, run: RunDir, say: Callable[[str], None]
) -> tuple[torch.optim.Optimizer, Any, list[torch.nn.Parameter], int, int, int]:
    """The optimiser (:func:`adamw`) and warm-up + cosine schedule of an epoch-based trainer, restored from
    ``checkpoint`` when resuming. ``cfg`` supplies lr, weight_decay, warmup_steps, min_lr_ratio and seed.
    Returns (optimizer, scheduler, trained parameters, step, epoch, batch_index)."""
    optimizer = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = warmup_cosine_scheduler(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    step, epoch, batch_index = 0, 0, 0
    if checkpoint is not None:
        step, epoch, batch_index, _ = restore_position(checkpoint, run, cfg.seed, optimizer, scheduler, say)
    else:
        run.trim_metrics(None)  # rows of a run killed before its first checkpoint: it starts again
    return optimizer, scheduler, params, step, epoch, batch_index


def end_of_step(
    cfg: Any,
    step: int,
    total_steps: int,
    steps_run: int,
    stop_after: int | None,
    evaluate: Callable[[], dict[str, float]],
    save: Callable[[int], None],
    metrics: Any,
    last_eval: dict[str, float],
    control: RunControl,
) -> tuple[dict[str, float], bool]:
    """What follows every optimiser step: evaluate every ``cfg.eval_every`` steps and at the last one
    (logging the result), checkpoint every ``cfg.save_every`` steps and at the last one (TensorBoard
    flushed with it), and on a pending SIGTERM/SIGINT checkpoint and stop (:class:`RunControl`). Returns
    the latest evaluation and whether to stop now (``stop_after`` simulates a crash in the resume tests)."""
    if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
        last_eval = evaluate()
        if last_eval:
            metrics.log(step, last_eval)
    saved = bool(cfg.save_every) and (step % cfg.save_every == 0 or step == total_steps)
    if saved:
        metrics.flush()  # first: a complete checkpoint always has its TensorBoard events on disk
        save(step)
    control.stop_if_signalled(step, save, metrics, saved)
    return last_eval, stop_after is not None and steps_run >= stop_after and step < total_steps
