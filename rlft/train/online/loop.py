"""Online RL of a causal LM — one loop for the whole critic-free family (and, with a critic, PPO):

    for step in 1..max_steps:
        sample   G completions for each of sampling.prompts_per_step prompts                  (rollout.py)
                 [DAPO: drop groups with all-equal rewards, sample more rounds; ReMax: + a greedy decode]
        score    r = Σ_f w_f r_f(prompt, completion)                                (rollout.py, rlft.rewards)
        ref      log π_old (when the policy moves before a loss is taken) and log π_ref (β > 0)  (update.py)
        estimate Â = ADVANTAGES[advantage](…)          KL in the reward: r_t −= β·k(π_old, π_ref)  (rollout.py)
        optimise μ passes × num_minibatches optimiser steps of
                 POLICY_LOSSES[policy_loss](logp, logp_old, Â) + β·k(π_θ, π_ref) − c·H         (update.py)
        adapt β (adaptive controller); log; evaluate every eval.every; checkpoint every save_every

PPO (RLHF, the ``ppo`` preset) is the same loop with a critic (``critic.py``): V(s_t) joins the ref stage,
GAE(γ, λ) over the KL-shaped per-token rewards is the estimator, the optimise stage also takes clipped
value-loss steps, and PPO-ptx adds ptx.coef·NLL of SFT/pretraining batches (``ptx.py``).

Each named part is a function in a registry of ``rlft.algos``; the presets (``presets.py``) only pick
names and numbers. The rollout travels between stages as one :class:`RolloutBatch`.

Exact resume: a step's sampling seed, mini-batch order and data position are functions of (seed, step)
and the saved stream position; with the weights, optimiser, scheduler, RNG, KL coefficient and estimator
state (REINFORCE baseline, DCPO's per-prompt statistics) restored, a resumed run on CPU computes the same
weights as an uninterrupted one.

Data parallel (torchrun): every rank takes the same prompts from the stream and samples, scores and scores
again (π_old, π_ref, V_old) only its shards of them (``sampling.rollout_shards``: one process sampling every
shard draws the same completions); the rows are then gathered, so that the estimate stage sees the whole
step on every rank, and each rank trains on its own rows with the whole mini-batch's normalisers, the
gradients summed over ranks (``update.py``, ``rlft.train.common.parallel``). Rank 0 writes.
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlft.algos import AdaptiveKLController, AdvantageState, FixedKLController, masked_mean
from rlft.data import DataError, LengthLimits, encode_prompts, load_records
from rlft.data.lengths import context_length, prompt_budget
from rlft.models import HFSampler, SamplingParams
from rlft.models.device import place
from rlft.models.forward_path import plan_for, record_forward
from rlft.models.fused.onednn_linears import use_onednn_linears
from rlft.run.distributed import all_gather_objects, main_only, world
from rlft.run.seeding import minibatch_seed, rollout_seed
from rlft.train.common.bookkeeping import Bookkeeping
from rlft.train.common.chat_stops import stop_at_end_of_turn
from rlft.train.common.checkpoint import load_trainer_state, restore_optimizer, save_checkpoint
from rlft.train.common.epochs import restore_rng, rng_state
from rlft.train.common.launch import TrainerCall, chat_tokenizer, lm_trainer
from rlft.train.common.optimizer import adamw
from rlft.train.common.parallel import DataParallel
from rlft.train.common.schedule import warmup_cosine_scheduler
from rlft.train.online.config import RLConfig, preset_value
from rlft.train.online.critic import Critic
from rlft.train.online.evaluation import RLEvalSet, evaluate_policy, load_eval_set
from rlft.train.online.prompt_stream import PromptStream
from rlft.train.online.ptx import PtxData
from rlft.train.online.rollout import (
    RolloutStats,
    advantage_step,
    check_advantage,
    collect_rollout,
    gather_rollout,
    needs_critic,
)
from rlft.train.online.rollout_shards import Shards
from rlft.train.online.setup import describe_algorithm, load_policy, reward_specs, save_final
from rlft.train.online.update import Reference, loss_settings, old_policy_logprobs, policy_update

__all__ = ["RLResult", "train_rl"]


@dataclass
class RLResult:
    steps: int
    seconds: float
    initial_eval: dict[str, float]  # before training (empty when resumed or without eval prompts)
    final_eval: dict[str, float]
    last_metrics: dict[str, float]  # the metrics of the last step
    train_seconds: float  # time spent in training steps (evaluation and checkpoints excluded)
    model_dir: Path
    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list, repr=False)


# --- the trainer -----------------------------------------------------------------------------------------


def _gathered_stats(stats: RolloutStats) -> RolloutStats:
    """Every rank's rollout statistics merged (one process: ``stats``)."""
    return RolloutStats.merged(all_gather_objects(stats)) if world().size > 1 else stats


@lm_trainer("rl")
def train_rl(cfg: RLConfig, call: TrainerCall) -> RLResult:
    """Train ``cfg.model`` with online RL; write metrics, checkpoints and ``run/model/``. Called as every
    LM trainer is (:class:`~rlft.train.common.launch.LMTrainer`)."""
    run, say = call.run, call.say
    user_cfg, cfg = cfg, cfg.resolved()
    say(describe_algorithm(user_cfg))

    # Data, rewards, evaluation prompts.
    tokenizer, pad_id = chat_tokenizer(cfg)
    fmt = cfg.format or ("prompt_only" if cfg.data.startswith("task:") else None)
    context = context_length(cfg.model, tokenizer)
    limits = LengthLimits(
        max_prompt_tokens=prompt_budget(
            cfg.max_prompt_tokens, context, cfg.sampling.max_new_tokens, "sampling.max_new_tokens"
        ),
        overflow="drop",
    )
    examples = encode_prompts(load_records(cfg.data, fmt=fmt), tokenizer, limits)
    if len(examples) == 0:
        raise DataError(f"{cfg.data}: no prompts left after the length limits ({examples.report})")
    say(f"prompts {cfg.data}: {examples.report}")
    from rlft.rewards import build_rewards

    rewards = build_rewards(reward_specs(cfg), on_invalid=cfg.on_invalid_reward)
    with closing(rewards):  # reward functions may hold process pools
        eval_set: RLEvalSet | None = load_eval_set(cfg, tokenizer)

        # Models: policy (trainable), reference (frozen, only when a KL term is on).
        checkpoint = call.resume_checkpoint()
        model = place(load_policy(cfg, checkpoint, say), call.device)  # every other model follows it
        rewards.place(call.device)
        stop_at_end_of_turn(model, tokenizer)
        model.eval()  # no dropout: the sampler's log-probs and the loss's must describe the same policy
        advantage = preset_value(cfg.advantage, "advantage")
        critic = Critic(cfg, model) if needs_critic(advantage) else None
        check_advantage(advantage, has_critic=critic is not None, extra=cfg.advantage_kwargs)
        if critic is not None:
            say(f"critic: {critic.source}")
        reference = Reference(cfg, model) if cfg.kl.active else None
        # The forward path of every pass, decided once: said at start, written to RUN/forward.txt.
        plan = plan_for("rl", model, cfg, reference=reference)
        say(record_forward(run, plan))
        if reference is not None:
            reference.follow(plan, cfg.bf16)
        ptx = PtxData(cfg, tokenizer) if cfg.ptx.coef > 0 else None
        if plan.onednn:  # float32 matmuls of the Hugging Face bodies on oneDNN
            use_onednn_linears(model)
            if reference is not None and reference.model is not None:
                use_onednn_linears(reference.model, frozen=True)
            if critic is not None and critic.model is not None:  # trained: no packed copy
                use_onednn_linears(critic.model)
        sampler = HFSampler(model, tokenizer, decoder=plan.decoder or "auto")
        losses = loss_settings(cfg, plan)
        parallel = DataParallel.of(cfg)
        model = parallel.prepare(model)  # before the optimiser: under fsdp2 its parameters become shards
        if critic is not None:
            critic.replicate()
        shards = Shards.of(cfg.sampling.rollout_shards, cfg.sampling.prompts_per_step)

        optimizer = adamw(
            model.parameters(), cfg.optim.lr, cfg.optim.weight_decay, beta2=cfg.optim.adam_beta2
        )
        params = [p for group in optimizer.param_groups for p in group["params"]]
        scheduler = warmup_cosine_scheduler(
            optimizer, cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.min_lr_ratio
        )
        kl_coef = preset_value(cfg.kl.coef, "kl.coef")
        kl_ctl = (
            AdaptiveKLController(kl_coef, cfg.kl.target, cfg.kl.horizon)
            if cfg.kl.controller == "adaptive"
            else FixedKLController(kl_coef)
        )
        adv_state = AdvantageState()
        adv_state.baseline.alpha = preset_value(cfg.baseline_alpha, "baseline_alpha")
        stream = PromptStream(len(examples), cfg.seed)

        step = 0
        if checkpoint is not None:
            state = load_trainer_state(checkpoint)
            parallel.load_sharded(model, optimizer, state, checkpoint)
            restore_optimizer(optimizer, scheduler, state, checkpoint)
            restore_rng(state)
            stream.load_state_dict(state["stream"])
            kl_ctl.value = state["kl_coef"]
            adv_state.load_state_dict(state["advantage_state"])
            if critic is not None:
                critic.load_state_dict(state["critic"])
            if ptx is not None:
                ptx.load_state_dict(state["ptx_stream"])
            step = state["step"]
            run.trim_metrics(step)
            say(f"resuming from {checkpoint} (step {step})")
        else:
            run.trim_metrics(None)  # rows of a run killed before its first checkpoint: it starts again

        def save(at_step: int) -> None:
            state = {
                "step": at_step,
                "stream": stream.state_dict(),
                "scheduler": scheduler.state_dict(),
                **rng_state(),
                "kl_coef": float(kl_ctl.value),
                "advantage_state": adv_state.state_dict(),
            }
            if not parallel.sharded:  # else in the checkpoint's sharded part
                state["optimizer"] = optimizer.state_dict()
            if critic is not None:
                state["critic"] = critic.state_dict()
            if ptx is not None:
                state["ptx_stream"] = ptx.state_dict()
            save_checkpoint(run, at_step, model, tokenizer, state, parallel, optimizer)

        def evaluate() -> dict[str, float]:
            if eval_set is None:
                return {}
            with parallel.gathered(model):  # every rank evaluates everything; rank 0 logs it
                return evaluate_policy(sampler, eval_set, rewards, cfg)

        sampling = SamplingParams(
            max_new_tokens=cfg.sampling.max_new_tokens,
            temperature=cfg.sampling.temperature,
            top_k=cfg.sampling.top_k,
            top_p=cfg.sampling.top_p,
            n=cfg.sampling.num_generations,
            stop_strings=tuple(cfg.sampling.stop_strings),
            bf16=cfg.bf16,
        )
        book = Bookkeeping(
            call, cfg, cfg.max_steps, step, checkpoint is not None, evaluate, save, f"rl {cfg.algorithm}",
            max_minutes=cfg.max_minutes, shown_eval=("eval_accuracy", "eval_reward"),
            eval_every=cfg.eval.every,
        )  # fmt: skip
        if book.initial_eval:
            say("before training: " + ", ".join(f"{k} {v:.4g}" for k, v in book.initial_eval.items()))
        start = time.monotonic()
        with book:
            while step < cfg.max_steps:
                t_step = time.perf_counter()
                # 1–2. sample and score this rank's shards (dynamic sampling rounds, ReMax's greedy baseline)
                with parallel.gathered(model):
                    batch, rollout = collect_rollout(
                        sampler,
                        rewards,
                        examples,
                        stream,
                        sampling,
                        cfg.sampling.prompts_per_step,
                        pad_id,
                        dynamic_sampling=preset_value(cfg.dynamic_sampling, "dynamic_sampling"),
                        max_rounds=preset_value(cfg.max_sample_rounds, "max_sample_rounds"),
                        greedy_baseline=advantage == "remax",
                        seed=rollout_seed(cfg.seed, step),
                        shards=shards,
                    )
                if cfg.mask_truncated:  # DAPO's overlong filter: cut-off completions teach nothing
                    loss_mask = batch.filled("loss_mask")
                    batch.loss_mask = loss_mask * batch.finished[:, None].to(loss_mask.dtype)
                if cfg.missing_eos_penalty:  # TRL: a completion cut at max_new_tokens loses this much score
                    scores = batch.filled("scores")
                    batch.scores = scores - cfg.missing_eos_penalty * (~batch.finished).to(scores.dtype)
                reward = _gathered_stats(rollout).metrics()["reward"]  # the whole step's, on every rank
                if not math.isfinite(reward) and not book.control.skips.check(step + 1, reward=reward):
                    # no sample has a reward (e.g. every function returned None): nothing to learn from
                    scheduler.step()
                    step += 1
                    book.skipped_step(
                        step, {**_gathered_stats(rollout).metrics(), "skipped_steps": book.control.skipped}
                    )
                    continue
                # 3. reference log-probs (and π_old when the policy will move before some loss is taken)
                t_ref = time.perf_counter()
                with parallel.gathered(model):
                    batch.old_logp = old_policy_logprobs(cfg, model, batch, losses)
                if reference is not None:
                    batch.ref_logp = reference.logprobs(batch, losses, cfg.optim.micro_batch_size)
                if critic is not None:  # V_old of every response token
                    batch.values = critic.values(batch, cfg.optim.micro_batch_size)
                time_ref = time.perf_counter() - t_ref
                # every rank's rows, on every rank: the estimate stage sees the whole step's batch
                batch, rollout, owner = gather_rollout(batch, rollout, pad_id)
                # 4. per-token rewards (KL shaping) and advantages
                t_update = time.perf_counter()
                kl_metrics = advantage_step(cfg, batch, float(kl_ctl.value), adv_state)
                # 5. μ passes of mini-batch policy updates
                lr = scheduler.get_last_lr()[0]
                update = policy_update(
                    model,
                    optimizer,
                    params,
                    batch,
                    losses,
                    kl_coef=float(kl_ctl.value),
                    ppo_epochs=cfg.optim.ppo_epochs,
                    num_minibatches=preset_value(cfg.num_minibatches, "num_minibatches"),
                    micro_batch_size=cfg.optim.micro_batch_size,
                    max_grad_norm=cfg.optim.max_grad_norm,
                    generator=torch.Generator().manual_seed(minibatch_seed(cfg.seed, step)),
                    critic=critic,
                    ptx=ptx,
                    apply_step=functools.partial(book.control.step_optimizer, step=step + 1),
                    owner=owner,
                    parallel=parallel,
                )
                scheduler.step()
                if reference is not None:
                    kl_ctl.update(kl_metrics["kl_ref_seq"], len(batch))
                time_update = time.perf_counter() - t_update
                step += 1
                elapsed = time.perf_counter() - t_step
                row = {
                    **rollout.metrics(),
                    **kl_metrics,
                    **update,
                    "advantage_abs_mean": float(
                        masked_mean(batch.filled("advantages").abs(), batch.filled("loss_mask").float())
                    ),
                    "lr": lr,
                    "time_sample": rollout.time_sample,
                    "time_score": rollout.time_score,
                    "time_reference": time_ref,
                    "time_update": time_update,
                    "time_step": elapsed,
                    "tokens_per_s": rollout.tokens / max(elapsed, 1e-9),
                    "skipped_steps": book.control.skipped,
                }
                shown = {"reward": row["reward"], "len": row["response_len_mean"]}
                if "kl_ref" in row:
                    shown["kl"] = row["kl_ref"]
                shown["tok/s"] = row["tokens_per_s"]
                if book.end_of_step(step, row, shown, elapsed):
                    break
    model_dir = run.root / "model"
    if step == cfg.max_steps or book.out_of_time:
        if critic is not None:
            main_only(lambda: critic.save(run.root / "critic", tokenizer))
        full = parallel.full_state_dict(model)
        main_only(lambda: save_final(model, tokenizer, model_dir, cfg.lora is not None, full))
    return RLResult(
        steps=step,
        seconds=time.monotonic() - start,
        initial_eval=book.initial_eval,
        final_eval=book.last_eval,
        last_metrics=book.last_row,
        train_seconds=book.train_seconds,
        model_dir=model_dir,
        run_dir=run.root,
        history=book.history,
    )
