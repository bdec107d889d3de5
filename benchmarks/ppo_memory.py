"""Peak resident memory of an RLHF-PPO step vs an SFT step on the same model and batch.

    .venv/bin/python benchmarks/ppo_memory.py [--size 15m] [--prompts 8] [--generations 4] [--new-tokens 32]
        [--threads 2] [--out DIR]

Each measurement runs in a fresh interpreter (``--child MODE``) and reports ``ru_maxrss`` (the peak resident
set of the process) and, separately, the baseline after importing torch/transformers/rlft and before any
model is loaded, so the table shows both the total peak and the peak above that baseline:

  sft              one SFT step (forward, backward, AdamW) of the tiny model on B = prompts × generations
                   sequences of prompt + new-tokens tokens (full-vocabulary logits, as ``rlft sft``)
  ppo-4-models     one step of ``rlft rl --algorithm ppo``: actor, frozen reference, frozen reward model and a
                   separate critic initialised from it (its own AdamW), same B and lengths
  ppo-lora-shared  the same with LoRA (r 8, every projection; the reference is the base with adapters off)
                   and the critic as a value head on the actor's backbone (the reward model stays separate)

Targets (issue 7): ppo-4-models ≤ 2.5 × sft, ppo-lora-shared ≤ 1.6 × sft. The PPO steps sample with the
KV-cache sampler first, so their batch is the sampled one (its mean length is printed); an untrained tiny
model almost never samples EOS, so completions run the full new-tokens budget like the SFT batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prepare(work: Path, size: str) -> dict[str, str]:
    """The tiny model (tokenizer trained on the preference task), a reward model made from it and a prompt file."""
    from rlft.data import get_task
    from rlft.models import build_tiny_model
    from rlft.models.scalar_head import reward_model_from_causal_lm, save_reward_model

    actor = work / f"tiny-{size}"
    if not (actor / "config.json").is_file():
        corpus = get_task("preference").corpus(2000)
        build_tiny_model(actor, size=size, corpus=corpus, vocab_size=768, seed=0)
    rm = work / "rm"
    if not (rm / "config.json").is_file():
        from rlft.models import load_tokenizer

        save_reward_model(reward_model_from_causal_lm(actor), load_tokenizer(str(actor)), rm)
    prompts = work / "prompts.jsonl"
    task = get_task("preference")
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in task.prompts("train")))
    return {"actor": str(actor), "rm": str(rm), "prompts": str(prompts)}


def child(mode: str, args: argparse.Namespace) -> dict:
    import torch

    import rlft.train  # noqa: F401 - the import baseline includes rlft's trainers
    from rlft.models import load_causal_lm, load_tokenizer

    torch.set_num_threads(args.threads)
    paths = json.loads(args.paths)
    baseline = peak_mb()
    batch = args.prompts * args.generations
    t0 = time.perf_counter()
    if mode == "sft":
        from rlft.train.sft.trainer import token_loss_sum

        model = load_causal_lm(paths["actor"])
        tokenizer = load_tokenizer(paths["actor"])
        prompt = tokenizer("Describe the forest briefly:")["input_ids"]
        gen = torch.Generator().manual_seed(0)
        response = torch.randint(4, len(tokenizer), (batch, args.new_tokens), generator=gen)
        ids = torch.cat([torch.tensor([prompt] * batch), response], 1)
        labels = ids.clone()
        labels[:, : len(prompt)] = -100
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        model.train()
        loss, n = token_loss_sum(
            model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        )
        (loss / n).backward()
        opt.step()
        extra = {"tokens": int(ids.numel())}
    else:
        from rlft.run import RunDir
        from rlft.train import RLConfig, train_rl
        from rlft.train.online.config import (
            CriticConfig,
            LoRAConfig,
            OptimConfig,
            PerformanceConfig,
            SamplingConfig,
        )

        lora = mode == "ppo-lora-shared"
        cfg = RLConfig(
            model=paths["actor"],
            data=paths["prompts"],
            algorithm="ppo",
            reward_model=paths["rm"],
            sampling=SamplingConfig(
                prompts_per_step=args.prompts,
                num_generations=args.generations,
                max_new_tokens=args.new_tokens,
            ),
            max_steps=1,
            optim=OptimConfig(lr=1e-5),
            torch_threads=args.threads,
            lora=LoRAConfig() if lora else None,
            critic=CriticConfig(shared_backbone=lora),
            performance=PerformanceConfig(onednn_linear=bool(args.onednn_linear)),
        )
        with tempfile.TemporaryDirectory() as tmp:
            result = train_rl(cfg, RunDir.create(Path(tmp) / "run"), show_progress=False, log=lambda _: None)
        extra = {"response_len_mean": result.last_metrics["response_len_mean"]}
    return {
        "mode": mode,
        "baseline_mb": baseline,
        "peak_mb": peak_mb(),
        "seconds": time.perf_counter() - t0,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="15m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--onednn-linear", type=int, default=1, help="1: rlft's default oneDNN linears (packed weight copies)"
    )
    parser.add_argument("--out", help="work directory (default: a temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    work = Path(args.out or tempfile.mkdtemp(prefix="ppo-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(work, args.size)
    modes = ["sft", "ppo-4-models", "ppo-lora-shared"]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    env = dict(os.environ, GLIBC_TUNABLES=MALLOC, OMP_NUM_THREADS=str(args.threads))
    for _ in range(args.repeats):
        for mode in modes:  # interleaved, each in a fresh interpreter
            cmd = [sys.executable, str(HERE), "--child", mode, "--paths", json.dumps(paths)]
            cmd += [
                "--size",
                args.size,
                "--prompts",
                str(args.prompts),
                "--generations",
                str(args.generations),
            ]
            cmd += ["--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
            cmd += ["--onednn-linear", str(args.onednn_linear)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    from rlft.models import load_causal_lm

    n_params = sum(p.numel() for p in load_causal_lm(paths["actor"]).parameters())
    print(
        f"\n{args.size} tiny model ({n_params / 1e6:.1f}M parameters), batch {args.prompts} × {args.generations}"
        f" sequences, {args.new_tokens} new tokens, {args.threads} threads, {args.repeats} fresh processes each"
    )
    print(f"{'mode':18}{'peak MB':>9}{'above base':>12}{'× sft':>8}{'× sft above base':>18}")
    sft = min(r["peak_mb"] for r in results["sft"])
    sft_inc = min(r["peak_mb"] - r["baseline_mb"] for r in results["sft"])
    summary = {}
    for mode in modes:
        peak = min(r["peak_mb"] for r in results[mode])
        inc = min(r["peak_mb"] - r["baseline_mb"] for r in results[mode])
        summary[mode] = {
            "peak_mb": peak,
            "above_base_mb": inc,
            "ratio": peak / sft,
            "ratio_above_base": inc / sft_inc,
        }
        print(f"{mode:18}{peak:>9.0f}{inc:>12.0f}{peak / sft:>8.2f}{inc / sft_inc:>18.2f}")
    lens = [r.get("response_len_mean") for r in results["ppo-4-models"]]
    print(f"PPO mean response length {lens}; targets: ppo-4-models ≤ 2.5 × sft, ppo-lora-shared ≤ 1.6 × sft")
    (work / "ppo_memory.json").write_text(
        json.dumps({"args": vars(args), "runs": results, "summary": summary}, indent=1)
    )


if __name__ == "__main__":
    main()
