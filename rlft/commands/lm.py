"""Language-model commands: ``init-model``, ``sft``, ``generate`` and ``lm-demo`` (its stages: ``demo.py``).

``rlft/cli.py`` calls :func:`add_lm_commands`; each command's function takes ``(args, extra_overrides)``
and returns an exit code. User errors are raised as ConfigError / DataError / ModelError (one line).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlft.run import ConfigError
from rlft.run.distributed import is_main

from .demo import LM_DEMO_STAGES, lm_demo, parse_stages, tokenizer_corpus
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

if TYPE_CHECKING:
    from rlft.data import Record

__all__ = ["add_lm_commands"]


def _init_model(args: argparse.Namespace, extra: list[str]) -> int:
    from rlft.models import build_tiny_model

    no_extra(extra)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else []
    out = build_tiny_model(
        args.out,
        size=args.size,
        corpus=tokenizer_corpus(tasks, args.seed),
        vocab_size=args.vocab_size,
        seed=args.seed,
    )
    print(f"tiny {args.size} model (tokenizer corpus: {', '.join(tasks) or 'default'}) saved to {out}")
    return 0


def _sft(args: argparse.Namespace, extra: list[str]) -> int:
    from rlft.run import plot_run
    from rlft.train import SFTConfig, train_sft

    run, cfg = training_run(args, extra, SFTConfig, "sft")
    save_run_config(cfg, run)
    announce(f"rlft sft: {cfg.model} on {cfg.data}, run dir {run.root}")
    result = train_sft(
        cfg, run, resume=bool(args.resume), show_progress=not args.no_progress, stop_after=args.stop_after
    )
    if is_main():
        plot = plot_run(run, keys=["loss", "eval_loss", "eval_accuracy", "lr", "grad_norm", "tokens_per_s"])
        print_done(result, run, plot)
    return 0


def _read_prompts(path: str, limit: int) -> Sequence[Record]:
    """Prompt records of ``path``: a .txt file (one string prompt per line) or any data file with
    prompts (string or conversational)."""
    from rlft.data import load_records, load_text_prompts

    if Path(path).suffix.lower() == ".txt":
        return load_text_prompts(path, limit)
    return load_records(path, fmt="prompt_only", limit=limit)


def parse_chat_template_kwargs(text: str | None) -> dict[str, Any]:
    """``--chat-template-kwargs '{"enable_thinking": false}'`` → a dict (one-line error otherwise)."""
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"--chat-template-kwargs: expected a JSON object, got {text!r} ({err.msg})"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"--chat-template-kwargs: expected a JSON object, got {text!r}")
    return value


def _generate(args: argparse.Namespace, extra: list[str]) -> int:
    from rlft.data import encode_prompts, load_records, set_chat_template_kwargs
    from rlft.data.tasks import task_of
    from rlft.models import SamplingParams, load_causal_lm, load_tokenizer, sample
    from rlft.models.device import place
    from rlft.train.common.chat_stops import stop_at_end_of_turn

    no_extra(extra)
    if (args.prompts is None) == (args.task is None):
        raise ConfigError("generate: give exactly one of --prompts FILE or --task NAME")
    device = compute_of(args)
    model, tokenizer = place(load_causal_lm(args.model), device), load_tokenizer(args.model)
    set_chat_template_kwargs(tokenizer, parse_chat_template_kwargs(args.chat_template_kwargs))
    stop_at_end_of_turn(model, tokenizer)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        n=args.n,
        greedy=args.greedy,
        seed=args.seed,
        bf16=args.precision == "bf16",
    )
    task, extra_fields = None, {}
    if args.task:
        source = args.task if args.task.startswith("task:") else f"task:{args.task}"
        records: Sequence[Record] = load_records(source, fmt="prompt_only", split="eval", limit=args.limit)
        task = task_of(source)
        keys = set().union(*(r.extra for r in records))
        # each field repeated n times, to line up with the n completions per prompt
        extra_fields = {k: [r.extra.get(k) for r in records for _ in range(args.n)] for k in keys}
    else:
        records = _read_prompts(args.prompts, args.limit)
    # The trainers' encoding: string prompts with the tokenizer's special tokens, conversational ones
    # rendered by the chat template with the generation prompt.
    examples = encode_prompts(records, tokenizer)
    prompts = [e.prompt for e in examples]
    rollout = sample(model, tokenizer, [e.prompt_ids for e in examples], params)
    rows = [prompts[int(g)] for g in rollout.group_ids]
    rewards = task.reward(rows, rollout.texts, **extra_fields) if task is not None else None
    for i, (prompt, text) in enumerate(zip(rows, rollout.texts, strict=True)):
        shown = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        line = f"{shown!r} → {text!r}"
        print(line + (f"   reward {rewards[i]:g}" if rewards is not None else ""))
    if rewards is not None:
        print(f"mean reward {sum(rewards) / len(rewards):.3f} over {len(rewards)} completions")
    return 0


def _lm_demo(args: argparse.Namespace, extra: list[str]) -> int:
    no_extra(extra)
    out = Path(args.out) if args.out else Path("runs") / f"lm-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    return lm_demo(out, seed=args.seed, show_progress=not args.no_progress, stages=parse_stages(args.stages))


def add_lm_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``init-model``, ``sft``, ``generate`` and ``lm-demo`` to the ``rlft`` subparsers."""
    from rlft.models import TINY_SIZES

    init = sub.add_parser("init-model", help="build an offline tiny Llama + tokenizer", allow_abbrev=False)
    init.add_argument("--size", default="1m", choices=sorted(TINY_SIZES))
    init.add_argument("--out", required=True, help="model directory to write")
    init.add_argument(
        "--tasks", default="arithmetic", help="comma-separated tasks whose text trains the tokenizer"
    )
    init.add_argument("--vocab-size", type=int, default=512)
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=_init_model)

    add_training_parser(
        sub, "sft", "supervised fine-tuning; extra --key value pairs override the config", "SFTConfig", _sft
    )

    gen = sub.add_parser("generate", help="sample completions from a model", allow_abbrev=False)
    gen.add_argument("--model", required=True)
    gen.add_argument("--prompts", help="a .txt file (one prompt per line) or any data file with prompts")
    gen.add_argument(
        "--task", help="a built-in task (eval split), e.g. arithmetic or 'task:arithmetic?max_operand=20'"
    )
    gen.add_argument("--n", type=int, default=1, help="completions per prompt")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--greedy", action="store_true")
    gen.add_argument("--limit", type=int, default=10, help="number of prompts")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--chat-template-kwargs",
        metavar="JSON",
        help="extra variables for the chat template, e.g. '{\"enable_thinking\": false}'",
    )
    add_compute_arguments(gen)
    gen.set_defaults(func=_generate)

    demo = sub.add_parser(
        "lm-demo",
        help="tiny models: SFT → GRPO on arithmetic, SFT → reward model and DPO on preference",
        allow_abbrev=False,
    )
    demo.add_argument("--stages", default=",".join(LM_DEMO_STAGES), help="comma-separated subset to run")
    demo.add_argument("--out", help="output root (default runs/lm-demo-TIMESTAMP)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_lm_demo)
