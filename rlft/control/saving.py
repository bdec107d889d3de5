"""Save and load control policies as safetensors (written atomically)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from rlft.run import atomic_path

from .config import ControlConfig
from .policies import ActorCritic


def save_policy(policy: ActorCritic, path: Path, cfg: ControlConfig) -> Path:
    tensors = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
    meta = {
        "env": cfg.env,
        "algo": cfg.algo,
        "discrete": str(policy.discrete),
        "hidden": ",".join(map(str, cfg.hidden)),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_policy_weights(policy: ActorCritic, path: Path) -> ActorCritic:
    policy.load_state_dict(load_file(str(path)))
    return policy
