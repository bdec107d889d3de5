"""Model-FLOPs utilisation of an RLHF-PPO step (four models) on the ~15M-parameter tiny Llama.

    .venv/bin/python benchmarks/ppo_mfu.py [--size 15m] [--steps 8] [--threads 2] [--prompts 8]
        [--generations 4] [--new-tokens 32] [--shared] [--out DIR]

The same method as ``benchmarks/grpo_vs_trl.py``: per-step wall time (the median over the steps after the
first two) against the float32 2048² ``torch.matmul`` rate measured in the same process before and after.
Model FLOPs of one step, with T = non-padding prompt + completion tokens of the rollout:

    sampling                 2·N_actor·T       (prefill + decode)
    reference log-probs      2·N_actor·T
    reward model score       2·N_body·T        (scalar head: no LM-head matmul, N_body = N − vocab·d)
    critic values (V_old)    2·N_body·T
    actor update             6·N_actor·T·μ     (μ = optim.ppo_epochs)
    critic update            6·N_body·T·μ

(π_old reuses the sampler's log-probs; the LM head only runs on response positions — work rlft skips is
not counted as done, so MFU measures useful work per second.) With ``--shared`` the critic is a value head
on the actor's backbone, so the critic terms vanish.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from machine import matmul_gflops  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="15m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--shared", action="store_true", help="critic = value head on the actor's backbone")
    parser.add_argument("--out", help="work directory (default: a temporary one)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from ppo_memory import prepare

    from rlft.models import load_causal_lm
    from rlft.run import RunDir
    from rlft.train import RLConfig, train_rl
    from rlft.train.online.config import CriticConfig, OptimConfig, SamplingConfig

    work = Path(args.out or tempfile.mkdtemp(prefix="ppo-mfu-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(work, args.size)
    actor = load_causal_lm(paths["actor"])
    n_actor = sum(p.numel() for p in actor.parameters())
    emb = actor.get_input_embeddings().weight.numel()
    n_body = n_actor - emb
    peak_before = matmul_gflops()
    cfg = RLConfig(
        model=paths["actor"],
        data=paths["prompts"],
        algorithm="ppo",
        reward_model=paths["rm"],
        sampling=SamplingConfig(
            prompts_per_step=args.prompts, num_generations=args.generations, max_new_tokens=args.new_tokens
        ),
        max_steps=args.steps,
        optim=OptimConfig(ppo_epochs=args.ppo_epochs, lr=1e-5),
        torch_threads=args.threads,
        critic=CriticConfig(shared_backbone=args.shared),
    )
    run = RunDir.create(work / f"run-{time.strftime('%H%M%S')}")
    train_rl(cfg, run, show_progress=False, log=lambda _: None)
    peak_after = matmul_gflops()
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines() if '"time_step"' in line]
    rows = rows[2:] or rows
    step_s = statistics.median(r["time_step"] for r in rows)
    tokens = statistics.median(r["tokens_per_s"] * r["time_step"] for r in rows)  # prompt + completion tokens
    mu = args.ppo_epochs
    flops = (2 + 2 + 6 * mu) * n_actor * tokens + (0 if args.shared else (2 + 6 * mu) * n_body * tokens)
    flops += 2 * n_body * tokens  # the reward model
    peak = max(peak_before, peak_after)
    achieved = flops / step_s / 1e9
    parts = {
        k: statistics.median(r[k] for r in rows)
        for k in ("time_sample", "time_score", "time_reference", "time_update")
    }
    print(
        f"\n{args.size}: actor {n_actor / 1e6:.2f}M parameters (body {n_body / 1e6:.2f}M), "
        f"{args.prompts}×{args.generations} completions ≤{args.new_tokens} tokens, "
        f"critic {'shared backbone' if args.shared else 'separate'}, {args.threads} threads"
    )
    print(
        f"median step {step_s:.3f}s over {len(rows)} steps "
        f"({', '.join(f'{k[5:]} {v:.3f}s' for k, v in parts.items())}); {tokens:.0f} tokens per step"
    )
    print(
        f"model FLOPs {flops / 1e9:.1f} GFLOP per step → {achieved:.1f} GFLOP/s; float32 2048² matmul "
        f"{peak_before:.0f} / {peak_after:.0f} GFLOP/s (before/after) → MFU {achieved / peak:.0%}"
    )
    out = {
        "args": vars(args),
        "step_s": step_s,
        "tokens": tokens,
        "gflop": flops / 1e9,
        "peak": [peak_before, peak_after],
    }
    out.update({"mfu": achieved / peak, "parts": parts})
    (work / "ppo_mfu.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
