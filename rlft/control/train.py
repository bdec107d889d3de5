"""The control training driver shared by every algorithm: collect → update → log → checkpoint, with
exact resume. An algorithm is any object with `collect(collector)`, `update(batch, frac)`, `state_dict()`
and `load_state_dict()`, registered in `CONTROL_ALGOS` under its config name."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from rlft.run import (
    CheckpointError,
    MetricsWriter,
    Progress,
    RunDir,
    atomic_path,
    atomic_write_text,
    capture_rng_state,
    restore_rng_state,
    seed_everything,
)

from .config import CONTROL_ALGOS, ControlConfig
from .envs import EnvError, action_info, make_vec_env
from .policies import ActorCritic
from .rollout import Collector
from .saving import save_policy

CHECKPOINT = "last.pt"


@dataclass
class TrainResult:
    steps: int
    episodes: int
    mean_return: float  # over the last `return_window` episodes
    seconds: float
    solved_at_step: int | None  # first step where the windowed mean reached target_return
    solved_at_episode: int | None
    # training wall-clock when the target was first reached (what the peer benchmarks compare), excluding
    # the final checkpoint, TensorBoard flush and environment shutdown that `seconds` includes
    solved_at_seconds: float | None = None


def build_policy(cfg: ControlConfig, envs) -> tuple[ActorCritic, bool]:
    if not isinstance(envs.single_observation_space, gym.spaces.Box):
        raise EnvError(f"{cfg.env}: observation space {envs.single_observation_space} is not a Box")
    discrete, act_dim = action_info(envs.single_action_space)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    return ActorCritic(obs_dim, act_dim, discrete, cfg.hidden, cfg.init_log_std), discrete


def _truncate_metrics(run: RunDir, step: int) -> None:
    """On resume, drop metric rows logged after the checkpoint (they will be produced again)."""
    if not run.metrics_path.exists():
        return
    kept = [
        line
        for line in run.metrics_path.read_text().splitlines()
        if line.strip() and _row_step(line) is not None and _row_step(line) <= step
    ]
    atomic_write_text(run.metrics_path, "".join(line + "\n" for line in kept))


def _row_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def train(
    cfg: ControlConfig,
    run: RunDir,
    show_progress: bool = True,
    resume: bool = False,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Train `cfg.algo` on `cfg.env`. `resume` continues from `run/checkpoints/last.pt`; `stop_at_step`
    stops early (after writing a checkpoint) — it simulates an interruption in tests."""
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    envs = make_vec_env(cfg.env, cfg.num_envs, cfg.seed)
    policy, discrete = build_policy(cfg, envs)
    algo = CONTROL_ALGOS.get(cfg.algo)(policy, cfg)
    collector = Collector(envs, cfg, discrete)
    step, updates, solved_at, solved_ep, solved_secs, elapsed_before = 0, 0, None, None, None, 0.0
    ckpt_path = run.checkpoints / CHECKPOINT
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"no checkpoint to resume at {ckpt_path}")
        state = torch.load(ckpt_path, weights_only=False)
        policy.load_state_dict(state["policy"])
        try:
            algo.load_state_dict(state["algo"])
        except (ValueError, KeyError) as err:  # e.g. a checkpoint from before flat per-network parameters
            raise CheckpointError(
                f"{ckpt_path}: the optimizer state does not fit this version's {cfg.algo} "
                f"({err}); start a new run, or evaluate its policy.safetensors"
            ) from err
        collector.load_state_dict(state["collector"])
        restore_rng_state(state["rng"])
        step, updates = state["step"], state["updates"]
        solved_at, solved_ep, elapsed_before = state["solved_at"], state["solved_ep"], state["elapsed"]
        solved_secs = state.get("solved_secs")
        _truncate_metrics(run, step)

    def checkpoint() -> None:
        state = {
            "policy": policy.state_dict(),
            "algo": algo.state_dict(),
            "collector": collector.state_dict(),
            "rng": capture_rng_state(),
            "step": step,
            "updates": updates,
            "solved_at": solved_at,
            "solved_ep": solved_ep,
            "solved_secs": solved_secs,
            "elapsed": elapsed_before + time.perf_counter() - start,
        }
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)

    start = time.perf_counter()
    metrics = MetricsWriter(run.root)
    progress = Progress(cfg.total_steps, desc=f"{cfg.algo} {cfg.env}", unit="step", enabled=show_progress)
    progress.update(step)
    done = solved_at is not None
    while step < cfg.total_steps and not done:
        batch = algo.collect(collector)
        stats = algo.update(batch, frac=max(0.0, 1.0 - step / cfg.total_steps))
        step += batch.steps
        updates += 1
        recent = collector.recent
        window_mean = float(np.mean(recent)) if recent else float("nan")
        if (
            solved_at is None
            and cfg.target_return is not None
            and len(recent) == recent.maxlen
            and window_mean >= cfg.target_return
        ):
            solved_at, solved_ep, done = step, collector.episodes, True
        elapsed = elapsed_before + time.perf_counter() - start
        if done:
            solved_secs = elapsed
        row = {
            "episodes": collector.episodes,
            "return_mean_window": window_mean,
            **stats,
            "steps_per_second": step / elapsed if elapsed else 0.0,
        }
        if batch.finished:
            row["episode_return"] = float(np.mean([r for r, _ in batch.finished]))
            row["episode_length"] = float(np.mean([n for _, n in batch.finished]))
        metrics.log(step, row)
        progress.update(batch.steps, ret=window_mean)
        if cfg.checkpoint_every and updates % cfg.checkpoint_every == 0:
            checkpoint()
        if stop_at_step is not None and step >= stop_at_step:
            break
    checkpoint()
    progress.close()
    metrics.close()
    collector.envs.close()
    if cfg.save_policy:
        save_policy(policy, collector.obs_norm, run.root / "policy.safetensors", cfg)
    recent = collector.recent
    return TrainResult(
        step,
        collector.episodes,
        float(np.mean(recent)) if recent else float("nan"),
        elapsed_before + time.perf_counter() - start,
        solved_at,
        solved_ep,
        solved_secs,
    )
