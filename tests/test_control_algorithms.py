"""Every control algorithm learns (discrete and continuous), on seeded short budgets."""

import gymnasium as gym
import numpy as np
import pytest

from rlft.control import ControlConfig, preset_for, train
from rlft.run import RunDir, load_config


def config(algo: str, env: str, **overrides) -> ControlConfig:
    return load_config(
        ControlConfig,
        overrides={"algo": algo, "env": env, "seed": 1, "save_policy": False, **overrides},
        base=preset_for(algo, env)[1],
    )


# (algorithm, step budget, mean return of the last 20 episodes it must reach on CartPole-v1)
# A2C's preset anneals its learning rate over 400k steps; the run stops as soon as the bar is reached.
CARTPOLE = [
    ("ppo", 60_000, 400.0),
    ("ppo_penalty", 100_000, 300.0),
    ("a2c", 400_000, 300.0),
    ("trpo", 100_000, 300.0),
    ("reinforce", 60_000, 300.0),
]


@pytest.mark.parametrize("algo,budget,bar", CARTPOLE)
def test_discrete_learning_on_cartpole(algo, budget, bar, tmp_path):
    result = train(
        config(algo, "CartPole-v1", total_steps=budget, target_return=bar),
        RunDir.create(tmp_path),
        show_progress=False,
    )
    assert result.solved_at_step is not None, (
        f"{algo}: mean return {result.mean_return:.1f} after {result.steps} steps"
    )


class PointTarget(gym.Env):
    """A 1-D point that must move to the origin: obs x ∈ [−1, 1], action Δx ∈ [−1, 1] (Box), reward −|x|,
    20 steps. A random Gaussian policy scores about −10; one that learns a ≈ −x scores about −1."""

    observation_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1)
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + 0.5 * float(action[0]), -2, 2))
        return np.array([self.x], np.float32), -abs(self.x), False, False, {}


gym.register("rlft-tests/PointTarget-v0", entry_point=PointTarget, max_episode_steps=20)


@pytest.mark.parametrize("algo", ["ppo", "ppo_penalty", "a2c", "trpo", "reinforce"])
def test_continuous_learning_on_a_box_action_task(algo, tmp_path):
    cfg = config(
        algo,
        "rlft-tests/PointTarget-v0",
        total_steps=30_000,
        num_envs=8,
        n_steps=64,
        lr=3e-3,
        init_log_std=-0.5,
        target_return=-4.0,
    )
    result = train(cfg, RunDir.create(tmp_path), show_progress=False)
    assert result.solved_at_step is not None, f"{algo}: mean return {result.mean_return:.2f}"
