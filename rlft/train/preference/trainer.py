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

import dataclasses
from dataclasses import dataclass

from rlft.data.tasks import task_of
from rlft.models import load_causal_lm, training_mode
from rlft.models.device import place
from rlft.models.forward_path import plan_for, record_forward
from rlft.train.common.chat_stops import stop_at_end_of_turn
from rlft.train.common.epoch_loop import EpochsResult, StepResult, planned_steps, train_epochs
from rlft.train.common.epochs import model_length_limits, start_training
from rlft.train.common.launch import TrainerCall, chat_tokenizer, lm_trainer
from rlft.train.preference.config import DPOConfig
from rlft.train.preference.data import load_offline
from rlft.train.preference.evaluation import WinRate, evaluate_offline
from rlft.train.preference.loss import summarize
from rlft.train.preference.ref_cache import model_fingerprint
from rlft.train.preference.scoring import Reference, kto_baseline, micro_batch_loss

__all__ = ["DPOResult", "train_dpo"]


@dataclass
class DPOResult(EpochsResult):
    """What :func:`train_dpo` returns; ``train_loss`` is the mean loss of the last step."""


# --- the trainer --------------------------------------------------------------------------------------


@lm_trainer("dpo")
def train_dpo(cfg: DPOConfig, call: TrainerCall) -> DPOResult:
    """Optimise ``cfg.model`` with ``cfg.loss`` on ``cfg.data``; write metrics, checkpoints and ``run/model/``.
    Called as every LM trainer is (:class:`~rlft.train.common.launch.LMTrainer`)."""
    run, say = call.run, call.say

    # Data: malformed rows raise here, naming file, line and field.
    tokenizer, pad_id = chat_tokenizer(cfg)
    kind = cfg.data_format
    train = load_offline(cfg.data, kind, tokenizer, model_length_limits(cfg, tokenizer))
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
            eval_source,
            kind,
            tokenizer,
            model_length_limits(cfg, tokenizer),
            split="eval",
            limit=cfg.eval_samples,
        )
        say(f"eval data {eval_source}: {eval_data.report}")
    total_steps = planned_steps(cfg, len(train), "examples")

    # The reference: scores every sequence once (cached) or stays loaded to score each batch.
    task = task_of(eval_source) if eval_source else None
    win_rate = WinRate(task, tokenizer, cfg) if cfg.win_rate and hasattr(task, "win_rate") else None
    reference = None
    if cfg.needs_reference or win_rate is not None:
        ref_model = place(load_causal_lm(cfg.ref_model or cfg.model), call.device)
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

    checkpoint = call.resume_checkpoint()
    model = place(load_causal_lm(str(checkpoint) if checkpoint else cfg.model), call.device)
    # The forward path of every pass, decided once: said at start, written to RUN/forward.txt; the
    # config's `forward` option is resolved to the plan's choice for the passes that follow.
    plan = plan_for("dpo", model, cfg, reference=reference, sampling=win_rate is not None)
    say(record_forward(run, plan))
    cfg = dataclasses.replace(
        cfg, forward=plan.training_forward, share_prompts=cfg.share_prompts and not plan.sharded
    )
    if reference is not None:
        reference.follow(plan)
    stop_at_end_of_turn(model, tokenizer)
    training_mode(model, cfg.keep_dropout)
    training = start_training(call, cfg, model, tokenizer, total_steps, checkpoint)

    def evaluate() -> dict[str, float]:
        out: dict[str, float] = {}
        # every rank evaluates the whole eval set on the whole model; rank 0 logs it
        with training.parallel.gathered(model):
            if eval_data is not None:
                out |= evaluate_offline(model, eval_data, pad_id, cfg, reference)
            if win_rate is not None:
                out |= win_rate(model)
        return out

    step_examples = cfg.batch_size * cfg.grad_accum  # global: every rank's share together
    as_pass = training.parallel.run  # a pass that reads the head's weights directly (sharded: a root forward)

    def train_step(chunk: list[int]) -> StepResult:
        size = len(chunk) // cfg.grad_accum  # this rank's share of each micro-batch
        micro = [chunk[m * size : (m + 1) * size] for m in range(cfg.grad_accum)]
        z0 = None
        if kind == "unpaired":  # KTO's baseline over the whole step (all ranks), before any gradient
            z0 = as_pass(model, kto_baseline, model, train, chunk, pad_id, cfg, reference)
        losses, step_metrics = [], []
        for examples in micro:
            loss, mets = as_pass(model, micro_batch_loss, model, train, examples, pad_id, cfg, reference, z0)
            # Σ per-example losses / examples in the whole step: accumulation does not change the update
            (loss.sum() / step_examples).backward()
            losses.append(loss.detach())
            step_metrics.append(mets)
        summary = summarize(losses, step_metrics, over_ranks=True)
        if z0 is not None:
            summary["kl"] = float(z0)
        shown = {"loss": summary["loss"]}
        if "rewards/accuracies" in summary:
            shown["acc"] = summary["rewards/accuracies"]
        return StepResult(summary["loss"], summary, shown)

    outcome = train_epochs(call, training, len(train), train_step, evaluate=evaluate, desc=f"dpo/{cfg.loss}")
    if outcome.finished:
        training.save_model(outcome.model_dir)
    return DPOResult.of(outcome)
