"""Supervised fine-tuning (SFT) of a causal LM: one loop, read top to bottom.

    for step in 1..max_steps:
        take the next batch_size × grad_accum examples of this epoch's shuffled order
        for each micro-batch:  backward( Σ token cross-entropy / N )      N = loss tokens in the whole step
        clip the global gradient norm; AdamW step; LR: linear warm-up, then cosine decay
        log loss, lr, grad_norm, tokens/s; every eval_every: eval loss, perplexity, greedy task metrics;
        every save_every: checkpoint (model + optimiser + scheduler + RNG + data position)

Exact resume: the data order of epoch e is ``randperm`` from a ``torch.Generator`` seeded with
``shuffle_seed(seed, e)``, so the position (epoch, batch index) alone says which examples come next; with
the optimiser, scheduler and RNG states restored, a resumed run on CPU computes bitwise the same weights as
an uninterrupted one.

Data parallel (torchrun): each rank takes its slice of every micro-batch and divides by the token count
summed over all ranks; the gradients are summed over ranks before clipping (``rlft.train.common``), so N
ranks take the one-process step. Only rank 0 writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from rlft.data import (
    IGNORE_INDEX,
    Example,
    PromptRecord,
    collate_sft,
    encode_sft,
    load_records,
)
from rlft.data.tasks import task_of
from rlft.models import SamplingParams, load_causal_lm, sample, training_mode
from rlft.models.device import model_device, place, to_device
from rlft.models.forward_path import plan_for, record_forward
from rlft.models.precision import bf16_autocast
from rlft.run import ConfigError
from rlft.run.distributed import sum_over_ranks
from rlft.train.common.chat_stops import stop_at_end_of_turn
from rlft.train.common.epoch_loop import EpochsResult, StepResult, planned_steps, train_epochs
from rlft.train.common.epochs import model_length_limits, shuffle_seed, start_training
from rlft.train.common.launch import TrainerCall, chat_tokenizer, lm_trainer
from rlft.train.sft.config import SFTConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EvalSet",
    "SFTResult",
    "check_packing",
    "evaluate_sft",
    "generation_metrics",
    "load_eval_set",
    "packing_blocker",
    "shuffle_seed",
    "task_of",
    "token_loss_sum",
    "train_sft",
]


@dataclass
class EvalSet:
    """What evaluation runs on: encoded examples (loss) and, for a built-in task, prompts + the task."""

    examples: list[Example]
    prompts: list[Any] = field(default_factory=list)
    extra: dict[str, list[Any]] = field(default_factory=dict)  # per-prompt fields the task scores with
    task: Any = None


@dataclass
class SFTResult(EpochsResult):
    """What :func:`train_sft` returns; ``train_loss`` is the mean token loss of the last step."""


# --- loss -------------------------------------------------------------------------------------------------


# Model types whose transformers modeling code hands ``position_ids`` to its mask builders
# (``create_causal_mask`` / ``create_sliding_window_causal_mask``) and uses them for positions in the same
# way unpacked, so that packed rows give the unpacked loss and gradients: each one is checked by
# tests/test_sft_packing_archs.py. Architectures that position by the attention mask (ALiBi: bloom,
# falcon…), build masks their own way (multimodal wrappers) or ship remote code may not, and would still
# return plausible numbers, so they are refused.
PACKABLE_MODEL_TYPES = frozenset(
    {"gemma2", "gemma3_text", "gpt2", "llama", "mistral", "phi3", "qwen2", "qwen3"}
)
# Attention implementations whose mask transformers builds, packed examples and sliding windows
# included; flash/flex/paged kernels find packing their own way, which nothing here verifies.
PACKABLE_ATTENTION = frozenset({"eager", "sdpa"})


def packing_blocker(model: PreTrainedModel) -> str | None:
    """Why packed SFT rows would not be exact for ``model`` (the unpacked loss and gradients), or None.

    Packing separates examples by ``position_ids`` alone (see :func:`token_loss_sum`), which is exact only
    where the modeling code turns restarting positions into per-example masks. An allowlist rather than a
    numerical probe at start-up: a probe needs a tolerance and rows longer than the sliding window to see
    anything, while each listed type is checked, loss and gradients, against its unpacked batch.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    attention = getattr(config, "_attn_implementation", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        return (
            f"model_type {model_type!r} is not known to keep packed examples apart by position_ids "
            f"(packing is verified for {', '.join(sorted(PACKABLE_MODEL_TYPES))})"
        )
    if attention not in PACKABLE_ATTENTION:
        return (
            f"model_type {model_type!r} with attn_implementation {attention!r}: packed examples are kept "
            f"apart only with {' or '.join(sorted(PACKABLE_ATTENTION))} attention"
        )
    return None


def check_packing(model: PreTrainedModel) -> None:
    """Raise a one-line :class:`ConfigError` when :func:`packing_blocker` refuses ``model``."""
    reason = packing_blocker(model)
    if reason is not None:
        raise ConfigError(f"config key 'pack': packed rows would not be exact: {reason}; set pack: false")


def token_loss_sum(
    model: PreTrainedModel, batch: dict[str, Any], bf16: bool = False
) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies over label positions, number of those positions).

    Labels are aligned with ``input_ids`` (HF convention): logits at t are scored against labels[t+1].
    Returning the sum, not the mean, lets the caller divide by the token count of the whole accumulated
    (or global) batch, so every token weighs the same however the batch is split.

    A packed batch (it has ``position_ids``) goes in WITHOUT its 4-D attention mask: transformers then
    finds the examples where the positions restart and builds every layer's mask itself — sliding
    windows included, additive for eager attention — the mask each example gets unpacked. The 4-D
    boolean mask would be used as given: no window, and eager attention adds it (0/1) instead of masking.
    ``use_cache=False`` matters: transformers looks for packed sequences only without a cache, and
    models default to one even in train mode. Models that cannot be packed this way are refused
    (:func:`check_packing`) rather than silently mis-trained. ``batch`` (built on the CPU) goes to the
    model's device; ``bf16`` runs the model under bfloat16 autocast, the cross-entropy in float32.
    """
    device = model_device(model)
    batch = to_device(batch, device)
    if "position_ids" in batch:
        check_packing(model)
        inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    else:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with bf16_autocast(bf16, device.type):
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate_sft(
    model: PreTrainedModel, examples: Sequence[Example], pad_id: int, batch_size: int = 32, bf16: bool = False
) -> dict[str, float]:
    """Token-weighted mean loss and perplexity of ``examples`` (no packing, so no cross-example effects)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        loss, n = token_loss_sum(model, collate_sft(examples[i : i + batch_size], pad_id), bf16)
        total += float(loss)
        tokens += n
    model.train(was_training)
    mean = total / max(tokens, 1)
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0))}


@torch.no_grad()
def generation_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_set: EvalSet,
    max_new_tokens: int = 16,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Greedy completions of the eval prompts scored by the task (``accuracy`` for arithmetic)."""
    if eval_set.task is None or not eval_set.prompts:
        return {}
    was_training = model.training
    model.eval()
    texts: list[str] = []
    # seed=… so the sampler does not draw its seed from the global RNG (which would shift the training run)
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True, seed=seed)
    for i in range(0, len(eval_set.prompts), batch_size):
        texts.extend(sample(model, tokenizer, list(eval_set.prompts[i : i + batch_size]), params).texts)
    model.train(was_training)
    scores = eval_set.task.evaluate(eval_set.prompts, texts, **eval_set.extra)
    return {f"eval_{k}": float(v) for k, v in scores.items()}


# --- data -------------------------------------------------------------------------------------------------


def load_eval_set(cfg: SFTConfig, tokenizer: PreTrainedTokenizerBase) -> EvalSet | None:
    """Eval data: ``eval_data``, or the eval split of a built-in task; None when there is neither."""
    source = cfg.eval_data or (cfg.data if cfg.data.startswith("task:") else None)
    if source is None:
        return None
    records = load_records(source, fmt=cfg.format, split="eval", limit=cfg.eval_samples)
    examples = list(
        encode_sft(records, tokenizer, model_length_limits(cfg, tokenizer), cfg.completion_only_loss)
    )
    eval_set = EvalSet(examples=examples)
    task = task_of(source)
    if cfg.eval_generate and task is not None:
        # fmt="prompt_only" validates every record into that shape
        prompts = cast(
            list[PromptRecord], load_records(source, fmt="prompt_only", split="eval", limit=cfg.eval_samples)
        )
        eval_set.task = task
        eval_set.prompts = [r.prompt for r in prompts]
        keys = set().union(*(r.extra for r in prompts))
        eval_set.extra = {k: [r.extra.get(k) for r in prompts] for k in sorted(keys)}
    return eval_set


def step_batches(
    examples: Sequence[Example], order: torch.Tensor, batch_index: int, cfg: SFTConfig, pad_id: int
) -> list[dict[str, Any]]:
    """The ``grad_accum`` collated micro-batches of optimiser step ``batch_index`` of an epoch."""
    size = cfg.batch_size * cfg.grad_accum
    return collate_step(examples, order[batch_index * size : (batch_index + 1) * size].tolist(), cfg, pad_id)


def collate_step(
    examples: Sequence[Example], chunk: list[int], cfg: SFTConfig, pad_id: int
) -> list[dict[str, Any]]:
    """The ``grad_accum`` collated micro-batches of one optimiser step's examples ``chunk`` (this rank's
    share of them on several ranks)."""
    size = len(chunk) // cfg.grad_accum
    return [
        collate_sft(
            [examples[j] for j in chunk[m * size : (m + 1) * size]],
            pad_id,
            pack=cfg.pack,
            max_len=cfg.max_len if cfg.pack else None,
        )
        for m in range(cfg.grad_accum)
    ]


# --- the trainer ------------------------------------------------------------------------------------------


@lm_trainer("sft")
def train_sft(cfg: SFTConfig, call: TrainerCall) -> SFTResult:
    """Fine-tune ``cfg.model`` on ``cfg.data``; write metrics, checkpoints and ``run/model/``.

    Called as every LM trainer is (:class:`~rlft.train.common.launch.LMTrainer`):
    ``train_sft(cfg, run, resume=False, show_progress=True, stop_after=None, log=None)``, with ``resume``
    and ``stop_after`` as :class:`~rlft.train.common.launch.TrainerCall` describes them.
    """
    run, say = call.run, call.say

    # Model and data.
    tokenizer, pad_id = chat_tokenizer(cfg)
    records = load_records(cfg.data, fmt=cfg.format)
    train = encode_sft(records, tokenizer, model_length_limits(cfg, tokenizer), cfg.completion_only_loss)
    say(f"train data {cfg.data}: {train.report}")
    eval_set = load_eval_set(cfg, tokenizer)
    if eval_set is not None:
        say(f"eval data: {len(eval_set.examples)} examples, {len(eval_set.prompts)} generation prompts")
    total_steps = planned_steps(cfg, len(train), "examples")

    checkpoint = call.resume_checkpoint()
    model = place(load_causal_lm(str(checkpoint) if checkpoint else cfg.model), call.device)
    if cfg.pack:  # refuse before any step rather than at the first packed batch
        check_packing(model)
    say(record_forward(run, plan_for("sft", model, cfg)))
    stop_at_end_of_turn(model, tokenizer)
    training_mode(model, cfg.keep_dropout)
    training = start_training(call, cfg, model, tokenizer, total_steps, checkpoint)

    def evaluate() -> dict[str, float]:
        if eval_set is None:
            return {}
        # every rank evaluates the whole eval set on the whole model; rank 0 logs it
        with training.parallel.gathered(model):
            batch_size = max(cfg.batch_size, 32)
            out = evaluate_sft(model, eval_set.examples, pad_id, batch_size=batch_size, bf16=cfg.bf16)
            if cfg.eval_generate:
                out |= generation_metrics(model, tokenizer, eval_set, cfg.eval_max_new_tokens, seed=cfg.seed)
        return out

    def train_step(chunk: list[int]) -> StepResult:
        batches = collate_step(train, chunk, cfg, pad_id)
        # Normalise by the loss tokens of the WHOLE step (all micro-batches, all ranks): Σ token losses / N.
        (n_tokens,) = sum_over_ranks(sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches))
        loss_sum = 0.0
        for batch in batches:
            loss, _ = token_loss_sum(model, batch, cfg.bf16)
            (loss / max(n_tokens, 1)).backward()
            loss_sum += float(loss.detach())
        local_seen = sum(int(b["input_ids"].ne(pad_id).sum()) for b in batches)
        loss_sum, seen = sum_over_ranks(loss_sum, local_seen)
        loss_value = loss_sum / max(n_tokens, 1)
        shown = {"loss": loss_value, "lr": training.scheduler.get_last_lr()[0]}
        return StepResult(loss_value, {"loss": loss_value}, shown, counted=("tokens_per_s", seen))

    outcome = train_epochs(call, training, len(train), train_step, evaluate=evaluate, desc="sft")
    if outcome.finished:
        training.save_model(outcome.model_dir)
    return SFTResult.of(outcome)
