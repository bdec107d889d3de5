"""Evaluate a saved control policy: mean ± std return over N episodes, optionally recording a GIF/MP4."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import gymnasium as gym
import numpy as np
import torch

from rlft.run import RunDir, atomic_path, load_config

from .config import ControlConfig
from .envs import action_info, observation_size
from .normalize import ObsNormalizer
from .policies import ActorCritic
from .saving import load_policy


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def load_run_policy(run_dir: str | Path) -> tuple[ControlConfig, ActorCritic, ObsNormalizer | None]:
    run = RunDir.open(run_dir)
    path = run.root / "policy.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no policy at {path} (train with save_policy: true)")
    cfg = load_config(ControlConfig, run.config_path)
    env = gym.make(cfg.env)
    discrete, act_dim = action_info(env.action_space)
    policy = ActorCritic(
        observation_size(env.observation_space, cfg.env), act_dim, discrete, cfg.hidden, cfg.init_log_std
    )
    env.close()
    obs_norm = load_policy(policy, path)
    return cfg, policy, obs_norm


@torch.no_grad()
def evaluate(
    run_dir: str | Path,
    episodes: int = 10,
    deterministic: bool = True,
    seed: int = 0,
    video: str | Path | None = None,
) -> EvalResult:
    """Run `episodes` episodes (seeds seed, seed+1, …); the first one is recorded to `video` if given."""
    cfg, policy, obs_norm = load_run_policy(run_dir)
    env = gym.make(cfg.env, render_mode="rgb_array" if video else None)
    torch.manual_seed(seed)
    frames: list[np.ndarray] = []
    result = EvalResult([], [])
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total, length, done = 0.0, 0, False
        while not done:
            x = np.asarray(obs, dtype=np.float32).reshape(1, -1)
            if obs_norm is not None:
                x = obs_norm(x, update=False)
            action = policy.act(torch.from_numpy(x), deterministic=deterministic)
            a = action[0].numpy()
            if isinstance(env.action_space, gym.spaces.Box):  # the policy is Gaussian: clip to the box
                a = np.clip(a, env.action_space.low, env.action_space.high)
            obs, reward, terminated, truncated, _ = env.step(a if not policy.discrete else int(a))
            total, length, done = total + float(reward), length + 1, terminated or truncated
            if video and ep == 0:
                frames.append(cast(np.ndarray, env.render()))  # render_mode "rgb_array": one RGB frame
        result.returns.append(total)
        result.lengths.append(length)
    env.close()
    if video:
        write_video(frames, Path(video), fps=env.metadata.get("render_fps", 30))
    return result


def write_video(frames: list[np.ndarray], path: Path, fps: int) -> Path:
    """GIF through Pillow (installed with matplotlib); MP4 needs imageio with its ffmpeg plugin."""
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames[::2]]  # every 2nd frame keeps GIFs small
        with atomic_path(path) as tmp:
            images[0].save(
                tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(2000 / fps), loop=0
            )
        return path
    if path.suffix.lower() == ".mp4":
        try:
            import imageio.v3 as iio
        except ImportError as err:
            raise ValueError(
                "writing MP4 needs `pip install imageio imageio-ffmpeg`; use a .gif path instead"
            ) from err
        with atomic_path(path) as tmp:
            iio.imwrite(tmp, np.stack(frames), fps=fps, extension=".mp4")
        return path
    raise ValueError(f"--video {path}: expected a .gif or .mp4 file name")
