"""Shared cases of the fault-injection suite: micro models, small configs of every language-model trainer,
and a runner for the ``rlft`` command in a child process (what kill -9 and signals need)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from micro_models import save_micro_llama
from rl_cases import rl_config, rl_replace

from rlft.data import load_records, save_records
from rlft.run import read_metrics, save_config
from rlft.train import DPOConfig, RMConfig, SFTConfig

ARITHMETIC = "task:arithmetic?max_operand=9&n=64"
PREFERENCE = "task:preference?n=32&seed=3"
REWARD_SOURCE = """
def digits(prompts, completions, **fields):
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]

def nothing(prompts, completions, **fields):
    return [None] * len(completions)
"""


def build_assets(root: Path) -> dict[str, str]:
    """Two micro Llamas (arithmetic and preference vocabularies), a preference .jsonl and a reward file."""
    pref = root / "preference.jsonl"
    save_records(load_records(PREFERENCE, fmt="preference"), pref)
    reward = root / "reward_fns.py"
    reward.write_text(REWARD_SOURCE)
    return {
        "arithmetic_model": save_micro_llama(root / "arith", "arithmetic", 300, 280),
        "preference_model": save_micro_llama(root / "pref", "preference", 300, 300),
        "preference_data": str(pref),
        "reward_file": str(reward),
        "root": str(root),
    }


def trainer_config(kind: str, assets: dict[str, str], tmp_path: Path, **changes):
    """A config of trainer ``kind`` (sft, rm, dpo, rl) that runs 8 quick steps on one thread; ``changes``
    name keys as the other trainers do (an RLConfig section key by its flat name, ``rl_cases.rl_replace``)."""
    common = {"max_steps": 8, "torch_threads": 1, "lr": 3e-3}
    if kind == "sft":
        cfg = SFTConfig(
            model=assets["arithmetic_model"], data=ARITHMETIC, batch_size=8, eval_generate=False, **common
        )
    elif kind == "rm":
        cfg = RMConfig(
            model=assets["preference_model"],
            data=PREFERENCE,
            batch_size=4,
            epochs=None,
            norm_samples=8,
            eval_samples=8,
            **common,
        )
    elif kind == "dpo":
        cfg = DPOConfig(
            model=assets["preference_model"],
            data=assets["preference_data"],
            eval_data=assets["preference_data"],
            eval_samples=8,
            batch_size=4,
            ref_cache_dir=str(tmp_path / "ref-cache"),
            **common,
        )
    elif kind == "rl":
        cfg = rl_config(
            model=assets["arithmetic_model"],
            data=ARITHMETIC,
            rewards=[{"function": f"{assets['reward_file']}:digits"}],
            prompts_per_step=2,
            num_generations=4,
            max_new_tokens=6,
            eval_samples=4,
            **common,
        )
    else:
        raise ValueError(kind)
    return rl_replace(cfg, **changes) if kind == "rl" else dataclasses.replace(cfg, **changes)


def write_config(cfg, path: Path) -> Path:
    save_config(cfg, path)
    return path


def rlft_process(*args: str, **popen) -> subprocess.Popen:
    """``python -m rlft ARGS`` in a child process with its own process group; stderr piped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "rlft", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )


def wait_for_rows(process: subprocess.Popen, metrics: Path, rows: int, timeout: float = 120.0) -> None:
    """Block until ``metrics`` holds ``rows`` training rows (or the process ends / time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and len([r for r in read_metrics(metrics) if "lr" in r]) >= rows:
            return
        time.sleep(0.02)
    raise AssertionError(f"{metrics}: fewer than {rows} rows before the process ended or {timeout:.0f} s")
