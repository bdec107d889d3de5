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

The losses are ``rlft.algos.bradley_terry_loss`` and ``rlft.algos.kwise_ranking_loss`` (ALGORITHMS.md §5).
InstructGPT's rule (arXiv 2203.02155) that a prompt's K responses are scored once and its pairs averaged
as one batch element is the ``kwise`` path; its centring term is generalised per pair, so K = 2 with
either loss is the same computation. Data order, checkpoints and exact resume follow ``sft.py``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlft.algos import bradley_terry_loss, kwise_ranking_loss
from rlft.data import (
    DataError,
    Encoded,
    LengthLimits,
    PreferenceRecord,
    PromptCompletionRecord,
    RankedRecord,
    encode_preference,
    encode_ranked,
    encode_sft,
    load_records,
    pad_sequences,
)
from rlft.data.tasks import parse_task_source
from rlft.models import (
    load_reward_model,
    load_tokenizer,
    reward_model_from_causal_lm,
    save_reward_model,
    sequence_scores,
)
from rlft.run import MetricsWriter, Progress, RunDir, seed_everything

from .checkpoint import latest_checkpoint, save_checkpoint
from .epochs import end_of_step, epoch_order, position_state, start_training
from .rm_config import RMConfig
from .sft import task_of

__all__ = [
    "RMResult",
    "RankGroup",
    "collate_groups",
    "encode_groups",
    "evaluate_rm",
    "group_rewards",
    "pair_mask",
    "reward_stats",
    "rm_loss",
    "train_rm",
]


@dataclass
class RankGroup:
    """One prompt's responses as full token sequences (prompt + response + EOS) with their ranks
    (higher = preferred; a preference pair is ranks [1, 0]); ``texts`` keeps the strings for gold scoring."""

    seqs: list[list[int]]
    ranks: list[float]
    margin: float | None = None
    prompt: Any = None
    texts: list[str] = field(default_factory=list)
    where: str = ""


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


# --- data -------------------------------------------------------------------------------------------------


def encode_groups(
    records: Sequence[Any], tokenizer: Any, limits: LengthLimits | None = None
) -> Encoded[RankGroup]:
    """Preference or ranked records → :class:`RankGroup` (with ``.report``, what the length limits did),
    tokenised as the reward-model source scores them: prompt, response, EOS."""
    if records and isinstance(records[0], PreferenceRecord):
        encoded = encode_preference(records, tokenizer, limits)
        out = [
            RankGroup(
                [e.prompt_ids + e.chosen_ids, e.prompt_ids + e.rejected_ids],
                [1.0, 0.0],
                e.margin,
                where=e.where,
            )
            for e in encoded
        ]
        texts = {r.where: (r.prompt, [r.chosen, r.rejected]) for r in records}
    elif records and isinstance(records[0], RankedRecord):
        encoded = encode_ranked(records, tokenizer, limits)
        out = [
            RankGroup([e.prompt_ids + r for r in e.response_ids], list(e.scores), where=e.where)
            for e in encoded
        ]
        texts = {r.where: (r.prompt, list(r.responses)) for r in records}
        for g in out:
            if len(set(g.ranks)) < 2:
                raise DataError(
                    f"{g.where}: all {len(g.ranks)} responses have the same score (no pair to learn from)"
                )
    else:
        kind = type(records[0]).__name__ if records else "no records"
        raise DataError(f"reward-model training needs preference or ranked records, got {kind}")
    if len(texts) == len(records):  # locations are unique: match by location (robust to dropped records)
        for g in out:
            g.prompt, g.texts = texts[g.where]
    elif len(out) == len(records):  # in-memory records without locations: nothing was dropped
        for g, r in zip(out, records, strict=True):
            g.prompt, g.texts = (
                r.prompt,
                ([r.chosen, r.rejected] if isinstance(r, PreferenceRecord) else r.responses),
            )
    return Encoded(out, encoded.report)


def collate_groups(groups: Sequence[RankGroup], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch of every response of every group, and the (P, K) layout back to groups.

    ``slot`` (P, K) holds each response's row in ``input_ids`` (−1 where a group has fewer than K).
    """
    seqs = [s for g in groups for s in g.seqs]
    k = max(len(g.seqs) for g in groups)
    slot = torch.full((len(groups), k), -1, dtype=torch.long)
    ranks = torch.zeros(len(groups), k)
    row = 0
    for p, g in enumerate(groups):
        n = len(g.seqs)
        slot[p, :n] = torch.arange(row, row + n)
        ranks[p, :n] = torch.tensor(g.ranks, dtype=torch.float32)
        row += n
    ids = pad_sequences(seqs, pad_id)
    lengths = torch.tensor([len(s) for s in seqs])
    return {
        "input_ids": ids,
        "attention_mask": (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long(),
        "slot": slot,
        "ranks": ranks,
        "valid": slot >= 0,
        "margin": torch.tensor([math.nan if g.margin is None else g.margin for g in groups]),
    }


def group_rewards(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(P, K) rewards: each response scored once in one forward; 0 in empty slots."""
    flat = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
    return torch.where(batch["valid"], flat[batch["slot"].clamp(min=0)], torch.zeros((), dtype=flat.dtype))


# --- loss -------------------------------------------------------------------------------------------------


def pair_mask(ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(P, K, K) bool: [p, w, l] true where response w is ranked above l (ties form no pair)."""
    return (ranks.unsqueeze(-1) > ranks.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)


def rm_loss(
    rewards: torch.Tensor,
    ranks: torch.Tensor,
    valid: torch.Tensor,
    loss: str = "pairwise",
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Per-element losses: one per pair (``pairwise``, Bradley–Terry with margin and centring) or one per
    prompt (``kwise``, InstructGPT: the mean over its pairs, plus the centring term averaged the same way).
    ``margin`` (P,) is subtracted from each of the prompt's pairs; NaN means none."""
    pairs = pair_mask(ranks, valid)
    if loss == "pairwise":
        p, w, l = pairs.nonzero(as_tuple=True)
        m = None if margin is None else torch.nan_to_num(margin.to(rewards.dtype), nan=0.0)[p]
        return bradley_terry_loss(rewards[p, w], rewards[p, l], margin=m, center_coef=center_coef)
    if loss == "kwise":
        out = kwise_ranking_loss(rewards, ranks, valid)
        if center_coef:
            sums = (rewards.unsqueeze(-1) + rewards.unsqueeze(-2)) ** 2 * pairs
            out = out + center_coef * sums.sum((-1, -2)) / pairs.sum((-1, -2))
        return out
    raise ValueError(f"unknown reward-model loss {loss!r}; expected pairwise or kwise")


def element_count(groups: Sequence[RankGroup], loss: str) -> int:
    if loss == "kwise":
        return len(groups)
    return sum(sum(1 for a in g.ranks for b in g.ranks if a > b) for g in groups)


def _pair_stats(rewards: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> tuple[float, float, int]:
    """(correctly ordered pairs — ties count ½, Σ(r_w − r_l), number of pairs)."""
    pairs = pair_mask(ranks, valid)
    diff = (rewards.unsqueeze(-1) - rewards.unsqueeze(-2))[pairs]
    correct = float((diff > 0).sum()) + 0.5 * float((diff == 0).sum())
    return correct, float(diff.sum()), int(diff.numel())


# --- evaluation -------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_rm(
    model: Any,
    groups: Sequence[RankGroup],
    pad_id: int,
    loss: str = "pairwise",
    batch_size: int = 64,
    gold: Sequence[Sequence[float]] | None = None,
) -> dict[str, float]:
    """Held-out metrics: ``eval_loss`` (per element), ``eval_accuracy`` (share of labelled pairs the model
    orders the same way), ``eval_reward_gap`` (mean r_w − r_l), the scores' mean and std, and — with
    ``gold`` scores per response — ``eval_gold_accuracy`` (pairs ordered as the gold scorer orders them,
    gold ties left out) and ``eval_label_gold_agreement`` (how often the labels themselves agree with gold)."""
    was_training = model.training
    model.eval()
    loss_sum, n_elements, correct, gap, n_pairs = 0.0, 0, 0.0, 0.0, 0
    gold_right, label_right, gold_pairs = 0.0, 0, 0
    scores: list[float] = []
    for i in range(0, len(groups), batch_size):
        chunk = groups[i : i + batch_size]
        batch = collate_groups(chunk, pad_id)
        rewards = group_rewards(model, batch)
        losses = rm_loss(rewards, batch["ranks"], batch["valid"], loss)
        loss_sum, n_elements = loss_sum + float(losses.sum()), n_elements + losses.numel()
        c, g, n = _pair_stats(rewards, batch["ranks"], batch["valid"])
        correct, gap, n_pairs = correct + c, gap + g, n_pairs + n
        scores.extend(rewards[batch["valid"]].tolist())
        if gold is not None:
            for p, group in enumerate(chunk):
                gs = gold[i + p]
                for w in range(len(group.ranks)):
                    for l in range(len(group.ranks)):
                        if group.ranks[w] > group.ranks[l] and gs[w] != gs[l]:
                            truth = 1.0 if gs[w] > gs[l] else -1.0
                            d = float(rewards[p, w] - rewards[p, l]) * truth
                            gold_right += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
                            label_right += truth > 0
                            gold_pairs += 1
    model.train(was_training)
    out = {
        "eval_loss": loss_sum / max(n_elements, 1),
        "eval_accuracy": correct / max(n_pairs, 1),
        "eval_reward_gap": gap / max(n_pairs, 1),
        "eval_reward_mean": statistics.fmean(scores) if scores else math.nan,
        "eval_reward_std": statistics.stdev(scores) if len(scores) > 1 else math.nan,
    }
    if gold is not None and gold_pairs:
        out["eval_gold_accuracy"] = gold_right / gold_pairs
        out["eval_label_gold_agreement"] = label_right / gold_pairs
    return out


@torch.no_grad()
def reward_stats(
    model: Any, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64
) -> dict[str, float]:
    """Mean and (unbiased) std of the model's scores of ``seqs``: the normalisation saved with the model."""
    was_training = model.training
    model.eval()
    scores = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        ids = pad_sequences(chunk, pad_id)
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([len(s) for s in chunk])[:, None]).long()
        scores.append(sequence_scores(model, ids, mask))
    model.train(was_training)
    flat = torch.cat(scores)
    if flat.numel() < 2:
        raise DataError(f"normalisation needs at least 2 reference responses, got {flat.numel()}")
    return {"mean": float(flat.mean()), "std": max(float(flat.std()), 1e-6)}


# --- setup helpers ----------------------------------------------------------------------------------------


def length_limits(cfg: RMConfig) -> LengthLimits:
    return LengthLimits(
        max_prompt_tokens=cfg.max_prompt_tokens,
        max_completion_tokens=cfg.max_completion_tokens,
        max_total_tokens=cfg.max_len,
        overflow=cfg.overflow,
    )


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
    groups = encode_groups(records, tokenizer, length_limits(cfg))
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
        return [e.input_ids for e in encode_sft(records, tokenizer, length_limits(cfg))]
    return [s for g in encode_groups(records, tokenizer, length_limits(cfg)) for s in g.seqs][
        : cfg.norm_samples
    ]


def _initial_model(cfg: RMConfig) -> Any:
    """A reward model to continue, or an SFT causal LM that gets a fresh head."""
    config_path = Path(cfg.model).expanduser() / "config.json"
    if config_path.is_file() and "ForSequenceClassification" in config_path.read_text():
        return load_reward_model(cfg.model)[0]
    return reward_model_from_causal_lm(cfg.model, seed=cfg.seed)


# --- the trainer ------------------------------------------------------------------------------------------


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
    pad_id = int(tokenizer.pad_token_id)
    records = load_records(cfg.data, fmt=_format(cfg, cfg.data))
    train = encode_groups(records, tokenizer, length_limits(cfg))
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
    model = load_reward_model(checkpoint)[0] if checkpoint else _initial_model(cfg)
    model.train()
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

    metrics = MetricsWriter(run.root)
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
                c, g, n = _pair_stats(rewards.detach(), batch["ranks"], batch["valid"])
                correct, gap, n_pairs, n_seqs = (
                    correct + c,
                    gap + g,
                    n_pairs + n,
                    n_seqs + len(batch["input_ids"]),
                )
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            step, batch_index, steps_run = step + 1, batch_index + 1, steps_run + 1
            loss_value = loss_sum / n_elements
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
                    },
                )
            progress.update(1, loss=loss_value, acc=correct / max(n_pairs, 1))
            final_eval, stop = end_of_step(
                cfg, step, total_steps, steps_run, stop_after, evaluate, save, metrics, final_eval
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
