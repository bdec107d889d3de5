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
either loss is the same computation. Data order, checkpoints and exact resume follow ``sft.py``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlft.data import (
    DataError,
    PromptCompletionRecord,
    encode_sft,
    load_records,
    set_chat_template_kwargs,
)
from rlft.data.tasks import parse_task_source, task_of
from rlft.models import (
    load_reward_model,
    load_tokenizer,
    reward_model_from_causal_lm,
    save_reward_model,
    training_mode,
)
from rlft.models.forward_path import plan_for, record_forward
from rlft.models.scalar_head import set_pad_token_id
from rlft.run import RunDir, seed_everything
from rlft.train.common.checkpoint import latest_checkpoint, save_checkpoint
from rlft.train.common.epoch_loop import Position, StepResult, planned_steps, train_epochs
from rlft.train.common.epochs import (
    model_length_limits,
    position_state,
    start_training,
)
from rlft.train.common.run_control import owns_run
from rlft.train.reward.config import RMConfig
from rlft.train.reward.data import RankGroup, collate_groups, encode_groups, group_rewards
from rlft.train.reward.evaluation import evaluate_rm, reward_stats
from rlft.train.reward.loss import element_count, pair_stats, rm_loss

__all__ = ["RMResult", "train_rm"]


@dataclass
class RMResult:
    steps: int
    seconds: float
    train_loss: float
    initial_eval: dict[str, float]
    final_eval: dict[str, float]
    norm: dict[str, float]
    model_dir: Path
    run_dir: Path


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


def _load_eval(cfg: RMConfig, tokenizer: Any) -> tuple[list[RankGroup], list[list[float]] | None]:
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


def _norm_seqs(cfg: RMConfig, tokenizer: Any, train: Sequence[RankGroup]) -> list[list[int]]:
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


@owns_run
def train_rm(
    cfg: RMConfig,
    run: RunDir,
    resume: bool = False,
    show_progress: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> RMResult:
    """Train a reward model on ``cfg.data``; write metrics, checkpoints and ``run/model/`` (HF
    ``…ForSequenceClassification`` with the normalisation statistics). ``resume`` and ``stop_after`` as in
    :func:`rlft.train.train_sft`."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    cfg.validate()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)

    tokenizer = load_tokenizer(cfg.model)
    set_chat_template_kwargs(tokenizer, cfg.chat_template_kwargs)
    pad_id = int(tokenizer.pad_token_id)
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

    checkpoint = latest_checkpoint(run) if resume else None
    model = load_reward_model(checkpoint)[0] if checkpoint else _initial_model(cfg, pad_id)
    say(record_forward(run, plan_for("rm", model, cfg)))
    training_mode(model, cfg.keep_dropout)
    optimizer, scheduler, params, *position = start_training(model, cfg, total_steps, checkpoint, run, say)
    pos = Position(*position)

    def save(at_step: int) -> None:
        state = position_state(at_step, pos.epoch, pos.batch_index, cfg.seed, optimizer, scheduler)
        save_checkpoint(run, at_step, model, tokenizer, state)

    def evaluate() -> dict[str, float]:
        if not eval_groups:
            return {}
        return evaluate_rm(model, eval_groups, pad_id, loss_name, max(cfg.batch_size, 64), gold)

    def train_step(chunk: list[int]) -> StepResult:
        micro = [
            [train[j] for j in chunk[m * cfg.batch_size : (m + 1) * cfg.batch_size]]
            for m in range(cfg.grad_accum)
        ]
        # Normalise by the elements of the WHOLE step (all micro-batches): Σ element losses / N.
        n_elements = sum(element_count(groups, loss_name) for groups in micro)
        loss_sum, correct, gap, n_pairs, n_seqs = 0.0, 0.0, 0.0, 0, 0
        for groups in micro:
            batch = collate_groups(groups, pad_id)
            rewards = group_rewards(model, batch)
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
        loss_value, accuracy = loss_sum / n_elements, correct / max(n_pairs, 1)
        row = {"loss": loss_value, "accuracy": accuracy, "reward_gap": gap / max(n_pairs, 1)}
        return StepResult(
            loss_value, row, {"loss": loss_value, "acc": accuracy}, counted=("seqs_per_s", n_seqs)
        )

    start = time.monotonic()
    outcome = train_epochs(
        run, "rm", cfg, pos, checkpoint is not None, len(train), total_steps, train_step,
        optimizer=optimizer, scheduler=scheduler, params=params, evaluate=evaluate, save=save, say=say,
        desc="rm", show_progress=show_progress, stop_after=stop_after,
    )  # fmt: skip
    initial_eval, final_eval = outcome.initial_eval, outcome.final_eval
    step, loss_value = pos.step, outcome.last.loss if outcome.last else math.nan
    model_dir = run.root / "model"
    norm: dict[str, float] = {}
    if step == total_steps:
        norm = reward_stats(model, _norm_seqs(cfg, tokenizer, train), pad_id, max(cfg.batch_size, 64))
        save_reward_model(model.eval(), tokenizer, model_dir, norm=norm)
    return RMResult(
        steps=step,
        seconds=time.monotonic() - start,
        train_loss=loss_value,
        initial_eval=initial_eval,
        final_eval=final_eval,
        norm=norm,
        model_dir=model_dir,
        run_dir=run.root,
    )
