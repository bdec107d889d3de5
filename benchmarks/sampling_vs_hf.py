"""rlft sampling vs Hugging Face ``generate`` on the offline tiny models (CPU).

    .venv/bin/python benchmarks/sampling_vs_hf.py [--sizes 1m,15m] [--repeats 7] [--wait-idle 600]

For each size: batch 64 prompts × exactly 64 new tokens (EOS ignored on both sides), runs interleaved
A/B/C… per repeat, medians and the median of per-pair ratios. MFU = 2·N·tokens / time / peak, with
tokens = non-pad prompt tokens + generated tokens and N the parameter count; the peak is float32
2048×2048 ``torch.matmul`` measured in the same run (the MFU denominator of benchmarks/RESULTS.md §How the
figures are measured). The oneDNN float32
rate is printed too because the fast decode step uses oneDNN (see rlft/models/fused/onednn.py) and that is
the honest ceiling for it. Also: the bf16 autocast option's speed and its log-prob error against
float32 ``token_logprobs``, and whether dropping finished rows (batch compaction) pays off when
sequences end at different lengths.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rlft.models import (
    SamplingParams,
    build_tiny_model,
    encode_prompts,
    load_causal_lm,
    load_tokenizer,
    response_logprobs,
    sample,
)
from rlft.models.fused.onednn import onednn_linear_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_busy, matmul_gflops, wait_idle


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hf_generate(model, ids, mask, new_tokens: int, pad_id: int, seed: int):
    torch.manual_seed(seed)
    with torch.inference_mode():
        return model.generate(
            ids,
            attention_mask=mask,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            use_cache=True,
            pad_token_id=pad_id,
        )


def bench_size(size: str, root: Path, args, peaks: dict[str, float]) -> list[dict]:
    path = build_tiny_model(root / size, size=size)
    model, tokenizer = load_causal_lm(str(path)), load_tokenizer(str(path))
    n_params = sum(p.numel() for p in model.parameters())
    rng = random.Random(0)
    prompts = [f"{rng.randint(0, 99)}+{rng.randint(0, 99)}=" for _ in range(args.batch)]
    ids, mask = encode_prompts(tokenizer, prompts, tokenizer.pad_token_id)
    prompt_tokens = int(mask.sum())
    new = args.new_tokens
    generated = args.batch * new

    def ours(bf16: bool = False, decoder: str = "auto", seed: int = 0):
        params = SamplingParams(max_new_tokens=new, ignore_eos=True, seed=seed, bf16=bf16)
        return sample(model, tokenizer, prompts, params, decoder=decoder)

    runs: dict[str, Callable[[int], object]] = {
        "HF generate": lambda s: hf_generate(model, ids, mask, new, tokenizer.pad_token_id, s),
        "rlft sample": lambda s: ours(seed=s),
        "rlft sample bf16": lambda s: ours(bf16=True, seed=s),
    }
    if args.generic:
        runs["rlft sample (generic HF body)"] = lambda s: ours(decoder="hf", seed=s)
    for fn in runs.values():  # warm-up (weight packing, allocator, lazy init)
        fn(0)
    times: dict[str, list[float]] = {name: [] for name in runs}
    busy = []
    for r in range(args.repeats):
        busy.append(cpu_busy(0.3))
        for name, fn in runs.items():  # interleaved A B C … per repeat
            times[name].append(timed(lambda fn=fn, r=r: fn(r + 1)))

    # bf16 accuracy: sampled log-probs under bf16 autocast vs float32 recomputation of the same tokens
    rollout = ours(bf16=True, seed=123)
    with torch.inference_mode():
        ref = response_logprobs(
            model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask
        )
    err = (rollout.logprobs - ref).abs()[rollout.response_mask.bool()]
    check = ours(seed=123)  # float32 path agrees with token_logprobs
    with torch.inference_mode():
        ref32 = response_logprobs(
            model, check.prompt_ids, check.prompt_mask, check.response_ids, check.response_mask
        )
    err32 = (check.logprobs - ref32).abs().max().item()

    hf_times = times["HF generate"]
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        flops = 2 * n_params * (prompt_tokens + generated) / med / 1e9
        peak = peaks["bf16"] if "bf16" in name else peaks["fp32"]
        rows.append(
            {
                "size": size,
                "params": n_params,
                "run": name,
                "median_s": med,
                "tok_s": generated / med,
                "vs_hf": statistics.median(h / t for h, t in zip(hf_times, ts, strict=True)),
                "gflops": flops,
                "mfu": flops / peak,
                "mfu_onednn": flops / (peaks["bf16"] if "bf16" in name else peaks["fp32_onednn"]),
                "bf16_err": (err.max().item(), err.mean().item()) if "bf16" in name else None,
                "fp32_err": err32 if name == "rlft sample" else None,
                "busy": max(busy),
            }
        )
    if args.compaction:
        rows.extend(bench_compaction(model, tokenizer, prompts, size, args))
    return rows


def bench_compaction(model, tokenizer, prompts, size, args) -> list[dict]:
    """Natural stopping at varied lengths: compaction on (default 25%) vs off, interleaved."""
    # An "EOS" set of ~2% of the vocabulary makes lengths roughly geometric with mean ~40 tokens.
    eos = tuple(range(40, 40 + max(1, len(tokenizer) // 50)))
    params = [
        SamplingParams(max_new_tokens=args.new_tokens, eos_token_ids=eos, seed=s) for s in range(args.repeats)
    ]
    variants = {"compaction at 25%": 0.25, "no compaction": 1.0}
    times = {name: [] for name in variants}
    tokens = {name: [] for name in variants}
    for at in variants.values():  # warm-up
        sample(model, tokenizer, prompts, params[0], compact_at=at)
    for p in params:
        for name, at in variants.items():
            start = time.perf_counter()
            rollout = sample(model, tokenizer, prompts, p, compact_at=at)
            times[name].append(time.perf_counter() - start)
            tokens[name].append(int(rollout.response_mask.sum()))
    base = times["no compaction"]
    return [
        {
            "size": size,
            "run": f"natural EOS, {name}",
            "median_s": statistics.median(ts),
            "tok_s": statistics.median(n / t for n, t in zip(tokens[name], ts, strict=True)),
            "vs_no_compaction": statistics.median(b / t for b, t in zip(base, ts, strict=True)),
            "mean_len": statistics.mean(tokens[name]) / len(prompts),
        }
        for name, ts in times.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1m,15m")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--wait-idle", type=float, default=0.0, help="wait up to this many s for an idle CPU")
    parser.add_argument(
        "--no-generic", dest="generic", action="store_false", help="skip the generic-path run"
    )
    parser.add_argument("--no-compaction", dest="compaction", action="store_false")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.wait_idle:
        print(f"CPU busy before start: {wait_idle(args.wait_idle):.0%}")
    load_start = os.getloadavg()[0]

    peaks = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    peaks["fp32_onednn"] = (
        matmul_gflops(torch.float32, onednn=True) if onednn_linear_available() else peaks["fp32"]
    )
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            rows.extend(bench_size(size.strip(), Path(tmp), args, peaks))
    peaks_end = matmul_gflops(torch.float32)
    if peaks_end > peaks["fp32"]:  # MFU rows below used the start value; report against the higher one
        scale = peaks["fp32"] / peaks_end
        for row in rows:
            if "mfu" in row and "bf16" not in row["run"]:
                row["mfu"] *= scale

    print(
        f"\nthreads={args.threads}  batch={args.batch}  new tokens={args.new_tokens} (EOS ignored)  "
        f"repeats={args.repeats}  oneDNN decode={'on' if onednn_linear_available() else 'off'}  "
        f"load average (1 min) {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    print(
        f"peaks (2048² matmul, GFLOP/s): float32 torch.matmul {peaks['fp32']:.0f} at start, {peaks_end:.0f} at end "
        f"(MFU uses the higher), "
        f"float32 oneDNN {peaks['fp32_onednn']:.0f}, bfloat16 {peaks['bf16']:.0f}"
    )
    header = f"{'size':>4} {'run':<30} {'median s':>9} {'tok/s':>8} {'vs HF':>6} {'GFLOP/s':>8} {'MFU':>5} {'MFU*':>5}"
    print(header + "   notes")
    print("-" * (len(header) + 30))
    for row in rows:
        if "vs_hf" in row:
            notes = []
            if row["bf16_err"]:
                notes.append(
                    f"log-prob err vs fp32 max {row['bf16_err'][0]:.3f} mean {row['bf16_err'][1]:.4f}"
                )
            if row["fp32_err"] is not None:
                notes.append(f"|Δ log-prob| vs token_logprobs {row['fp32_err']:.1e}")
            if row["busy"] > 0.05:
                notes.append(f"other load up to {row['busy']:.0%}")
            print(
                f"{row['size']:>4} {row['run']:<30} {row['median_s']:>9.3f} {row['tok_s']:>8.0f} "
                f"{row['vs_hf']:>5.2f}x {row['gflops']:>8.1f} {row['mfu']:>5.0%} {row['mfu_onednn']:>5.0%}   "
                + "; ".join(notes)
            )
        else:
            print(
                f"{row['size']:>4} {row['run']:<30} {row['median_s']:>9.3f} {row['tok_s']:>8.0f} "
                f"{'':>6} {'':>8} {'':>5} {'':>5}   {row['vs_no_compaction']:.2f}x vs no compaction, "
                f"mean length {row['mean_len']:.1f}"
            )
    print(
        "MFU = 2·params·(prompt + generated tokens)/time ÷ float32 torch.matmul peak (bf16 rows: ÷ bf16 peak); "
        "MFU* uses the float32 oneDNN peak."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
