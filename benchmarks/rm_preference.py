"""Acceptance run for the reward-model trainer: build the 1m tiny model, SFT it on ``task:preference``,
train a reward model on noisy preference labels, and report held-out pairwise accuracy against the labels
and against the hidden gold scorer, next to the ceiling the label noise allows.

    .venv/bin/python benchmarks/rm_preference.py                     # the acceptance run: 600 steps
    .venv/bin/python benchmarks/rm_preference.py --steps 300 --threads 1  # the demo's settings
    .venv/bin/python benchmarks/rm_preference.py --label-noise 0 --out /tmp/rm-bench

Wall-clock times include everything (tokenizer, SFT, RM, evaluation); run it on an idle machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rlft.commands.demo import DEMO_LABEL_NOISE, DEMO_RM_LR, preference_sft
from rlft.commands.demo import DEMO_PREFERENCE_SFT_STEPS as DEMO_SFT_STEPS
from rlft.data import get_task
from rlft.run import RunDir, save_config
from rlft.train import RMConfig, train_rm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600, help="reward-model optimiser steps")
    parser.add_argument("--pairs", type=int, default=16000, help="training pairs drawn from the task")
    parser.add_argument("--label-noise", type=float, default=DEMO_LABEL_NOISE, help="share of flipped labels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=DEMO_RM_LR)
    parser.add_argument("--eval-pairs", type=int, default=1000)
    parser.add_argument("--sft-steps", type=int, default=DEMO_SFT_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        t0 = time.monotonic()
        sft_dir = preference_sft(root, seed=args.seed, show_progress=False, steps=args.sft_steps)
        t_sft = time.monotonic() - t0
        cfg = RMConfig(
            model=str(sft_dir),
            data=f"task:preference?n={args.pairs}&seed={args.seed}&label_noise={args.label_noise}",
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=20,
            max_steps=args.steps,
            epochs=None,
            eval_every=max(args.steps // 4, 1),
            eval_samples=args.eval_pairs,
            seed=args.seed,
            torch_threads=args.threads,
        )
        run = RunDir.create(root / "rm-bench")
        save_config(cfg, run.config_path)
        t1 = time.monotonic()
        result = train_rm(cfg, run, show_progress=False, log=lambda _: None)
        t_rm = time.monotonic() - t1
    ceiling = get_task("preference").noise_ceiling(args.label_noise)
    final = result.final_eval
    print(f"\nreward model on {cfg.data}: {result.steps} steps × {args.batch_size} pairs, lr {args.lr}")
    print(f"held-out pairs (eval split): {args.eval_pairs}")
    print(f"  accuracy vs labels       {final['eval_accuracy']:.3f}   (noise ceiling {ceiling:.3f})")
    print(f"  accuracy vs gold         {final['eval_gold_accuracy']:.3f}   (target ≥ 0.90)")
    print(f"  labels agreeing w/ gold  {final['eval_label_gold_agreement']:.3f}")
    print(f"  mean reward gap          {final['eval_reward_gap']:.3f}")
    print(
        f"time: SFT {t_sft:.0f}s, reward model {t_rm:.0f}s, total {t_sft + t_rm:.0f}s ({args.threads} threads)"
    )


if __name__ == "__main__":
    main()
