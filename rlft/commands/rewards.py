"""Reward commands: ``rm`` (train a reward model) and ``score`` (score prompt/completion rows).

``rlft/cli.py`` calls :func:`add_reward_commands`; each command's function takes ``(args, extra)`` and
returns an exit code. User errors are raised as ConfigError / DataError / ModelError / RewardError.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any, cast

from rlft.run import ConfigError
from rlft.run.distributed import is_main

from .run_setup import (
    add_compute_arguments,
    add_training_parser,
    announce,
    compute_of,
    no_extra,
    print_done,
    save_run_config,
    training_run,
)

__all__ = ["add_reward_commands"]


# --- rlft rm -----------------------------------------------------------------------------------------------


def _rm(args: argparse.Namespace, extra: list[str]) -> int:
    from rlft.run import plot_run
    from rlft.train import RMConfig, train_rm

    run, cfg = training_run(args, extra, RMConfig, "rm")
    save_run_config(cfg, run)
    announce(f"rlft rm: {cfg.model} on {cfg.data}, run dir {run.root}")
    result = train_rm(
        cfg, run, resume=bool(args.resume), show_progress=not args.no_progress, stop_after=args.stop_after
    )
    if is_main():
        keys = ["loss", "accuracy", "eval_accuracy", "eval_gold_accuracy", "eval_reward_gap", "lr", "grad_norm"]
        norm = f"; reward mean {result.norm['mean']:.4g}, std {result.norm['std']:.4g}" if result.norm else ""
        print_done(result, run, plot_run(run, keys=keys), norm)
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
    from rlft.data import PromptCompletionRecord, load_records
    from rlft.models import load_tokenizer
    from rlft.models.precision import bf16_autocast
    from rlft.rewards import build_rewards
    from rlft.run import atomic_write_text

    no_extra(extra)
    specs, on_invalid = _specs(args)
    # fmt="prompt_completion" validates every record into that shape
    records = cast(
        list[PromptCompletionRecord], load_records(args.data, fmt="prompt_completion", limit=args.limit)
    )
    tokenizer_dir = args.tokenizer or args.reward_model
    lengths = None
    if tokenizer_dir:  # token counts for length/overlong rewards with unit: tokens
        tokenizer = load_tokenizer(tokenizer_dir)
        lengths = [
            len(ids)
            for ids in tokenizer([r.completion for r in records], add_special_tokens=False)["input_ids"]
        ]
    keys = sorted(set().union(*(r.extra for r in records)))
    rows: dict[str, Sequence[object]] = {k: [r.extra.get(k) for r in records] for k in keys}
    device = compute_of(args)
    with build_rewards(specs, on_invalid=on_invalid) as rewards, bf16_autocast(args.precision == "bf16", device.type):
        rewards.place(device)
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


# --- registration ------------------------------------------------------------------------------------------


def add_reward_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rm`` and ``score`` to the ``rlft`` subparsers."""
    add_training_parser(
        sub, "rm", "train a reward model; extra --key value pairs override the config", "RMConfig", _rm
    )

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
    add_compute_arguments(score)
    score.set_defaults(func=_score)
