"""Trainers. Each is one readable loop over the layers below (data, models, algos, run)."""

from .checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from .schedule import warmup_cosine, warmup_cosine_scheduler
from .sft import (
    EvalSet,
    SFTResult,
    evaluate_sft,
    generation_metrics,
    load_eval_set,
    token_loss_sum,
    train_sft,
)
from .sft_config import SFTConfig

__all__ = [
    "EvalSet",
    "SFTConfig",
    "SFTResult",
    "evaluate_sft",
    "generation_metrics",
    "latest_checkpoint",
    "load_eval_set",
    "load_trainer_state",
    "save_checkpoint",
    "token_loss_sum",
    "train_sft",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
