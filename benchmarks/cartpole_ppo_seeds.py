"""PPO on CartPole-v1 over several seeds: does the mean return of the last 20 episodes reach 475 within
100k environment steps? Prints one row per seed and a summary (used for the README figure).

    .venv/bin/python benchmarks/cartpole_ppo_seeds.py --seeds 1 2 3 4 5 --steps 100000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from rlft.control import ControlConfig, preset_for, train
from rlft.run import RunDir, load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--target", type=float, default=475.0)
    args = parser.parse_args()
    _, preset = preset_for("ppo", "CartPole-v1")
    solved, seconds = [], []
    print(f"{'seed':>4} {'solved at step':>15} {'seconds':>8} {'final mean return':>18}")
    for seed in args.seeds:
        cfg = load_config(
            ControlConfig,
            overrides={
                "seed": seed,
                "total_steps": args.steps,
                "target_return": args.target,
                "save_policy": False,
            },
            base=preset,
        )
        with tempfile.TemporaryDirectory() as tmp:
            r = train(cfg, RunDir.create(tmp), show_progress=False)
        print(f"{seed:>4} {r.solved_at_step!s:>15} {r.seconds:>8.1f} {r.mean_return:>18.1f}")
        if r.solved_at_step is not None:
            solved.append(r.solved_at_step)
            seconds.append(r.seconds)
    print(f"solved {len(solved)}/{len(args.seeds)} seeds within {args.steps} steps", end="")
    if solved:
        print(f"; median {statistics.median(solved):.0f} steps, {statistics.median(seconds):.1f} s")
    else:
        print()


if __name__ == "__main__":
    main()
