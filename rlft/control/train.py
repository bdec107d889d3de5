"""The control training driver shared by every algorithm: collect → update → log → checkpoint, with
exact resume. An algorithm is any object built as `Algo(policy, cfg, guard=NonFiniteGuard)` with
`collect(collector)`, `update(batch, frac)`, `state_dict()` and `load_state_dict()`, registered in
`CONTROL_ALGOS` under its config name.

The checkpoint `checkpoints/last.pt` holds tensors and plain data only and is read with
`torch.load(weights_only=True)`, so a file planted in a run directory cannot run code on resume. SIGTERM
and Ctrl-C finish the current update, write the checkpoint and raise `RunInterrupted`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlft.run import (
    CheckpointError,
    MetricsWriter,
    Progress,
    RunDir,
    StopSignals,
    atomic_torch_save,
    capture_rng_state,
    restore_rng_state,
    seed_everything,
)

from .common import NonFiniteGuard, say
from .config import CONTROL_ALGOS, ControlAlgo, ControlConfig
from .envs import action_info, make_vec_env, observation_size
from .policies import ActorCritic
from .rollout import Batch, Collector
from .saving import require_finite, save_policy, write_file

CHECKPOINT = "last.pt"
# Bumped whenever the checkpoint's layout changes; other values (and files without it) are refused.
CHECKPOINT_FORMAT = "rlft-control-2"


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


def build_policy(cfg: ControlConfig, envs: gym.vector.VectorEnv[Any, Any, Any]) -> tuple[ActorCritic, bool]:
    obs_dim = observation_size(envs.single_observation_space, cfg.env)
    discrete, act_dim = action_info(envs.single_action_space)
    return ActorCritic(obs_dim, act_dim, discrete, cfg.hidden, cfg.init_log_std), discrete


@dataclass
class _Tally:
    """Where a run stands; saved in the checkpoint."""

    step: int = 0
    updates: int = 0
    solved_at: int | None = None
    solved_ep: int | None = None
    solved_secs: float | None = None
    elapsed: float = 0.0  # training seconds before this process started


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint as tensors and plain data; anything else (a file that would need code to be run to
    load, a checkpoint of an older layout) is refused with one line."""
    unsupported = (
        f"{path}: checkpoint format not supported (this version reads only its own tensors-and-data "
        "checkpoints); start a new run with another --out"
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception:  # torch raises several exception types for files it will not read as plain data
        raise CheckpointError(unsupported) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(unsupported)
    return state


def _restore(
    path: Path,
    cfg: ControlConfig,
    policy: ActorCritic,
    algo: ControlAlgo,
    guard: NonFiniteGuard,
    collector: Collector,
) -> _Tally:
    """Load `path` into the freshly built objects; a checkpoint that does not fit them is one line."""
    state = _load_checkpoint(path)
    try:
        policy.load_state_dict(state["policy"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: the policy does not fit this config (hidden, env): {str(err).splitlines()[0]}"
        ) from None
    try:
        algo.load_state_dict(state["algo"])
    except (ValueError, KeyError) as err:  # e.g. a checkpoint from before flat per-network parameters
        raise CheckpointError(
            f"{path}: the optimizer state does not fit this version's {cfg.algo} "
            f"({err}); start a new run, or evaluate its policy.safetensors"
        ) from err
    try:
        guard.load_state_dict(state["skips"])
        reset_because = collector.load_state_dict(state["collector"])
        restore_rng_state(state["rng"])
        tally = _Tally(**state["tally"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: does not fit this run's config: {err}") from None
    if reset_because:
        say(
            f"the environment state was not saved ({reset_because}); resumed episodes start afresh "
            "(reseeded), so this run will not repeat an uninterrupted one exactly"
        )
    return tally


def train(
    cfg: ControlConfig,
    run: RunDir,
    show_progress: bool = True,
    resume: bool = False,
    stop_at_step: int | None = None,
) -> TrainResult:
    """Train `cfg.algo` on `cfg.env`. `resume` continues from `run/checkpoints/last.pt` (or starts again
    from step 0 when the run stopped before its first checkpoint); `stop_at_step` stops early (after
    writing a checkpoint) — it simulates an interruption in tests."""
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    envs = make_vec_env(cfg.env, cfg.num_envs, cfg.seed)
    policy, discrete = build_policy(cfg, envs)
    guard = NonFiniteGuard(cfg.max_consecutive_skips)
    algo = CONTROL_ALGOS.get(cfg.algo)(policy, cfg, guard=guard)
    collector = Collector(envs, cfg, discrete)
    ckpt_path = run.checkpoints / CHECKPOINT
    tally, resume_step = _Tally(), None
    if resume and not ckpt_path.exists():
        say(f"{ckpt_path} does not exist (the run stopped before its first checkpoint); starting it again")
        run.trim_metrics(None)
        resume_step = -1  # TensorBoard drops the dead run's events too
    elif resume:
        tally = _restore(ckpt_path, cfg, policy, algo, guard, collector)
        run.trim_metrics(tally.step)
        resume_step = tally.step

    start = time.perf_counter()
    metrics = MetricsWriter(run.root, resume_step=resume_step)

    def checkpoint() -> None:
        require_finite(policy, ckpt_path)
        state = {
            "format": CHECKPOINT_FORMAT,
            "policy": policy.state_dict(),
            "algo": algo.state_dict(),
            "skips": guard.state_dict(),
            "collector": collector.state_dict(),
            "rng": capture_rng_state(),
            "tally": {**asdict(tally), "elapsed": tally.elapsed + time.perf_counter() - start},
        }
        metrics.flush()  # before the checkpoint: a complete checkpoint always has its TensorBoard events
        write_file(ckpt_path, lambda path: atomic_torch_save(state, path))

    progress = Progress(cfg.total_steps, desc=f"{cfg.algo} {cfg.env}", unit="step", enabled=show_progress)
    progress.update(tally.step)
    done = tally.solved_at is not None
    try:
        with StopSignals() as stop:
            while tally.step < cfg.total_steps and not done:
                batch = algo.collect(collector)
                guard.step = tally.step + batch.steps
                stats = algo.update(batch, frac=max(0.0, 1.0 - tally.step / cfg.total_steps))
                tally.step += batch.steps
                tally.updates += 1
                done = _log_update(cfg, tally, collector, batch, stats, guard, metrics, start)
                progress.update(batch.steps, ret=_window_mean(collector))
                saved = bool(cfg.checkpoint_every) and tally.updates % cfg.checkpoint_every == 0
                if saved:
                    checkpoint()
                if stop.requested:
                    if not saved:
                        checkpoint()
                    raise stop.interrupted(
                        f"checkpoint {ckpt_path} written at step {tally.step}; "
                        f"resume with: rlft control train --resume {run.root}"
                    )
                if stop_at_step is not None and tally.step >= stop_at_step:
                    break
            checkpoint()
            if cfg.save_policy:
                save_policy(policy, collector.obs_norm, run.root / "policy.safetensors", cfg)
    finally:
        progress.close()
        metrics.close()
        collector.envs.close()
    recent = collector.recent
    return TrainResult(
        tally.step,
        collector.episodes,
        float(np.mean(recent)) if recent else float("nan"),
        tally.elapsed + time.perf_counter() - start,
        tally.solved_at,
        tally.solved_ep,
        tally.solved_secs,
    )


def _window_mean(collector: Collector) -> float:
    return float(np.mean(collector.recent)) if collector.recent else float("nan")


def _log_update(
    cfg: ControlConfig,
    tally: _Tally,
    collector: Collector,
    batch: Batch,
    stats: dict[str, float],
    guard: NonFiniteGuard,
    metrics: MetricsWriter,
    start: float,
) -> bool:
    """Record the update's metrics and whether the target return is reached; returns True once it is."""
    recent = collector.recent
    window_mean = _window_mean(collector)
    elapsed = tally.elapsed + time.perf_counter() - start
    solved = (
        tally.solved_at is None
        and cfg.target_return is not None
        and len(recent) == recent.maxlen
        and window_mean >= cfg.target_return
    )
    if solved:
        tally.solved_at, tally.solved_ep, tally.solved_secs = tally.step, collector.episodes, elapsed
    row = {
        "episodes": collector.episodes,
        "return_mean_window": window_mean,
        **stats,
        "skipped_steps": guard.skipped,
        "steps_per_second": tally.step / elapsed if elapsed else 0.0,
    }
    if batch.finished:
        row["episode_return"] = float(np.mean([r for r, _ in batch.finished]))
        row["episode_length"] = float(np.mean([n for _, n in batch.finished]))
    metrics.log(tally.step, row)
    return solved
