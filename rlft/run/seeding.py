"""Seeding and RNG state capture, so a resumed run draws the same random numbers as an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "capture_rng_state",
    "episode_reset_seed",
    "epoch_seed",
    "minibatch_seed",
    "ptx_stream_seed",
    "restore_rng_state",
    "rollout_seed",
    "seed_everything",
    "win_rate_seed",
]

# Every random stream of a run is seeded by a named derivation of the run's seed, so a resumed run can
# rebuild any stream from (seed, step) alone and two streams never share a seed by accident of a typo.
# The constants are primes: _STREAM_STRIDE exceeds any step or epoch count, so seed·stride + index is a
# different integer for every (seed, index); 1009 and 7919 set apart streams that share that integer.
_STREAM_STRIDE = 1_000_003


def epoch_seed(seed: int, epoch: int) -> int:
    """Data order of epoch ``epoch`` (SFT, RM, DPO, RL prompt streams): seed·1_000_003 + epoch."""
    return seed * _STREAM_STRIDE + epoch


def rollout_seed(seed: int, step: int) -> int:
    """Sampling of RL step ``step``'s completions: (seed·1_000_003 + step)·1009."""
    return (seed * _STREAM_STRIDE + step) * 1009


def shard_seed(step_seed: int, shard: int) -> int:
    """Sampling seed of rollout shard ``shard`` of a step whose seed is ``step_seed`` (shard 0 keeps it, so
    one shard samples as an unsharded rollout): step_seed + shard·7_368_787 (a prime far beyond the few
    rounds a step's seed is advanced by)."""
    return step_seed + shard * 7_368_787


def minibatch_seed(seed: int, step: int) -> int:
    """Mini-batch shuffling of RL step ``step``'s policy update: (seed·1_000_003 + step)·7919."""
    return (seed * _STREAM_STRIDE + step) * 7919


def ptx_stream_seed(seed: int) -> int:
    """Base seed of the PPO-ptx data stream, whose epochs then use ``epoch_seed``: seed·1_000_003 + 17."""
    return seed * _STREAM_STRIDE + 17


def win_rate_seed(seed: int) -> int:
    """Sampling of the DPO win-rate evaluation's completions: seed + 7919."""
    return seed + 7919


def episode_reset_seed(seed: int, episodes: int) -> int:
    """Environment reset of a control run resumed after ``episodes`` episodes: seed + 7919·episodes."""
    return seed + 7919 * episodes


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed_everything: expected an int seed, got {seed!r} ({type(seed).__name__})")
    random.seed(seed)
    # NumPy's legacy global seed must fit in 32 bits; fold larger seeds rather than failing.
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def capture_rng_state() -> dict[str, Any]:
    """Snapshot of every global RNG as tuples, numbers and tensors only, so a checkpoint holding it can be
    read back with ``torch.load(weights_only=True)`` (which refuses NumPy arrays)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot from ``capture_rng_state``; missing entries (e.g. no CUDA then) are left alone."""
    unknown = set(state) - {"python", "numpy", "torch", "cuda"}
    if unknown:
        raise ValueError(
            f"restore_rng_state: unknown RNG state keys {sorted(unknown)}; "
            "expected python, numpy, torch, cuda"
        )
    if "python" in state:
        random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        saved = state["numpy"]
        keys = np.asarray(saved["keys"], dtype=np.int64).astype(np.uint32)
        np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) != torch.cuda.device_count():
            # Resuming on a different GPU count: restore what matches rather than refusing to resume.
            saved = saved[: torch.cuda.device_count()]
        for device, cuda_state in enumerate(saved):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` needs tuples; a state round-tripped through JSON/YAML comes back as lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
