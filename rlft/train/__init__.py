"""Trainers. Each is one readable loop over the layers below (data, models, algos, run)."""

from rlft.train.common.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from rlft.train.common.schedule import warmup_cosine, warmup_cosine_scheduler
from rlft.train.online.config import CriticConfig, KLConfig, LoRAConfig, RLConfig
from rlft.train.online.loop import RLResult, train_rl
from rlft.train.online.rollout_batch import RolloutBatch
from rlft.train.preference.config import DPOConfig
from rlft.train.preference.loss import offline_loss
from rlft.train.preference.ref_cache import reference_logprob_sums
from rlft.train.preference.trainer import DPOResult, train_dpo
from rlft.train.reward.config import RMConfig
from rlft.train.reward.evaluation import evaluate_rm
from rlft.train.reward.loss import rm_loss
from rlft.train.reward.trainer import RMResult, train_rm
from rlft.train.sft.config import SFTConfig
from rlft.train.sft.trainer import (
    EvalSet,
    SFTResult,
    evaluate_sft,
    generation_metrics,
    load_eval_set,
    token_loss_sum,
    train_sft,
)

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
