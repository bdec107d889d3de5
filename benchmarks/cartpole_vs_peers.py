"""Wall-clock to a mean return ≥ 475 over the last 20 training episodes on CartPole-v1:
rlft PPO (its CartPole preset) vs Stable-Baselines3 PPO with rl-zoo3's tuned hyperparameters vs CleanRL's
`ppo.py` with its defaults. One torch thread on every side, runs interleaved (rlft, SB3, CleanRL, rlft, …),
each in a fresh process; the clock starts when training starts (after imports and set-up) on every side.

    pip install -c constraints.txt stable-baselines3 tyro       # the peers (the `bench` extra has sb3)
    # CleanRL is not a package: pass its ppo.py (github.com/vwxyzjn/cleanrl, cleanrl/ppo.py)
    .venv/bin/python benchmarks/cartpole_vs_peers.py --seeds 1 2 3 4 5 --cleanrl-ppo /path/to/cleanrl/ppo.py

CleanRL's script logs episodes through gymnasium 0.29's `final_info`; on gymnasium 1.x that key no longer
exists, so a temporary copy gets its logging lines rewritten to read `infos["episode"]` (and print the time
since its own `start_time`). Its algorithm and defaults are untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

TARGET, WINDOW = 475.0, 20
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_rlft(seed: int, max_steps: int) -> dict:
    from rlft.control import ControlConfig, preset_for, train
    from rlft.run import RunDir, load_config

    cfg = load_config(
        ControlConfig,
        overrides={
            "seed": seed,
            "total_steps": max_steps,
            "target_return": TARGET,
            "save_policy": False,
            "torch_threads": 1,
        },
        base=preset_for("ppo", "CartPole-v1")[1],
    )
    with tempfile.TemporaryDirectory() as tmp:
        r = train(cfg, RunDir.create(tmp), show_progress=False)
    return {"seconds": r.solved_at_seconds, "steps": r.solved_at_step}


def run_sb3(seed: int, max_steps: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)

    def linear(start: float):
        return lambda progress_remaining: progress_remaining * start

    class StopAtTarget(BaseCallback):
        def __init__(self):
            super().__init__()
            self.returns: deque[float] = deque(maxlen=WINDOW)
            self.solved_step: int | None = None

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(info["episode"]["r"])
            if len(self.returns) == WINDOW and statistics.mean(self.returns) >= TARGET:
                self.solved_step = self.num_timesteps
                return False
            return True

    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    # rl-zoo3 hyperparams/ppo.yml, CartPole-v1
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    cb = StopAtTarget()
    start = time.perf_counter()
    model.learn(total_timesteps=max_steps, callback=cb)
    seconds = time.perf_counter() - start
    return {"seconds": seconds if cb.solved_step else None, "steps": cb.solved_step}


def patch_cleanrl(source: Path, dest: Path) -> Path:
    text = source.read_text()
    old = re.search(r"\n( +)if \"final_info\" in infos:\n(?:\1 .*\n)+", text)
    if old is None:
        raise SystemExit(f"{source}: could not find CleanRL's final_info logging block to adapt")
    indent = old.group(1)
    new = (
        f'\n{indent}if "episode" in infos:\n'
        f'{indent}    for i in np.flatnonzero(infos["_episode"]):\n'
        f"{indent}        print(f\"global_step={{global_step}}, episodic_return={{infos['episode']['r'][i]}}, "
        f'elapsed={{time.time() - start_time}}", flush=True)\n'
    )
    dest.write_text(text[: old.start()] + new + text[old.end() :])
    return dest


def run_cleanrl(script: Path, seed: int, max_steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        patched = patch_cleanrl(script, Path(tmp) / "ppo.py")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-u",
                str(patched),
                "--seed",
                str(seed),
                "--no-cuda",
                "--total-timesteps",
                str(max_steps),
                "--env-id",
                "CartPole-v1",
            ],
            cwd=tmp,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        returns: deque[float] = deque(maxlen=WINDOW)
        result = {"seconds": None, "steps": None}
        for line in proc.stdout:
            m = re.match(r"global_step=(\d+), episodic_return=([-\d.e]+), elapsed=([\d.e-]+)", line)
            if not m:
                continue
            returns.append(float(m.group(2)))
            if len(returns) == WINDOW and statistics.mean(returns) >= TARGET:
                result = {"seconds": float(m.group(3)), "steps": int(m.group(1))}
                proc.kill()
                break
        proc.wait()
    return result


def child(side: str, seed: int, max_steps: int, script: str | None) -> None:
    fn = {
        "rlft": lambda: run_rlft(seed, max_steps),
        "sb3": lambda: run_sb3(seed, max_steps),
        "cleanrl": lambda: run_cleanrl(Path(script), seed, max_steps),
    }[side]
    print("RESULT " + json.dumps(fn()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--max-steps", type=int, default=300_000)
    parser.add_argument("--cleanrl-ppo", help="path to CleanRL's cleanrl/ppo.py (skipped if not given)")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.max_steps, args.cleanrl_ppo)
    sides = ["rlft", "sb3"] + (["cleanrl"] if args.cleanrl_ppo else [])
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for seed in args.seeds:
        for side in sides:
            cmd = [sys.executable, __file__, "--child", side, str(seed), "--max-steps", str(args.max_steps)]
            if args.cleanrl_ppo:
                cmd += ["--cleanrl-ppo", args.cleanrl_ppo]
            out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.split("RESULT ", 1)[1])
            results[side].append(r)
            print(
                f"seed {seed} {side:8s} solved at step {r['steps']}, {r['seconds'] and round(r['seconds'], 2)} s",
                flush=True,
            )
    print("\nside      solved  median s  median steps")
    med = {}
    for side, rs in results.items():
        ok = [r for r in rs if r["seconds"] is not None]
        med[side] = statistics.median(r["seconds"] for r in ok) if ok else float("nan")
        steps = statistics.median(r["steps"] for r in ok) if ok else float("nan")
        print(f"{side:8s} {len(ok)}/{len(rs)}  {med[side]:8.2f}  {steps:12.0f}")
    for side in sides[1:]:
        pairs = [
            a["seconds"] / b["seconds"]
            for a, b in zip(results["rlft"], results[side], strict=True)
            if a["seconds"] and b["seconds"]
        ]
        print(
            f"rlft / {side}: ratio of medians {med['rlft'] / med[side]:.3f}; "
            f"median per-seed ratio {statistics.median(pairs):.3f}"
            if pairs
            else f"rlft / {side}: no pairs"
        )


if __name__ == "__main__":
    main()
