"""Reward commands: ``rm`` (train a reward model) and ``score`` (score prompt/completion rows), plus the
reward-model stage of ``rlft demo`` (:func:`preference_sft`, :func:`rm_demo_stage`).

``rlft/cli.py`` calls :func:`add_reward_commands`; each command's function takes ``(args, extra)`` and
returns an exit code. User errors are raised as ConfigError / DataError / ModelError / RewardError.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from rlft.run import ConfigError

from .run_setup import training_run

__all__ = ["DEMO_LABEL_NOISE", "add_reward_commands", "preference_sft", "rm_demo_stage"]

DEMO_LABEL_NOISE = 0.1  # share of the demo's preference labels flipped: the accuracy ceiling is 0.9
DEMO_SFT_STEPS = 150
DEMO_VOCAB = 768  # BPE stops at 663 tokens on this corpus: every word of the task is a single token
DEMO_RM_STEPS = 300  # 0.91-0.93 gold accuracy; benchmarks/rm_preference.py runs 600 (0.93-0.94)
DEMO_RM_LR = 2e-3


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


# --- rlft rm -----------------------------------------------------------------------------------------------


def _rm(args: argparse.Namespace, extra: list[str]) -> int:
    from rlft.run import plot_run, save_config
    from rlft.train import RMConfig, train_rm

    run, cfg = training_run(args, extra, RMConfig, "rm")
    save_config(cfg, run.config_path)
    print(f"rlft rm: {cfg.model} on {cfg.data}, run dir {run.root}", file=sys.stderr)
    result = train_rm(cfg, run, resume=bool(args.resume), show_progress=not args.no_progress)
    plot = plot_run(
        run,
        keys=[
            "loss",
            "accuracy",
            "eval_accuracy",
            "eval_gold_accuracy",
            "eval_reward_gap",
            "lr",
            "grad_norm",
        ],
    )
    evals = ", ".join(f"{k} {v:.4g}" for k, v in result.final_eval.items())
    norm = f"; reward mean {result.norm['mean']:.4g}, std {result.norm['std']:.4g}" if result.norm else ""
    print(
        f"done: {result.steps} steps in {result.seconds:.1f}s, train loss {result.train_loss:.4f}"
        + (f"; {evals}" if evals else "")
        + norm
        + f"\n  model:   {result.model_dir}\n  metrics: {run.metrics_path}\n  curve:   {plot}"
    )
    return 0


# --- rlft score --------------------------------------------------------------------------------------------


def _specs(args: argparse.Namespace) -> tuple[list[Any], str]:
    from rlft.run.config_yaml import load_yaml_file, parse_yaml_value

    specs: list[Any] = []
    if args.reward_model:
        specs.append(
            {"reward_model": args.reward_model, "batch_size": args.batch_size, "normalize": args.normalize}
        )
    on_invalid = args.on_invalid
    if args.rewards:
        data = load_yaml_file(args.rewards)
        unknown = sorted(set(data) - {"rewards", "on_invalid"})
        if unknown or not isinstance(data.get("rewards"), list):
            raise ConfigError(
                f"{args.rewards}: expected keys 'rewards' (a list of specs) and optional 'on_invalid'"
            )
        specs += data["rewards"]
        on_invalid = data.get("on_invalid", on_invalid)
    specs += [parse_yaml_value(text) for text in args.reward or []]
    if not specs:
        raise ConfigError("score: give --reward-model DIR, --reward SPEC (repeatable) or --rewards FILE.yaml")
    return specs, on_invalid


def _score(args: argparse.Namespace, extra: list[str]) -> int:
    from rlft.data import load_records
    from rlft.models import load_tokenizer
    from rlft.rewards import build_rewards
    from rlft.run import atomic_write_text

    _no_extra(extra)
    specs, on_invalid = _specs(args)
    records = load_records(args.data, fmt="prompt_completion", limit=args.limit)
    tokenizer_dir = args.tokenizer or args.reward_model
    lengths = None
    if tokenizer_dir:  # token counts for length/overlong rewards with unit: tokens
        tokenizer = load_tokenizer(tokenizer_dir)
        lengths = [
            len(ids)
            for ids in tokenizer([r.completion for r in records], add_special_tokens=False)["input_ids"]
        ]
    keys = sorted(set().union(*(r.extra for r in records)))
    rows = {k: [r.extra.get(k) for r in records] for k in keys}
    with build_rewards(specs, on_invalid=on_invalid) as rewards:
        result = rewards([r.prompt for r in records], [r.completion for r in records], rows, lengths)

    def num(x: float) -> float | None:
        return None if math.isnan(x) else x

    lines = []
    for i, r in enumerate(records):
        row = r.to_row()
        row["reward"] = num(float(result.total[i]))
        row["rewards"] = {name: num(float(v[i])) for name, v in result.per_function.items()}
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    means = ", ".join(f"{k} {v:.4g}" for k, v in result.means().items())
    print(
        f"scored {len(records)} rows with {', '.join(rewards.names)}: mean {means}"
        + (f"; {result.skipped} skipped" if result.skipped else "")
        + f"; {int((~result.valid).sum())} without a reward\n  scores: {args.out}"
    )
    return 0


# --- the demo stage ----------------------------------------------------------------------------------------


def preference_sft(
    out_root: Path, seed: int = 0, show_progress: bool = True, steps: int = DEMO_SFT_STEPS
) -> Path:
    """Build the 1m tiny model (tokenizer trained on the preference task's text) and SFT it briefly on the
    mediocre policy's demonstrations of ``task:preference``; returns the SFT model directory."""
    from rlft.commands.lm import _tokenizer_corpus
    from rlft.models import build_tiny_model
    from rlft.run import RunDir, save_config
    from rlft.train import SFTConfig, train_sft

    out_root = Path(out_root)
    # A vocabulary big enough that every word of the task is one token (at 512, BPE runs out of merges and
    # splits "robot" into r-o-b-o-t): shorter sequences, and topics the models need not spell out.
    corpus = _tokenizer_corpus(["preference"], seed)
    base = build_tiny_model(out_root / "tiny-1m", size="1m", corpus=corpus, vocab_size=DEMO_VOCAB, seed=seed)
    cfg = SFTConfig(
        model=str(base),
        data=f"task:preference?n=4000&seed={seed}",
        batch_size=64,
        lr=3e-3,
        warmup_steps=10,
        max_steps=steps,
        eval_samples=200,
        eval_generate=False,
        seed=seed,
    )
    run = RunDir.create(out_root / "sft", prefix="sft")
    save_config(cfg, run.config_path)
    result = train_sft(cfg, run, show_progress=show_progress)
    print(
        f"SFT on {cfg.data}: {result.steps} steps, eval loss "
        f"{result.initial_eval.get('eval_loss', math.nan):.3f} → {result.final_eval.get('eval_loss', math.nan):.3f}"
    )
    return result.model_dir


def rm_demo_stage(
    out_root: Path, sft_model_dir: Path, seed: int = 0, show_progress: bool = True, steps: int = DEMO_RM_STEPS
) -> dict[str, Any]:
    """Train a reward model from ``sft_model_dir`` on noisy preference labels of ``task:preference``; print
    held-out accuracy against the labels, against the hidden gold scorer, and the noise ceiling."""
    from rlft.data import get_task
    from rlft.run import RunDir, plot_run, save_config
    from rlft.train import RMConfig, train_rm

    start = time.monotonic()
    cfg = RMConfig(
        model=str(sft_model_dir),
        data=f"task:preference?n=16000&seed={seed}&label_noise={DEMO_LABEL_NOISE}",
        batch_size=32,
        lr=DEMO_RM_LR,
        warmup_steps=20,
        max_steps=steps,
        epochs=None,
        eval_every=max(steps // 4, 1),
        eval_samples=1000,
        seed=seed,
    )
    run = RunDir.create(Path(out_root) / "rm", prefix="rm")
    save_config(cfg, run.config_path)
    result = train_rm(cfg, run, show_progress=show_progress)
    plot = plot_run(run, keys=["loss", "accuracy", "eval_accuracy", "eval_gold_accuracy", "eval_reward_gap"])
    ceiling = get_task("preference").noise_ceiling(DEMO_LABEL_NOISE)
    before, after = result.initial_eval, result.final_eval
    seconds = time.monotonic() - start
    print(f"\nReward model from the SFT model on {cfg.data} ({result.steps} steps, pairwise loss)")
    print(f"{'held-out pairs':28}{'before':>10}{'after':>10}")
    for key, name in (
        ("eval_accuracy", "accuracy vs labels"),
        ("eval_gold_accuracy", "accuracy vs gold"),
        ("eval_reward_gap", "mean reward gap"),
        ("eval_loss", "eval loss"),
    ):
        print(f"{name:28}{before.get(key, math.nan):>10.4f}{after.get(key, math.nan):>10.4f}")
    print(
        f"noise ceiling vs labels (label_noise {DEMO_LABEL_NOISE}): {ceiling:.3f}   "
        f"held-out records: {cfg.eval_samples}   time: {seconds:.0f}s\n"
        f"  reward model: {result.model_dir} (mean {result.norm.get('mean', math.nan):.3f}, "
        f"std {result.norm.get('std', math.nan):.3f})\n  plot:         {plot}"
    )
    return {
        "reward_model": result.model_dir,
        "run_dir": run.root,
        "accuracy": after.get("eval_accuracy", math.nan),
        "gold_accuracy": after.get("eval_gold_accuracy", math.nan),
        "noise_ceiling": ceiling,
        "reward_gap": after.get("eval_reward_gap", math.nan),
        "norm": result.norm,
        "steps": result.steps,
        "seconds": seconds,
    }


# --- registration ------------------------------------------------------------------------------------------


def add_reward_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``rm`` and ``score`` to the ``rlft`` subparsers."""
    rm = sub.add_parser(
        "rm", help="train a reward model; extra --key value pairs override the config", allow_abbrev=False
    )
    rm.add_argument("--config", type=Path, help="YAML config file (keys of RMConfig)")
    rm.add_argument("--out", help="run directory (default: output_dir, else runs/rm-TIMESTAMP)")
    rm.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    rm.add_argument("--no-progress", action="store_true")
    rm.set_defaults(func=_rm)

    score = sub.add_parser(
        "score",
        help="score prompt/completion rows with a reward model and/or reward functions",
        allow_abbrev=False,
    )
    score.add_argument("--data", required=True, help="prompt/completion rows (.jsonl/.json/.csv/.parquet)")
    score.add_argument("--out", required=True, help="JSONL to write: each row plus 'reward' and 'rewards'")
    score.add_argument("--reward-model", help="a reward model directory (from `rlft rm` or the hub)")
    score.add_argument("--normalize", action="store_true", help="(r − mean)/std with the model's saved stats")
    score.add_argument("--batch-size", type=int, default=32, help="reward-model batch size")
    score.add_argument(
        "--reward",
        action="append",
        help="a reward spec, e.g. exact_match or '{name: overlong, max_len: 32, cache: 8}'",
    )
    score.add_argument("--rewards", help="YAML file with 'rewards: [specs]' and optional 'on_invalid'")
    score.add_argument("--on-invalid", default="error", choices=["error", "skip"])
    score.add_argument("--tokenizer", help="tokenizer for token counts (default: the reward model's)")
    score.add_argument("--limit", type=int, help="score only the first N rows")
    score.set_defaults(func=_score)
