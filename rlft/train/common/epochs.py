"""Plumbing shared by the epoch-based trainers (SFT, reward model, DPO): the length limits of their
configs, the data order of each epoch, the optimiser and schedule of a run (:class:`EpochTraining`), and
the part of a checkpoint that says where training stands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlft.data import DataError, LengthLimits, context_length
from rlft.run import RunDir, capture_rng_state, restore_rng_state
from rlft.run.seeding import epoch_seed
from rlft.train.common.checkpoint import load_trainer_state, restore_optimizer, save_checkpoint
from rlft.train.common.launch import TrainerCall
from rlft.train.common.optimizer import adamw
from rlft.train.common.schedule import warmup_cosine_scheduler

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EpochTraining",
    "Position",
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


def model_length_limits(cfg: Any, tokenizer: PreTrainedTokenizerBase) -> LengthLimits:
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


@dataclass
class Position:
    """Where an epoch-based run stands: optimiser steps taken, the epoch, the next batch of the epoch."""

    step: int
    epoch: int
    batch_index: int


@dataclass
class EpochTraining:
    """What an epoch-based trainer trains with: the model and its tokenizer, the optimiser and schedule of
    ``total_steps`` steps, and the :class:`Position` the loop advances. ``cfg`` supplies the loop's
    settings (batch_size, grad_accum, seed, max_grad_norm, log_every, eval_every, save_every,
    max_consecutive_skips)."""

    cfg: Any
    run: RunDir
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[torch.nn.Parameter]  # what the gradient norm is clipped over
    total_steps: int
    pos: Position
    resumed: bool

    def save(self, step: int) -> None:
        """Checkpoint ``step``: the model, and the optimiser, schedule, RNGs and data position beside it."""
        pos, cfg = self.pos, self.cfg
        state = position_state(step, pos.epoch, pos.batch_index, cfg.seed, self.optimizer, self.scheduler)
        save_checkpoint(self.run, step, self.model, self.tokenizer, state)


def start_training(
    call: TrainerCall,
    cfg: Any,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    total_steps: int,
    checkpoint: Path | None,
) -> EpochTraining:
    """The optimiser (:func:`adamw`) and warm-up + cosine schedule of an epoch-based trainer, restored from
    ``checkpoint`` when resuming. ``cfg`` supplies lr, weight_decay, warmup_steps, min_lr_ratio and seed."""
    optimizer = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = warmup_cosine_scheduler(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    pos = Position(0, 0, 0)
    if checkpoint is not None:
        pos.step, pos.epoch, pos.batch_index, _ = restore_position(
            checkpoint, call.run, cfg.seed, optimizer, scheduler, call.say
        )
    else:
        call.run.trim_metrics(None)  # rows of a run killed before its first checkpoint: it starts again
    return EpochTraining(
        cfg,
        call.run,
        model,
        tokenizer,
        optimizer,
        scheduler,
        params,
        total_steps,
        pos,
        checkpoint is not None,
    )
