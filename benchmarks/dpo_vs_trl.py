"""rlft DPO vs TRL's DPOTrainer, side by side on the same model directory, data and batch (CPU).

    .venv/bin/python benchmarks/dpo_vs_trl.py [--sizes tiny,small] [--repeats 3] [--steps 8] [--warmup 2]
        [--variants ref-fp32,ref-bf16,pre-fp32,pre-bf16] [--trl-python /work/trl-venv/bin/python]
        [--wait-idle 600] [--quick]

Workload (benchmarks/RESULTS.md §How the figures are measured): Llama models with a 53-token
character-level tokenizer, "tiny" = hidden 128,
4 layers (1.06M parameters) and "small" = hidden 384, 6 layers (14.2M), tied embeddings, built here and
saved once; both sides load that directory. Batch: 16 preference pairs per step, every sequence exactly
65 tokens (a 16-character prompt, a 48-character completion and EOS; TRL appends the EOS itself, rlft's
tokenisation does too), β = 0.1, sigmoid loss, AdamW, lr 1e-5, grad-norm clip 1.0, 2 torch threads.
Variants: the reference recomputed every step ("ref", TRL ``precompute_ref_log_probs=False``, rlft
``precompute_ref: false``) or precomputed before the timed steps ("pre"), in float32 or with bfloat16
(TRL ``bf16=True`` = CPU autocast; rlft ``precision: bf16``).

TRL is configured as benchmarks/RESULTS.md §How the figures are measured describes:
``gradient_checkpointing=False``, ``use_cpu=True``,
logging, saving and tqdm off, ``dataloader_num_workers=0``. Both sides run as subprocesses with their
own interpreter (TRL lives in a separate venv) and the same environment, including the tuned glibc
malloc settings. rlft runs its real trainer (``train_dpo``, what ``rlft dpo`` runs).

Step time: wall time between the ends of consecutive optimiser steps (so data loading, logging and every
other per-step cost are in), after ``--warmup`` steps; per run the median of ``--steps`` steps. Runs are
interleaved (TRL, rlft, TRL, rlft, ... per repeat); reported: median over repeats of those medians, and
the median of the per-repeat ratios rlft / TRL. MFU = model FLOPs / time / peak with model FLOPs =
6·N·tokens for the policy's forward+backward plus 2·N·tokens for the reference forward when it is
recomputed (tokens = 2 × 16 × 65 = 2080 per step, N = parameter count) — the same nominal work for both
sides, whatever either side skips — and the peak = 2048² ``torch.matmul`` GFLOP/s measured in this run
(float32; bfloat16 for the bf16 variants). rlft's float32 matmuls use oneDNN, faster than that peak on
AMD CPUs, so its float32 "MFU" can pass 100%; the oneDNN float32 rate is printed too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_busy, matmul_gflops, wait_idle

PAIRS, PROMPT_CHARS, COMPLETION_CHARS = 16, 16, 48  # + EOS = 65 tokens per sequence
SIZES = {"tiny": (128, 4, 4), "small": (384, 6, 6)}  # hidden, layers, heads
VARIANTS = ("ref-fp32", "ref-bf16", "pre-fp32", "pre-bf16")
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = "0123456789abcdefghijklmnopqrstuvwxyz +-=*/?.,:;!()"[:49]  # 49 + 4 specials = 53 tokens
TUNED_MALLOC = ":".join(
    [
        "glibc.malloc.mmap_threshold=33554432",
        "glibc.malloc.trim_threshold=4294967296",
        "glibc.malloc.top_pad=268435456",
    ]
)
LR, BETA, THREADS = 1e-5, 0.1, 2


# --- setup (runs in rlft's venv) --------------------------------------------------------------------------


def build_char_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    assert len(tokenizer) == 53
    return tokenizer


def build_model(size: str, out: Path) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads = SIZES[size]
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    letters = CHARS[:36]

    def text(k: int) -> str:
        return "".join(rng.choice(letters) for _ in range(k))

    with open(path, "w") as f:
        for _ in range(n):
            row = {
                "prompt": text(PROMPT_CHARS),
                "chosen": text(COMPLETION_CHARS),
                "rejected": text(COMPLETION_CHARS),
            }
            f.write(json.dumps(row) + "\n")


# --- workers: one side, one model, the listed variants; print JSON of step times ------------------------


def _step_gaps(ends: list[float], warmup: int) -> list[float]:
    gaps = [b - a for a, b in itertools.pairwise(ends)]  # gaps[i]: the duration of step i + 2
    return gaps[max(warmup - 1, 0) :]


def worker_rlft(args: argparse.Namespace) -> dict:
    import torch

    from rlft.run import RunDir, read_metrics
    from rlft.train import DPOConfig, train_dpo

    torch.set_num_threads(THREADS)
    out = {}
    for variant in args.variants.split(","):
        ref, dtype = variant.split("-")
        root = Path(tempfile.mkdtemp(prefix=f"rlft-{variant}-", dir=args.scratch))
        cfg = DPOConfig(
            model=args.model,
            data=args.data,
            loss="sigmoid",
            beta=BETA,
            batch_size=PAIRS,
            lr=LR,
            min_lr_ratio=1.0,
            max_steps=args.warmup + args.steps,
            max_grad_norm=1.0,
            precompute_ref=ref == "pre",
            ref_cache_dir=str(root / "cache"),
            precision=dtype,
            torch_threads=THREADS,
            win_rate=False,
            share_prompts=not args.no_share_prompt,
        )
        run = RunDir.create(root / "run")
        result = train_dpo(cfg, run, show_progress=False, log=lambda _: None)
        rows = [r for r in read_metrics(run.metrics_path) if "loss" in r]
        ends = [r["time"] for r in rows]
        out[variant] = {
            "steps": _step_gaps(ends, args.warmup),
            "first_loss": rows[0]["loss"],
            "done": result.steps,
        }
    return out


def worker_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(THREADS)

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, *a, **k) -> None:
            self.ends.append(time.perf_counter())

    dataset = load_dataset("json", data_files=args.data, split="train")
    out = {}
    for variant in args.variants.split(","):
        ref, dtype = variant.split("-")
        root = Path(tempfile.mkdtemp(prefix=f"trl-{variant}-", dir=args.scratch))
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        config = DPOConfig(
            output_dir=str(root),
            per_device_train_batch_size=PAIRS,
            gradient_accumulation_steps=1,
            max_steps=args.warmup + args.steps,
            learning_rate=LR,
            lr_scheduler_type="constant",
            beta=BETA,
            loss_type=["sigmoid"],
            max_grad_norm=1.0,
            gradient_checkpointing=False,
            bf16=dtype == "bf16",
            use_cpu=True,
            precompute_ref_log_probs=ref == "pre",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        clock = StepClock()
        trainer = DPOTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock]
        )
        trainer.train()
        out[variant] = {"steps": _step_gaps(clock.ends, args.warmup), "done": len(clock.ends)}
    return out


# --- the driver ---------------------------------------------------------------------------------------------


def run_worker(
    python: str, side: str, model: Path, data: Path, args: argparse.Namespace, scratch: Path
) -> dict:
    env = dict(
        os.environ,
        GLIBC_TUNABLES=TUNED_MALLOC,
        OMP_NUM_THREADS=str(THREADS),
        TQDM_DISABLE="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    env.pop("PYTHONPATH", None)
    if side == "rlft":
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        side,
        "--model",
        str(model),
        "--data",
        str(data),
        "--variants",
        args.variants,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--scratch",
        str(scratch),
        *(["--no-share-prompt"] if args.no_share_prompt else []),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--trl-python", default="/work/trl-venv/bin/python")
    parser.add_argument(
        "--wait-idle", type=float, default=0.0, help="wait up to this many seconds for an idle CPU"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 3 steps, 1 warm-up")
    parser.add_argument(
        "--no-share-prompt",
        action="store_true",
        help="rlft scores each prompt once per completion, as TRL does",
    )
    parser.add_argument("--worker", choices=("rlft", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker_rlft(args) if args.worker == "rlft" else worker_trl(args)
        print(json.dumps(result))
        return
    if args.quick:
        args.repeats, args.steps, args.warmup = 1, 3, 1
    for v in args.variants.split(","):
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; expected some of {', '.join(VARIANTS)}")

    root = Path(tempfile.mkdtemp(prefix="dpo-vs-trl-"))
    data = root / "pairs.jsonl"
    write_pairs(data, PAIRS * (args.warmup + args.steps))
    models = {}
    for size in args.sizes.split(","):
        models[size] = (root / size, build_model(size, root / size))
    busy_before = wait_idle(args.wait_idle) if args.wait_idle else cpu_busy()
    import torch

    peaks = {
        "fp32": matmul_gflops(torch.float32, threads=THREADS),
        "bf16": matmul_gflops(torch.bfloat16, threads=THREADS),
        "fp32 oneDNN": matmul_gflops(torch.float32, onednn=True, threads=THREADS),
    }
    print(
        f"peaks (2048² matmul, {THREADS} threads): float32 {peaks['fp32']:.0f}, bfloat16 {peaks['bf16']:.0f}, "
        f"float32 oneDNN {peaks['fp32 oneDNN']:.0f} GFLOP/s; other load on the CPUs before: {busy_before:.0%}",
        flush=True,
    )
    times: dict[tuple[str, str, str], list[float]] = {}
    ours_python = sys.executable
    for rep in range(args.repeats):
        for size, (path, _) in models.items():
            for side, python in (("trl", args.trl_python), ("rlft", ours_python)):  # interleaved T R T R …
                started = time.time()
                result = run_worker(python, side, path, data, args, root)
                for variant, rec in result.items():
                    times.setdefault((size, variant, side), []).append(statistics.median(rec["steps"]))
                print(
                    f"  repeat {rep + 1} {size:5} {side:4} done in {time.time() - started:.0f}s", flush=True
                )
    busy_after = cpu_busy()

    tokens = 2 * PAIRS * (PROMPT_CHARS + COMPLETION_CHARS + 1)
    print(
        f"\n{'model':6} {'variant':9} {'TRL s':>8} {'rlft s':>8} {'rlft/TRL':>9} {'TRL MFU':>8} {'rlft MFU':>9}"
    )
    for size, (_, n_params) in models.items():
        for variant in args.variants.split(","):
            trl, ours = times[(size, variant, "trl")], times[(size, variant, "rlft")]
            flops = (6 + (2 if variant.startswith("ref") else 0)) * n_params * tokens
            peak = peaks["bf16" if variant.endswith("bf16") else "fp32"] * 1e9
            ratio = statistics.median(o / t for o, t in zip(ours, trl, strict=True))
            mt, mo = statistics.median(trl), statistics.median(ours)
            mfu_trl, mfu_ours = flops / mt / peak, flops / mo / peak
            print(
                f"{size:6} {variant:9} {mt:8.3f} {mo:8.3f} {ratio:9.2f} {mfu_trl:8.0%} {mfu_ours:9.0%}"
                f"   (N={n_params / 1e6:.2f}M)"
            )
    print(
        f"\nother load on the CPUs after: {busy_after:.0%} (timings are only meaningful on an idle machine)"
    )


if __name__ == "__main__":
    main()
