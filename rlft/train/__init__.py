"""Trainers. Each is one readable loop over the layers below (data, models, algos, run)."""

from .checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from .dpo import DPOResult, train_dpo
from .dpo_config import DPOConfig
from .dpo_loss import offline_loss
from .ref_cache import reference_logprob_sums
from .rl import RLResult, train_rl
from .rl_config import CriticConfig, KLConfig, LoRAConfig, RLConfig
from .rm import RMResult, train_rm
from .rm_config import RMConfig
from .rm_eval import evaluate_rm
from .rm_loss import rm_loss
from .rollout_batch import RolloutBatch
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
    "CriticConfig",
    "DPOConfig",
    "DPOResult",
    "EvalSet",
    "KLConfig",
    "LoRAConfig",
    "RLConfig",
    "RLResult",
    "RMConfig",
    "RMResult",
    "RolloutBatch",
    "SFTConfig",
    "SFTResult",
    "evaluate_rm",
    "evaluate_sft",
    "generation_metrics",
    "latest_checkpoint",
    "load_eval_set",
    "load_trainer_state",
    "offline_loss",
    "reference_logprob_sums",
    "rm_loss",
    "save_checkpoint",
    "token_loss_sum",
    "train_dpo",
    "train_rl",
    "train_rm",
    "train_sft",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
