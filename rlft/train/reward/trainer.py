"""Reward-model training: one loop, read top to bottom.

    model = SFT body + fresh scalar head (r = head(h_last))
    for step in 1..max_steps:
        take the next batch_size × grad_accum elements of this epoch's shuffled order
        for each micro-batch: score every response of every element ONCE (one padded forward)
            pairwise:  ℓ = −log σ(r_w − r_l − m) + η(r_w + r_l)²              one element per pair
            kwise:     ℓ = mean over the prompt's C(K,2) pairs of the same      one element per prompt
            backward( Σ ℓ / N )                                                 N = elements in the step
        clip the global grad norm; AdamW; LR warm-up then cosine
        log loss, pairwise accuracy, reward gap; every eval_every: held-out accuracy, gap, gold accuracy
    score a reference set → mean, std saved with the model (config.json ``rlft_reward_norm``)

The losses are ``rlft.algos.bradley_terry_loss`` and ``rlft.algos.kwise_ranking_loss``
(docs/algorithms.md §Reward-model losses).
InstructGPT's rule (arXiv 2203.02155) that a prompt's K responses are scored once and its pairs averaged
as one batch element is the ``kwise`` path; its centring term is generalised per pair, so K = 2 with
either loss is the same computation. Data order, checkpoints and exact resume are the shared epoch loop's
(``rlft/train/common/epoch_loop.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlft.data import (
    DataError,
    PromptCompletionRecord,
    encode_sft,
    load_records,
)
from rlft.data.tasks import parse_task_source, task_of
from rlft.models import (
    load_reward_model,
    reward_model_from_causal_lm,
    save_reward_model,
    training_mode,
)
from rlft.models.device import place
from rlft.models.forward_path import plan_for, record_forward
from rlft.models.scalar_head import set_pad_token_id
from rlft.run.distributed import sum_over_ranks
from rlft.train.common.epoch_loop import EpochsResult, StepResult, planned_steps, train_epochs
from rlft.train.common.epochs import model_length_limits, start_training
from rlft.train.common.launch import TrainerCall, chat_tokenizer, lm_trainer
from rlft.train.reward.config import RMConfig
from rlft.train.reward.data import RankGroup, collate_groups, encode_groups, group_rewards
from rlft.train.reward.evaluation import evaluate_rm, reward_stats
from rlft.train.reward.loss import element_count, pair_stats, rm_loss

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["RMResult", "train_rm"]


@dataclass
class RMResult(EpochsResult):
    """What :func:`train_rm` returns."""

    norm: dict[str, float]  # the saved model's reward mean and std (empty: the run did not finish)


# --- setup helpers ----------------------------------------------------------------------------------------


def _format(cfg: RMConfig, source: str) -> str | None:
    """The record format to read: ``format``, else detected from a file; a task gives ranked records when
    its source asks for ``k``/``score_noise`` (or the loss is kwise and it asks for neither kind), else pairs."""
    if cfg.format or not source.startswith("task:"):
        return cfg.format
    options = parse_task_source(source)[1]
    if {"k", "score_noise"} & set(options):
        return "ranked"
    if "label_noise" in options:
        return "preference"
    return "ranked" if cfg.loss == "kwise" else "preference"


def _loss_of(cfg: RMConfig, groups: Sequence[RankGroup]) -> str:
    if cfg.loss != "auto":
        return cfg.loss
    return "pairwise" if all(len(g.seqs) == 2 for g in groups) else "kwise"


def _load_eval(
    cfg: RMConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[RankGroup], list[list[float]] | None]:
    source = cfg.eval_data or (cfg.data if cfg.data.startswith("task:") else None)
    if source is None:
        return [], None
    records = load_records(source, fmt=_format(cfg, source), split="eval", limit=cfg.eval_samples)
    groups = encode_groups(records, tokenizer, model_length_limits(cfg, tokenizer))
    task = task_of(source)
    gold = None
    if task is not None and hasattr(task, "gold_score"):
        gold = [task.gold_score([g.prompt] * len(g.texts), g.texts) for g in groups]
    return groups, gold


def _norm_seqs(
    cfg: RMConfig, tokenizer: PreTrainedTokenizerBase, train: Sequence[RankGroup]
) -> list[list[int]]:
    """The reference responses for the saved mean/std: ``norm_data`` or the training data's responses."""
    if cfg.norm_data is None:
        seqs = [s for g in train for s in g.seqs]
        return seqs[: cfg.norm_samples]
    records = load_records(cfg.norm_data, limit=cfg.norm_samples)
    if isinstance(records[0], PromptCompletionRecord):
        return [e.input_ids for e in encode_sft(records, tokenizer, model_length_limits(cfg, tokenizer))]
    return [
        s for g in encode_groups(records, tokenizer, model_length_limits(cfg, tokenizer)) for s in g.seqs
    ][: cfg.norm_samples]


def _initial_model(cfg: RMConfig, pad_id: int) -> Any:
    """A reward model to continue, or an SFT causal LM that gets a fresh head; either way pooling on
    ``pad_id``, the id the batches are padded with and the saved tokenizer's pad token (so the saved model
    scores the same in ``transformers``: ``rlft.models.scalar_head.pooled_positions``)."""
    config_path = Path(cfg.model).expanduser() / "config.json"
    if config_path.is_file() and "ForSequenceClassification" in config_path.read_text():
        model = load_reward_model(cfg.model)[0]
        set_pad_token_id(model, pad_id)
        return model
    return reward_model_from_causal_lm(cfg.model, seed=cfg.seed, pad_token_id=pad_id)


# --- the trainer ------------------------------------------------------------------------------------------


@lm_trainer("rm")
def train_rm(cfg: RMConfig, call: TrainerCall) -> RMResult:
    """Train a reward model on ``cfg.data``; write metrics, checkpoints and ``run/model/`` (HF
    ``…ForSequenceClassification`` with the normalisation statistics). Called as every LM trainer is
    (:class:`~rlft.train.common.launch.LMTrainer`)."""
    run, say = call.run, call.say
    tokenizer, pad_id = chat_tokenizer(cfg)
    records = load_records(cfg.data, fmt=_format(cfg, cfg.data))
    train = encode_groups(records, tokenizer, model_length_limits(cfg, tokenizer))
    loss_name = _loss_of(cfg, train)
    if any(len(set(g.ranks)) < 2 for g in train):
        raise DataError(f"{cfg.data}: a record has no two responses of different rank")
    has_margin = any(g.margin is not None for g in train)
    use_margin = cfg.use_margin and has_margin and loss_name == "pairwise"
    say(
        f"train data {cfg.data}: {train.report}; {loss_name} loss{' with margins' if use_margin else ''}"
        + ("; margins ignored by the kwise loss" if has_margin and loss_name == "kwise" else "")
    )
    eval_groups, gold = _load_eval(cfg, tokenizer)
    if eval_groups:
        say(f"eval data: {len(eval_groups)} held-out records" + (" with gold scores" if gold else ""))
    total_steps = planned_steps(cfg, len(train), "records")

    checkpoint = call.resume_checkpoint()
    model = place(load_reward_model(checkpoint)[0] if checkpoint else _initial_model(cfg, pad_id), call.device)
    say(record_forward(run, plan_for("rm", model, cfg)))
    training_mode(model, cfg.keep_dropout)
    training = start_training(call, cfg, model, tokenizer, total_steps, checkpoint)

    def evaluate() -> dict[str, float]:
        if not eval_groups:
            return {}
        with training.parallel.gathered(model):  # every rank evaluates everything; rank 0 logs it
            return evaluate_rm(model, eval_groups, pad_id, loss_name, max(cfg.batch_size, 64), gold, cfg.bf16)

    def train_step(chunk: list[int]) -> StepResult:
        size = len(chunk) // cfg.grad_accum  # this rank's share of each micro-batch
        micro = [[train[j] for j in chunk[m * size : (m + 1) * size]] for m in range(cfg.grad_accum)]
        # Normalise by the elements of the WHOLE step (all micro-batches, all ranks): Σ element losses / N.
        (n_elements,) = sum_over_ranks(sum(element_count(groups, loss_name) for groups in micro))
        loss_sum, correct, gap, n_pairs, n_seqs = 0.0, 0.0, 0.0, 0, 0
        for groups in micro:
            batch = collate_groups(groups, pad_id)
            rewards = training.parallel.run(model, group_rewards, model, batch, cfg.bf16)
            margins = batch["margin"] if use_margin else None
            losses = rm_loss(rewards, batch["ranks"], batch["valid"], loss_name, margins, cfg.center_coef)
            (losses.sum() / n_elements).backward()
            loss_sum += float(losses.detach().sum())
            c, g, n = pair_stats(rewards.detach(), batch["ranks"], batch["valid"])
            correct, gap, n_pairs, n_seqs = (
                correct + c,
                gap + g,
                n_pairs + n,
                n_seqs + len(batch["input_ids"]),
            )
        loss_sum, correct, gap, pairs, seqs = sum_over_ranks(loss_sum, correct, gap, n_pairs, n_seqs)
        loss_value, accuracy = loss_sum / n_elements, correct / max(pairs, 1)
        row = {"loss": loss_value, "accuracy": accuracy, "reward_gap": gap / max(pairs, 1)}
        return StepResult(
            loss_value, row, {"loss": loss_value, "acc": accuracy}, counted=("seqs_per_s", seqs)
        )

    outcome = train_epochs(call, training, len(train), train_step, evaluate=evaluate, desc="rm")
    norm: dict[str, float] = {}
    if outcome.finished:
        with training.parallel.gathered(model):
            norm = reward_stats(model, _norm_seqs(cfg, tokenizer, train), pad_id, max(cfg.batch_size, 64))
        training.save_model(outcome.model_dir, functools.partial(save_reward_model, norm=norm))
    return RMResult.of(outcome, norm=norm)
