"""Offline preference optimisation: the DPO family (DPO, cDPO, robust DPO, IPO, hinge, SimPO, ORPO), KTO and
RRHF, as one loop read top to bottom.

    score every sequence of the data with the reference once (cached on disk), unless the loss has none
    for step in 1..max_steps:
        take the next batch_size × grad_accum examples of this epoch's shuffled order
        KTO: z₀ = max(0, mean over the step of log π_θ(y'|x) − log π_ref(y'|x)) on mismatched pairs
        for each micro-batch:
            ONE forward over all its sequences → Σ log π per sequence (a pair's prompt is computed once,
            its chosen and rejected completions attend to it; the head runs on completion positions only)
            per-example loss from rlft.algos.preference;  backward( Σ losses / examples in the step )
        clip the global gradient norm; AdamW step; LR: linear warm-up, then cosine decay
        log loss, rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected}; every
        eval_every: the same on held-out data and, on the preference task, the gold win rate against
        the reference; every save_every: checkpoint (exact resume, as in SFT)

Sequence log-probs are sums over completion tokens; IPO divides each side's log-ratio by its token
count (TRL's reading, confirmed by the IPO authors), SimPO and ORPO use the mean log-prob (no
reference), RRHF divides by |y|^α inside its loss. Implicit rewards: β·(log π_θ − log π_ref) for the
losses with a reference, β·mean log π for SimPO and ORPO.
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
from torch import Tensor

from rlft.algos import PREFERENCE_LOSSES, kto_kl_baseline
from rlft.data import DataError, LengthLimits
from rlft.models import SamplingParams, load_causal_lm, load_tokenizer, sample, save_pretrained_atomic
from rlft.models.sequence_logprobs import grouped_logprob_sums
from rlft.run import (
    MetricsWriter,
    Progress,
    RunDir,
    seed_everything,
)

from .checkpoint import latest_checkpoint, save_checkpoint
from .dpo_config import DPOConfig
from .dpo_data import OfflineData, load_offline
from .epochs import end_of_step, epoch_order, position_state, start_training
from .ref_cache import model_fingerprint, reference_logprob_sums
from .sft import task_of

__all__ = ["DPOResult", "WinRate", "offline_loss", "score_sequences", "train_dpo"]


@dataclass
class DPOResult:
    steps: int
    seconds: float
    train_loss: float  # mean loss of the last step
    initial_eval: dict[str, float]  # before training (empty when resumed or no eval data)
    final_eval: dict[str, float]
    model_dir: Path
    run_dir: Path


# --- losses: per-sequence log-probs → per-example losses and metrics ------------------------------------


def _nan_where(values: Tensor, keep: Tensor) -> Tensor:
    return torch.where(keep, values, torch.full_like(values, math.nan))


def offline_loss(
    cfg: DPOConfig,
    policy: Tensor,
    counts: Tensor,
    reference: Tensor | None = None,
    *,
    labels: Tensor | None = None,
    z0: Tensor | float | None = None,
    scores: Tensor | None = None,
    valid: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-example losses and per-example metrics (NaN where a metric does not apply) of one micro-batch.

    ``policy``, ``counts``, ``reference``: Σ log-probs, token counts and reference Σ log-probs of the
    batch's sequences in :meth:`OfflineData.rows` layout — preference: [chosen…, rejected…] (2B);
    unpaired: one per example, with ``labels`` (desirable?) and the batch's KL baseline ``z0``;
    ranked: (P, K) after reshaping by the caller, with ``scores`` and ``valid`` (P, K).
    """
    beta = cfg.beta_value
    fn = PREFERENCE_LOSSES.get(cfg.loss)
    counts = counts.to(policy.dtype).clamp(min=1)
    if cfg.loss == "rrhf":
        losses = fn(policy, counts, scores, cfg.rrhf_weight, cfg.length_penalty, valid)
        p = (policy / counts**cfg.length_penalty).detach()
        worse = (scores[:, :, None] < scores[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        right = (p[:, :, None] < p[:, None, :]) & worse
        pairs = worse.sum((-1, -2)).clamp(min=1)
        return losses, {"rank_accuracy": right.sum((-1, -2)) / pairs, "logps/mean": _masked_mean(p, valid)}
    if cfg.loss == "kto":
        logratio = policy - reference
        losses = fn(logratio, labels, z0, beta, cfg.desirable_weight, cfg.undesirable_weight)
        reward = beta * logratio.detach()
        good = labels.to(torch.bool)
        return losses, {
            "rewards/chosen": _nan_where(reward, good),
            "rewards/rejected": _nan_where(reward, ~good),
            "logps/chosen": _nan_where(policy.detach(), good),
            "logps/rejected": _nan_where(policy.detach(), ~good),
        }
    half = policy.shape[0] // 2
    chosen, rejected = policy[:half], policy[half:]
    n_chosen, n_rejected = counts[:half], counts[half:]
    if cfg.loss in ("simpo", "orpo"):
        avg_c, avg_r = chosen / n_chosen, rejected / n_rejected
        if cfg.loss == "simpo":
            losses = fn(avg_c, avg_r, beta, cfg.gamma)
        else:  # ORPO's L_SFT is the token-mean NLL of the chosen response
            losses = fn(avg_c, avg_r, -avg_c, beta)
        reward_c, reward_r = beta * avg_c.detach(), beta * avg_r.detach()
    else:
        lr_c, lr_r = chosen - reference[:half], rejected - reference[half:]
        if cfg.loss == "ipo":  # length-averaged log-ratios (TRL, with the IPO authors' agreement)
            losses = fn(lr_c / n_chosen, lr_r / n_rejected, beta)
        elif cfg.loss in ("cdpo", "robust"):
            losses = fn(lr_c, lr_r, beta, cfg.label_smoothing)
        else:
            losses = fn(lr_c, lr_r, beta)
        reward_c, reward_r = beta * lr_c.detach(), beta * lr_r.detach()
    return losses, {
        "rewards/chosen": reward_c,
        "rewards/rejected": reward_r,
        "rewards/margins": reward_c - reward_r,
        "rewards/accuracies": _accuracy(reward_c - reward_r),
        "logps/chosen": chosen.detach(),
        "logps/rejected": rejected.detach(),
    }


def _accuracy(margin: Tensor) -> Tensor:
    """1 where the chosen reward is higher, 0 where lower, ½ for a tie. Margins within 1e-5 are ties: the
    cached reference and the policy score a sequence in different batches, which moves sums by float
    rounding, and before any update every true margin is 0."""
    return torch.where(margin.abs() <= 1e-5, 0.5, (margin > 0).float())


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def summarize(losses: Sequence[Tensor], metrics: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    """Means over every example of a step (or an eval pass); NaN entries (metric n/a) are skipped."""
    out = {"loss": float(torch.cat([x.detach().reshape(-1) for x in losses]).mean())}
    for key in metrics[0] if metrics else ():
        values = torch.cat([m[key].reshape(-1).float() for m in metrics])
        values = values[~values.isnan()]
        if values.numel():
            out[key] = float(values.mean())
    if "rewards/chosen" in out and "rewards/rejected" in out and "rewards/margins" not in out:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]  # KTO: unpaired
    return out


# --- scoring ------------------------------------------------------------------------------------------


def score_sequences(
    model: Any, data: OfflineData, rows: Sequence[int], pad_id: int, cfg: DPOConfig
) -> tuple[Tensor, Tensor]:
    """Σ log π and token counts of ``data.sequences[rows]`` (in ``rows`` order) in ONE forward pass;
    sequences of the same example share their prompt, which the fused forward computes once
    (``rlft.models.sequence_logprobs.grouped_logprob_sums``). Differentiable."""
    owner = data.owners
    groups: dict[int, list[int]] = {}  # example → positions in `rows` of its sequences
    for pos, r in enumerate(rows):
        groups.setdefault(owner[r], []).append(pos)
    batch = [
        (data.sequences[rows[ps[0]]][0], [data.sequences[rows[p]][1] for p in ps]) for ps in groups.values()
    ]
    sums, counts = grouped_logprob_sums(
        model, batch, pad_id, bf16=cfg.bf16, forward=cfg.forward, share_prompt=cfg.share_prompt
    )
    order = torch.tensor([p for ps in groups.values() for p in ps])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return sums[inverse], counts[inverse]


class Reference:
    """Reference log-probs of a dataset's sequences: looked up in a precomputed tensor, or scored by the
    reference model on the fly (``precompute_ref: false``)."""

    def __init__(self, model: Any, pad_id: int, cfg: DPOConfig) -> None:
        self.model, self.pad_id, self.cfg = model, pad_id, cfg
        self.tables: dict[int, Tensor] = {}

    def precompute(self, data: OfflineData, log: Callable[[str], None], model_fp: str) -> None:
        self.tables[id(data)] = reference_logprob_sums(
            self.model,
            data.sequences,
            self.pad_id,
            cache_dir=self.cfg.ref_cache_dir,
            bf16=self.cfg.bf16,
            forward=self.cfg.forward,
            log=log,
            model_fp=model_fp,
        )

    def __call__(self, data: OfflineData, rows: Sequence[int]) -> Tensor:
        table = self.tables.get(id(data))
        if table is not None:
            return table[torch.as_tensor(list(rows))]
        with torch.no_grad():
            return score_sequences(self.model, data, rows, self.pad_id, self.cfg)[0]


def micro_batch_loss(
    model: Any,
    data: OfflineData,
    examples: Sequence[int],
    pad_id: int,
    cfg: DPOConfig,
    reference: Reference | None,
    z0: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-example losses and metrics of one micro-batch of ``examples`` (indices into ``data``)."""
    rows = data.rows(examples)
    policy, counts = score_sequences(model, data, rows, pad_id, cfg)
    ref = reference(data, rows) if reference is not None else None
    if data.kind == "unpaired":
        return offline_loss(cfg, policy, counts, ref, labels=data.label_tensor(examples), z0=z0)
    if data.kind == "ranked":
        scores, valid = data.score_tensors(examples)
        shape = scores.shape
        flat = valid.reshape(-1).nonzero()[:, 0]  # rows are the valid entries of (P, K_max), row-major
        grid_p = policy.new_zeros(shape[0] * shape[1]).index_put((flat,), policy).view(shape)
        grid_n = counts.new_ones(shape[0] * shape[1]).index_put((flat,), counts).view(shape)
        return offline_loss(cfg, grid_p, grid_n, scores=scores, valid=valid)
    return offline_loss(cfg, policy, counts, ref)


@torch.no_grad()
def kto_baseline(
    model: Any, data: OfflineData, examples: Sequence[int], pad_id: int, cfg: DPOConfig, reference: Reference
) -> Tensor:
    """z₀ over ``examples`` (a whole optimiser step): mean policy − reference log-ratio of the mismatched
    (prompt_i, completion_{i+1}) sequences, clamped at 0 and detached (KTO, arXiv 2402.01306)."""
    rows = data.mismatched_rows(examples)
    policy, _ = score_sequences(model, data, rows, pad_id, cfg)
    return kto_kl_baseline(policy - reference(data, rows))


# --- evaluation ---------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_offline(
    model: Any, data: OfflineData, pad_id: int, cfg: DPOConfig, reference: Reference | None
) -> dict[str, float]:
    """The training metrics on held-out data (``eval_`` prefixed), in micro-batches of ``batch_size``."""
    was_training = model.training
    model.eval()
    everything = list(range(len(data)))
    z0 = kto_baseline(model, data, everything, pad_id, cfg, reference) if data.kind == "unpaired" else None
    losses, metrics = [], []
    for lo in range(0, len(data), cfg.batch_size):
        loss, mets = micro_batch_loss(
            model, data, everything[lo : lo + cfg.batch_size], pad_id, cfg, reference, z0
        )
        losses.append(loss)
        metrics.append(mets)
    model.train(was_training)
    out = summarize(losses, metrics)
    if z0 is not None:
        out["kl"] = float(z0)
    return {f"eval_{k}": v for k, v in out.items()}


class WinRate:
    """Gold win rate of the policy against the reference on a task's held-out prompts.

    ``samples`` completions per prompt are drawn at temperature 1 from both models with the same seeds
    (common random numbers: before any update the two sets are identical and the win rate is exactly
    0.5, ties counting one half), and compared by the task's hidden gold score.
    """

    def __init__(self, task: Any, tokenizer: Any, cfg: DPOConfig) -> None:
        self.task, self.tokenizer = task, tokenizer
        base = list(task.prompts("eval"))
        self.prompts = [p for p in base for _ in range(cfg.win_rate_samples)]
        self.params = SamplingParams(
            max_new_tokens=cfg.win_rate_max_new_tokens, n=cfg.win_rate_samples, seed=cfg.seed + 7919
        )
        self.base_prompts = base
        self.reference_texts: list[str] = []
        self.reference_gold = math.nan

    def _texts(self, model: Any) -> list[str]:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            texts = sample(model, self.tokenizer, self.base_prompts, self.params).texts
        model.train(was_training)
        return texts

    def set_reference(self, model: Any) -> None:
        self.reference_texts = self._texts(model)
        gold = self.task.gold_score(self.prompts, self.reference_texts)
        self.reference_gold = sum(gold) / len(gold)

    def __call__(self, model: Any) -> dict[str, float]:
        texts = self._texts(model)
        gold = self.task.gold_score(self.prompts, texts)
        return {
            "eval_win_rate": self.task.win_rate(self.prompts, texts, self.reference_texts),
            "eval_gold_score": sum(gold) / len(gold),
            "eval_ref_gold_score": self.reference_gold,
            "eval_mean_words": sum(len(t.split()) for t in texts) / len(texts),
        }


# --- the trainer --------------------------------------------------------------------------------------


def length_limits(cfg: DPOConfig) -> LengthLimits:
    return LengthLimits(
        max_prompt_tokens=cfg.max_prompt_tokens,
        max_completion_tokens=cfg.max_completion_tokens,
        max_total_tokens=cfg.max_len,
        overflow=cfg.overflow,
    )


def train_dpo(
    cfg: DPOConfig,
    run: RunDir,
    resume: bool = False,
    show_progress: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> DPOResult:
    """Optimise ``cfg.model`` with ``cfg.loss`` on ``cfg.data``; write metrics, checkpoints and ``run/model/``.

    ``resume`` continues from the newest complete checkpoint in ``run``; ``stop_after`` ends the loop
    after that many optimiser steps without the final save, as a crash would (for testing resume).
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)

    # Data: malformed rows raise here, naming file, line and field.
    tokenizer = load_tokenizer(cfg.model)
    pad_id = int(tokenizer.pad_token_id)
    kind = cfg.data_format
    train = load_offline(cfg.data, kind, tokenizer, length_limits(cfg))
    say(f"train data {cfg.data} ({kind}): {train.report}")
    if kind == "unpaired":  # KTO's advice: λ_D·n_D / (λ_U·n_U) in [1, 4/3]
        n_good = sum(train.labels)
        ratio = cfg.desirable_weight * n_good / max(cfg.undesirable_weight * (len(train) - n_good), 1e-9)
        advice = "" if 1.0 <= ratio <= 4 / 3 else " (KTO suggests 1 to 4/3: adjust desirable_weight)"
        say(
            f"KTO: {n_good} desirable, {len(train) - n_good} undesirable; λ_D·n_D / (λ_U·n_U) = {ratio:.2f}{advice}"
        )
    eval_source = cfg.eval_data or (cfg.data if cfg.data.startswith("task:") else None)
    eval_data = None
    if eval_source is not None:
        eval_data = load_offline(
            eval_source, kind, tokenizer, length_limits(cfg), split="eval", limit=cfg.eval_samples
        )
        say(f"eval data {eval_source}: {eval_data.report}")
    global_batch = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = len(train) // global_batch  # the ragged tail of each epoch is dropped
    if steps_per_epoch == 0:
        raise DataError(
            f"{cfg.data}: {len(train)} training examples, fewer than one step's batch_size × grad_accum "
            f"= {global_batch}"
        )
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch

    # The reference: scores every sequence once (cached) or stays loaded to score each batch.
    task = task_of(eval_source) if eval_source else None
    win_rate = WinRate(task, tokenizer, cfg) if cfg.win_rate and hasattr(task, "win_rate") else None
    reference = None
    if cfg.needs_reference or win_rate is not None:
        ref_model = load_causal_lm(cfg.ref_model or cfg.model)
        ref_model.requires_grad_(False)
        if win_rate is not None:
            win_rate.set_reference(ref_model)
        if cfg.needs_reference:
            reference = Reference(ref_model, pad_id, cfg)
            if cfg.precompute_ref:
                fingerprint = model_fingerprint(ref_model)
                for data in (train, eval_data):
                    if data is not None:
                        reference.precompute(data, say, fingerprint)
                reference.model = None  # the tables are all that is needed now
        del ref_model

    checkpoint = latest_checkpoint(run) if resume else None
    model = load_causal_lm(str(checkpoint) if checkpoint else cfg.model)
    model.train()
    optimizer, scheduler, params, step, epoch, batch_index = start_training(
        model, cfg, total_steps, checkpoint, run, say
    )

    def save(at_step: int) -> None:
        state = position_state(at_step, epoch, batch_index, cfg.seed, optimizer, scheduler)
        save_checkpoint(run, at_step, model, tokenizer, state)

    def evaluate() -> dict[str, float]:
        out: dict[str, float] = {}
        if eval_data is not None:
            out |= evaluate_offline(model, eval_data, pad_id, cfg, reference)
        if win_rate is not None:
            out |= win_rate(model)
        return out

    metrics = MetricsWriter(run.root)
    initial_eval: dict[str, float] = {}
    if step == 0:
        initial_eval = evaluate()
        if initial_eval:
            metrics.log(0, initial_eval)
    final_eval = dict(initial_eval)
    order = epoch_order(len(train), cfg.seed, epoch)
    start = time.monotonic()
    summary: dict[str, float] = {"loss": math.nan}
    progress = Progress(total_steps, desc=f"dpo/{cfg.loss}", unit="step", enabled=show_progress)
    progress.update(step)
    steps_run = 0
    try:
        while step < total_steps:
            if batch_index == steps_per_epoch:  # next epoch: a new permutation
                epoch, batch_index = epoch + 1, 0
                order = epoch_order(len(train), cfg.seed, epoch)
            t0 = time.perf_counter()
            chunk = order[batch_index * global_batch : (batch_index + 1) * global_batch].tolist()
            micro = [chunk[m * cfg.batch_size : (m + 1) * cfg.batch_size] for m in range(cfg.grad_accum)]
            z0 = None
            if kind == "unpaired":  # KTO's baseline over the whole step, before any gradient
                z0 = kto_baseline(model, train, chunk, pad_id, cfg, reference)
            lr = scheduler.get_last_lr()[0]
            optimizer.zero_grad(set_to_none=True)
            losses, step_metrics = [], []
            for examples in micro:
                loss, mets = micro_batch_loss(model, train, examples, pad_id, cfg, reference, z0)
                # Σ per-example losses / examples in the whole step: accumulation does not change the update
                (loss.sum() / len(chunk)).backward()
                losses.append(loss.detach())
                step_metrics.append(mets)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            step, batch_index, steps_run = step + 1, batch_index + 1, steps_run + 1
            summary = summarize(losses, step_metrics)
            if z0 is not None:
                summary["kl"] = float(z0)
            elapsed = time.perf_counter() - t0
            if step % cfg.log_every == 0 or step == total_steps:
                extra = {"lr": lr, "grad_norm": float(grad_norm), "step_seconds": elapsed}
                metrics.log(step, {**summary, **extra, "epoch": epoch + batch_index / steps_per_epoch})
            shown = {"loss": summary["loss"]}
            if "rewards/accuracies" in summary:
                shown["acc"] = summary["rewards/accuracies"]
            progress.update(1, **shown)
            final_eval, stop = end_of_step(
                cfg, step, total_steps, steps_run, stop_after, evaluate, save, metrics, final_eval
            )
            if stop:
                break
    finally:
        progress.close()
        metrics.close()
    model_dir = run.root / "model"
    if step == total_steps:
        save_pretrained_atomic(model.eval(), tokenizer, model_dir)
    return DPOResult(
        steps=step,
        seconds=time.monotonic() - start,
        train_loss=summary["loss"],
        initial_eval=initial_eval,
        final_eval=final_eval,
        model_dir=model_dir,
        run_dir=run.root,
    )
