"""Save and load control policies (with their observation normaliser) as safetensors, written atomically."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from rlft.run import atomic_path

from .config import ControlConfig
from .normalize import ObsNormalizer
from .policies import ActorCritic

OBS_PREFIX = "obs_normalizer"


def save_policy(policy: ActorCritic, obs_norm: ObsNormalizer | None, path: Path, cfg: ControlConfig) -> Path:
    # clone: the state dict's per-layer tensors are views of one flat parameter, and safetensors
    # refuses tensors that share memory
    tensors = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    if obs_norm is not None:
        tensors.update(obs_norm.rms.tensors(OBS_PREFIX))
    meta = {"env": cfg.env, "algo": cfg.algo, "discrete": str(policy.discrete)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_policy(policy: ActorCritic, path: Path) -> ObsNormalizer | None:
    """Load weights into `policy`; returns the saved observation normaliser (frozen use), if any."""
    tensors = load_file(str(path))
    norm_keys = [k for k in tensors if k.startswith(OBS_PREFIX + ".")]
    obs_norm = None
    if norm_keys:
        obs_norm = ObsNormalizer(tuple(tensors[f"{OBS_PREFIX}.mean"].shape))
        obs_norm.rms.load_tensors(tensors, OBS_PREFIX)
    policy.load_state_dict({k: v for k, v in tensors.items() if k not in norm_keys})
    return obs_norm
