"""Acceptance run for DPO (issue 8): build the 1m tiny model, SFT it on ``task:preference``, run DPO on
noisy preference pairs of the task, and report the gold win rate of the DPO model against the SFT model
(the reference) on held-out prompts, with the mean gold score before and after.

    .venv/bin/python benchmarks/dpo_preference.py                       # the demo's settings, seed 0
    .venv/bin/python benchmarks/dpo_preference.py --seeds 0 1 2 --steps 200 --beta 0.5

The win rate compares ``win_rate_samples`` sampled completions per held-out prompt from both models with
the same sampling seeds (so it is exactly 0.5 before training). Wall-clock times include the SFT stage;
run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlft.commands.demo import DEMO_DPO, dpo_demo_stage, preference_sft
from rlft.commands.demo import DEMO_PREFERENCE_SFT_STEPS as DEMO_SFT_STEPS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=DEMO_DPO["max_steps"], help="DPO optimiser steps")
    parser.add_argument("--beta", type=float, default=DEMO_DPO["beta"])
    parser.add_argument("--lr", type=float, default=DEMO_DPO["lr"])
    parser.add_argument("--loss", default=DEMO_DPO["loss"])
    parser.add_argument("--batch-size", type=int, default=DEMO_DPO["batch_size"])
    parser.add_argument("--pairs", type=int, default=DEMO_DPO["n"], help="training pairs drawn from the task")
    parser.add_argument("--label-noise", type=float, default=DEMO_DPO["label_noise"])
    parser.add_argument("--win-rate-samples", type=int, default=DEMO_DPO["win_rate_samples"])
    parser.add_argument("--sft-steps", type=int, default=DEMO_SFT_STEPS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            root = Path(args.out or tmp) / f"seed{seed}"
            t0 = time.monotonic()
            sft_dir = preference_sft(root, seed=seed, show_progress=False, steps=args.sft_steps)
            t_sft = time.monotonic() - t0
            out = dpo_demo_stage(
                root,
                sft_dir,
                seed=seed,
                show_progress=False,
                loss=args.loss,
                beta=args.beta,
                lr=args.lr,
                batch_size=args.batch_size,
                max_steps=args.steps,
                eval_every=max(args.steps // 4, 1),
                n=args.pairs,
                label_noise=args.label_noise,
                win_rate_samples=args.win_rate_samples,
                torch_threads=args.threads,
            )
            rows.append((seed, t_sft, out))
    print(
        f"\nDPO ({args.loss}, β={args.beta}, lr {args.lr}) on task:preference, {args.pairs} pairs with label "
        f"noise {args.label_noise}, {args.steps} steps × {args.batch_size} pairs, {args.threads} threads"
    )
    print(f"{'seed':>4}{'win rate':>10}{'gold before':>13}{'gold after':>12}{'SFT s':>8}{'DPO s':>8}")
    for seed, t_sft, out in rows:
        print(
            f"{seed:>4}{out['win_rate_after']:>10.3f}{out['gold_before']:>13.3f}{out['gold_after']:>12.3f}"
            f"{t_sft:>8.0f}{out['seconds']:>8.0f}"
        )
    if len(rows) > 1:
        wins = [out["win_rate_after"] for _, _, out in rows]
        print(f"mean win rate {statistics.fmean(wins):.3f} (min {min(wins):.3f}, max {max(wins):.3f})")
    print("win rate before training: 0.500 by construction (identical samples); target: a clear margin")


if __name__ == "__main__":
    main()
