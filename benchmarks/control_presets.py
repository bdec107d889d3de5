"""The tuned presets over several seeds: steps (and episodes) to the target mean return of the last 20
training episodes, within the issue's budgets. Prints one row per run and a summary per preset.

    .venv/bin/python benchmarks/control_presets.py                       # every preset, seeds 1-3
    .venv/bin/python benchmarks/control_presets.py --only ppo/Pendulum-v1 --seeds 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from rlft.control import ControlConfig, preset_for, train
from rlft.run import RunDir, load_config

# preset → (target mean return, step budget)
TARGETS = {
    "ppo/CartPole-v1": (475.0, 100_000),
    "ppo_penalty/CartPole-v1": (475.0, 300_000),
    "a2c/CartPole-v1": (475.0, 400_000),
    "trpo/CartPole-v1": (475.0, 300_000),
    "reinforce/CartPole-v1": (475.0, 500_000),
    "ppo/Pendulum-v1": (-200.0, 200_000),
    "ppo/LunarLander-v3": (200.0, 1_000_000),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--only", nargs="+", default=list(TARGETS))
    args = parser.parse_args()
    for name in args.only:
        algo, env = name.split("/")
        target, budget = TARGETS[name]
        solved = []
        for seed in args.seeds:
            cfg = load_config(
                ControlConfig,
                overrides={
                    "algo": algo,
                    "env": env,
                    "seed": seed,
                    "total_steps": budget,
                    "target_return": target,
                    "save_policy": False,
                },
                base=preset_for(algo, env)[1],
            )
            with tempfile.TemporaryDirectory() as tmp:
                r = train(cfg, RunDir.create(tmp), show_progress=False)
            print(
                f"{name:26s} seed {seed}: reached {target} at step {r.solved_at_step} "
                f"(episode {r.solved_at_episode}) in {r.seconds:.1f} s; final mean {r.mean_return:.1f}",
                flush=True,
            )
            if r.solved_at_step:
                solved.append((r.solved_at_step, r.solved_at_episode, r.seconds))
        if solved:
            med = [statistics.median(x[i] for x in solved) for i in range(3)]
            print(
                f"== {name}: {len(solved)}/{len(args.seeds)} seeds reached {target} within {budget} steps; "
                f"median {med[0]:.0f} steps, {med[1]:.0f} episodes, {med[2]:.1f} s",
                flush=True,
            )
        else:
            print(f"== {name}: 0/{len(args.seeds)} seeds reached {target} within {budget} steps", flush=True)


if __name__ == "__main__":
    main()
