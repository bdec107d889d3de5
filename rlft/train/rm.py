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
from rlft.models.scalar_head import set_pad_token_id
from rlft.run import MetricsWriter, Progress, RunDir, seed_everything

from .checkpoint import latest_checkpoint, save_checkpoint
from .epochs import (
    end_of_step,
    epoch_order,
    model_length_limits,
    position_state,
    start_training,
)
from .rm_config import RMConfig
from .rm_data import RankGroup, collate_groups, encode_groups, group_rewards
from .rm_eval import evaluate_rm, reward_stats
from .rm_loss import element_count, pair_stats, rm_loss
from .run_control import RunControl, owns_run

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
    return [s for g in encode_groups(records, tokenizer, model_length_limits(cfg, tokenizer)) for s in g.seqs][
        : cfg.norm_samples
    ]


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
    global_batch = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = len(train) // global_batch
    if steps_per_epoch == 0:
        raise DataError(
            f"{cfg.data}: {len(train)} training records, fewer than one step's batch_size × grad_accum = {global_batch}"
        )
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch

    checkpoint = latest_checkpoint(run) if resume else None
    model = load_reward_model(checkpoint)[0] if checkpoint else _initial_model(cfg, pad_id)
    training_mode(model, cfg.keep_dropout)
    optimizer, scheduler, params, step, epoch, batch_index = start_training(
        model, cfg, total_steps, checkpoint, run, say
    )

    def save(at_step: int) -> None:
        state = position_state(at_step, epoch, batch_index, cfg.seed, optimizer, scheduler)
        save_checkpoint(run, at_step, model, tokenizer, state)

    def evaluate() -> dict[str, float]:
        if not eval_groups:
            return {}
        return evaluate_rm(model, eval_groups, pad_id, loss_name, max(cfg.batch_size, 64), gold)

    metrics = MetricsWriter(run.root, resume_step=step if checkpoint else -1)
    control = RunControl(run, "rm", cfg.max_consecutive_skips, say)
    initial_eval: dict[str, float] = {}
    if step == 0 and eval_groups:
        initial_eval = evaluate()
        metrics.log(0, initial_eval)
    final_eval = dict(initial_eval)
    order = epoch_order(len(train), cfg.seed, epoch)
    start = time.monotonic()
    loss_value = math.nan
    progress = Progress(total_steps, desc="rm", unit="step", enabled=show_progress)
    progress.update(step)
    steps_run = 0
    with control:
        try:
            while step < total_steps:
                if batch_index == steps_per_epoch:  # next epoch: a new permutation
                    epoch, batch_index = epoch + 1, 0
                    order = epoch_order(len(train), cfg.seed, epoch)
                t0 = time.perf_counter()
                chunk = order[batch_index * global_batch : (batch_index + 1) * global_batch].tolist()
                micro = [
                    [train[j] for j in chunk[m * cfg.batch_size : (m + 1) * cfg.batch_size]]
                    for m in range(cfg.grad_accum)
                ]
                # Normalise by the elements of the WHOLE step (all micro-batches): Σ element losses / N.
                n_elements = sum(element_count(groups, loss_name) for groups in micro)
                lr = scheduler.get_last_lr()[0]
                optimizer.zero_grad(set_to_none=True)
                loss_sum, correct, gap, n_pairs, n_seqs = 0.0, 0.0, 0.0, 0, 0
                for groups in micro:
                    batch = collate_groups(groups, pad_id)
                    rewards = group_rewards(model, batch)
                    losses = rm_loss(
                        rewards,
                        batch["ranks"],
                        batch["valid"],
                        loss_name,
                        batch["margin"] if use_margin else None,
                        cfg.center_coef,
                    )
                    (losses.sum() / n_elements).backward()
                    loss_sum += float(losses.detach().sum())
                    c, g, n = pair_stats(rewards.detach(), batch["ranks"], batch["valid"])
                    correct, gap, n_pairs, n_seqs = (
                        correct + c,
                        gap + g,
                        n_pairs + n,
                        n_seqs + len(batch["input_ids"]),
                    )
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
                loss_value = loss_sum / n_elements
                control.step_optimizer(optimizer, step + 1, loss=loss_value, grad_norm=grad_norm)
                scheduler.step()
                step, batch_index, steps_run = step + 1, batch_index + 1, steps_run + 1
                elapsed = time.perf_counter() - t0
                if step % cfg.log_every == 0 or step == total_steps:
                    metrics.log(
                        step,
                        {
                            "loss": loss_value,
                            "accuracy": correct / max(n_pairs, 1),
                            "reward_gap": gap / max(n_pairs, 1),
                            "lr": lr,
                            "grad_norm": float(grad_norm),
                            "seqs_per_s": n_seqs / max(elapsed, 1e-9),
                            "epoch": epoch + batch_index / steps_per_epoch,
                            "skipped_steps": control.skipped,
                        },
                    )
                progress.update(1, loss=loss_value, acc=correct / max(n_pairs, 1))
                final_eval, stop = end_of_step(
                    cfg, step, total_steps, steps_run, stop_after, evaluate, save, metrics, final_eval, control
                )
                if stop:
                    break
        finally:
            progress.close()
            metrics.close()
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
