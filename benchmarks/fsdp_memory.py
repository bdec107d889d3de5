"""Resident memory per rank of data-parallel SFT: ``parallel: ddp`` against ``parallel: fsdp2``.

    .venv/bin/python benchmarks/fsdp_memory.py [--size 50m | --hidden 768 --layers 16 --heads 12]
        [--ranks 2] [--steps 3] [--mmap-threshold BYTES] [--out DIR]

Each mode is a real ``torchrun --standalone --nproc_per_node RANKS -m rlft sft`` of a Llama built offline
(``arithmetic`` tokenizer, float32, tied embeddings), one mode at a time, 1 torch thread per rank. A
``sitecustomize.py`` put on the ranks' PYTHONPATH records, without changing rlft:

  peak       ``ru_maxrss`` at exit: the peak resident set of the whole run (load, training, the final
             evaluation, which fsdp2 runs on the whole model gathered on every rank, the final checkpoint)
  train      ``ru_maxrss`` right after the last optimiser step (a global optimiser step hook): the peak
             of loading and training alone
  resident   the current resident set (``/proc/self/statm``) after the last optimiser step and rlft's
             post-step hook (``DataParallel.after_step``, which under fsdp2 trims the heap): parameters,
             gradients and AdamW state, plus whatever the allocator keeps

The baseline is a separate launch with the same ranks that imports torch, transformers and rlft's CLI and
trainers and joins a gloo process group (``import``), then loads the model and reads every weight once
(``+ model``: the weights are file-mapped until first read). "above" is a figure minus the same rank's
``import`` baseline. Theory: parameters + gradients + AdamW's two states are 16 bytes per float32
parameter on a ddp rank, 16 / RANKS on an fsdp2 rank. ``--mmap-threshold`` sets glibc's
``malloc.mmap_threshold`` in the ranks (a fixed threshold: every larger block is returned to the system
when freed); under fsdp2 rlft fixes it at 128 KiB itself when it shards the model. Target: fsdp2 ≤ 0.6 ×
ddp per rank on a ~50M-parameter model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
HOOK = """\
import atexit, json, os, resource, sys
_dir, _rank = os.environ.get("FSDP_MEMORY_DIR"), os.environ.get("RANK")
if _dir and _rank is not None:
    _rec = {"rank": int(_rank), "steps": 0}
    def _peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    def _resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    def _wrap_post_step():
        # rlft calls DataParallel.after_step (under fsdp2: malloc_trim) after optimizer.step(), so this
        # hook runs before it: read the resident set again once it has run
        cls = getattr(sys.modules.get("rlft.train.common.parallel"), "DataParallel", None)
        inner = getattr(cls, "after_step", None)
        if inner is None or getattr(inner, "_fsdp_memory", False):
            return
        def after_step(self, *args, **kwargs):
            out = inner(self, *args, **kwargs)
            _rec["resident_kib"] = _resident()
            return out
        after_step._fsdp_memory = True
        cls.after_step = after_step
    def _after_step(*_):
        _rec.update(steps=_rec["steps"] + 1, train_kib=_peak(), resident_kib=_resident())
        _wrap_post_step()
    def _write():
        with open(os.path.join(_dir, f"rank{_rank}.json"), "w") as f:
            json.dump({**_rec, "peak_kib": _peak()}, f)
    from torch.optim.optimizer import register_optimizer_step_post_hook
    register_optimizer_step_post_hook(_after_step)
    atexit.register(_write)
"""


def baseline_child(model: str, out: str) -> None:
    """Under torchrun: one rank's peak after the imports, then after loading and reading the model."""
    import resource

    import torch
    import torch.distributed as dist

    import rlft.cli
    import rlft.train  # noqa: F401
    from rlft.models import load_causal_lm

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rec = {"rank": dist.get_rank(), "import_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    with torch.no_grad():
        sum(float(p.sum()) for p in load_causal_lm(model).parameters())
    rec["model_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dist.barrier()
    dist.destroy_process_group()
    Path(out, f"rank{rec['rank']}.json").write_text(json.dumps(rec))


def build_model(work: Path, args: argparse.Namespace) -> tuple[Path, int]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlft.data import get_task
    from rlft.models import TINY_SIZES, save_pretrained_atomic, train_tokenizer

    shape = TINY_SIZES[args.size]
    hidden, layers = args.hidden or shape.hidden, args.layers or shape.layers
    tokenizer = train_tokenizer(get_task("arithmetic").corpus(300), vocab_size=300, model_max_length=256)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=args.heads or shape.heads,
        num_key_value_heads=args.heads or shape.heads, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float().eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path = work / f"llama-h{hidden}-l{layers}"
    if not (path / "config.json").is_file():
        save_pretrained_atomic(model, tokenizer, path)
    return path, sum(p.numel() for p in model.parameters())


def torchrun(ranks: int, args: list[str], env: dict[str, str], records: Path) -> list[dict]:
    """Launch ``args`` on ``ranks`` processes and read the per-rank records they write to ``records``."""
    records.mkdir(parents=True, exist_ok=True)
    for stale in records.glob("rank*.json"):
        stale.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{' '.join(args[:3])} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    recs = sorted((json.loads(p.read_text()) for p in records.glob("rank*.json")), key=lambda r: r["rank"])
    if len(recs) != ranks:
        sys.exit(f"{records}: {len(recs)} rank records, expected {ranks}")
    return recs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="50m", help="a tiny size (rlft.models.TINY_SIZES)")
    parser.add_argument("--hidden", type=int, help="override the size's width (intermediate = 4 × hidden)")
    parser.add_argument("--layers", type=int, help="override the size's number of layers")
    parser.add_argument("--heads", type=int, help="override the size's number of heads")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mmap-threshold", type=int, help="glibc malloc.mmap_threshold for the ranks")
    parser.add_argument("--out", help="work directory (default: a temporary one)")
    parser.add_argument("--baseline-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        return baseline_child(*args.baseline_child)
    work = Path(args.out or tempfile.mkdtemp(prefix="fsdp-memory-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, n_params = build_model(work, args)
    (work / "hook").mkdir(exist_ok=True)
    (work / "hook" / "sitecustomize.py").write_text(HOOK)
    path = [str(work / "hook"), str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    if args.mmap_threshold:
        env["GLIBC_TUNABLES"] = f"glibc.malloc.mmap_threshold={args.mmap_threshold}"
    config = work / "sft.yaml"
    config.write_text(
        f"model: {model}\ndata: task:arithmetic?max_operand=9&n=64\nmax_steps: {args.steps}\n"
        f"batch_size: {2 * args.ranks}\neval_samples: 4\neval_generate: false\nsave_every: 0\n"
        "torch_threads: 1\n"
    )
    base = torchrun(
        args.ranks,
        [str(HERE), "--baseline-child", str(model), str(work / "mem-base")],
        env,
        work / "mem-base",
    )
    results: dict = {"args": vars(args), "params": n_params, "baseline": base, "modes": {}}
    for mode in ("ddp", "fsdp2"):
        sft = ["-m", "rlft", "sft", "--config", str(config), "--out", str(work / f"run-{mode}")]
        mem = work / f"mem-{mode}"
        recs = torchrun(
            args.ranks,
            [*sft, f"--parallel={mode}", "--no-progress"],
            {**env, "FSDP_MEMORY_DIR": str(mem)},
            mem,
        )
        if any(r["steps"] != args.steps for r in recs):
            sys.exit(f"{mode}: optimiser steps per rank {[r['steps'] for r in recs]}, expected {args.steps}")
        row = {"theory_mb": 16 * n_params / (1 if mode == "ddp" else args.ranks) / 2**20, "per_rank": recs}
        for key in ("peak", "train", "resident"):
            row[f"{key}_mb"] = max(r[f"{key}_kib"] for r in recs) / 1024
            above = (r[f"{key}_kib"] - b["import_kib"] for r, b in zip(recs, base, strict=True))
            row[f"{key}_above_mb"] = max(above) / 1024
        results["modes"][mode] = row
    ddp, fsdp = results["modes"]["ddp"], results["modes"]["fsdp2"]
    results["ratio"] = {k: fsdp[k] / ddp[k] for k in ddp if k.endswith("_mb")}
    imp, loaded = (max(b[k] for b in base) / 1024 for k in ("import_kib", "model_kib"))
    malloc = env.get("GLIBC_TUNABLES", "default")
    print(f"\n{n_params / 1e6:.1f}M parameters, {args.ranks} ranks, {args.steps} steps, malloc {malloc}")
    print(f"baseline per rank: import {imp:.0f} MB, import + model {loaded:.0f} MB")
    print("MB per rank, max over ranks ('above': minus the same rank's import baseline)")
    keys = ("theory", "peak", "peak_above", "train", "train_above", "resident", "resident_above")
    print(f"{'':12}" + "".join(f"{k.replace('_above', ' above'):>15}" for k in keys))
    for name, row in (("ddp", ddp), ("fsdp2", fsdp), ("fsdp2 / ddp", results["ratio"])):
        print(f"{name:12}" + "".join(f"{row[k + '_mb']:>15{'.2f' if '/' in name else '.0f'}}" for k in keys))
    (work / "fsdp_memory.json").write_text(json.dumps(results, indent=1))
    print(f"results: {work / 'fsdp_memory.json'}")


if __name__ == "__main__":
    main()
