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
from rlft.models import save_pretrained_atomic
from rlft.run import RunDir, capture_rng_state, restore_rng_state
from rlft.run.distributed import all_gather_objects, main_only, world
from rlft.run.seeding import epoch_seed
from rlft.train.common.checkpoint import load_trainer_state, restore_optimizer, save_checkpoint
from rlft.train.common.launch import TrainerCall
from rlft.train.common.optimizer import adamw
from rlft.train.common.parallel import DataParallel
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
    "restore_rng",
    "rng_state",
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
    step: int, epoch: int, batch_index: int, seed: int, optimizer: Any, scheduler: Any, sharded: bool = False
) -> dict[str, Any]:
    """The trainer state of an epoch-based trainer's checkpoint (the model is saved beside it). A collective
    on several ranks (each rank's RNG state is gathered); ``sharded``: the optimiser state is saved in the
    sharded part of the checkpoint instead."""
    state = {
        "step": step,
        "epoch": epoch,
        "batch_index": batch_index,
        "shuffle_seed": shuffle_seed(seed, epoch),
        "scheduler": scheduler.state_dict(),
        **rng_state(),
    }
    if not sharded:
        state["optimizer"] = optimizer.state_dict()
    return state


def rng_state() -> dict[str, Any]:
    """``rng``: this rank's RNG states, and on several ranks ``rank_rng``: every rank's, in rank order."""
    mine = capture_rng_state()
    every = all_gather_objects(mine)
    return {"rng": every[0], **({"rank_rng": every} if len(every) > 1 else {})}


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved: this rank's entry when the world size is the same, else
    rank 0's (a run resumed on another number of ranks continues, not bitwise)."""
    every = state.get("rank_rng") or [state["rng"]]
    w = world()
    restore_rng_state(every[w.rank] if len(every) == w.size else state["rng"])


def restore_position(
    checkpoint: Path, training: EpochTraining, say: Callable[[str], None]
) -> tuple[int, int, int, dict[str, Any]]:
    """Load what :func:`position_state` saved into the optimiser, schedule and RNGs of ``training``, trim
    the metrics to the checkpoint, and return (step, epoch, batch_index, the whole state dict) so a
    trainer can read its own extra keys."""
    run, seed, optimizer, scheduler = training.run, training.cfg.seed, training.optimizer, training.scheduler
    state = load_trainer_state(checkpoint)
    training.parallel.load_sharded(training.model, optimizer, state, checkpoint)
    restore_optimizer(optimizer, scheduler, state, checkpoint)
    restore_rng(state)
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
    parallel: DataParallel

    def save_model(self, out: Path, writer: Callable[..., Any] = save_pretrained_atomic) -> None:
        """Write the trained model (in eval mode) and tokenizer to ``out`` in Hugging Face format with
        ``writer(model, tokenizer, out, state_dict=...)``: rank 0 writes, every rank takes part in
        gathering a sharded model."""
        full = self.parallel.full_state_dict(self.model)
        main_only(lambda: writer(self.model.eval(), self.tokenizer, out, state_dict=full))

    def save(self, step: int) -> None:
        """Checkpoint ``step``: the model, and the optimiser, schedule, RNGs and data position beside it.
        Every rank calls it."""
        pos, cfg, sharded = self.pos, self.cfg, self.parallel.sharded
        state = position_state(
            step, pos.epoch, pos.batch_index, cfg.seed, self.optimizer, self.scheduler, sharded
        )
        save_checkpoint(self.run, step, self.model, self.tokenizer, state, self.parallel, self.optimizer)


def start_training(
    call: TrainerCall,
    cfg: Any,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    total_steps: int,
    checkpoint: Path | None,
) -> EpochTraining:
    """The optimiser (:func:`adamw`) and warm-up + cosine schedule of an epoch-based trainer, restored from
    ``checkpoint`` when resuming. ``cfg`` supplies lr, weight_decay, warmup_steps, min_lr_ratio and seed,
    and the data parallelism (``parallel``) the model (already on the run's device) is prepared for before
    the optimiser is built."""
    parallel = DataParallel.of(cfg)
    model = parallel.prepare(model)
    optimizer = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = warmup_cosine_scheduler(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    training = EpochTraining(
        cfg,
        call.run,
        model,
        tokenizer,
        optimizer,
        scheduler,
        params,
        total_steps,
        Position(0, 0, 0),
        checkpoint is not None,
        parallel,
    )
    pos = training.pos
    if checkpoint is not None:
        pos.step, pos.epoch, pos.batch_index, _ = restore_position(checkpoint, training, call.say)
    else:
        call.run.trim_metrics(None)  # rows of a run killed before its first checkpoint: it starts again
    return training
