"""Save and load control policies (with their observation normaliser) as safetensors, written atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save

from rlft.run import NonFiniteError, RunDirError, atomic_write_bytes
from rlft.run.skips import first_nonfinite_tensor

from .config import ControlConfig
from .normalize import ObsNormalizer
from .policies import ActorCritic

OBS_PREFIX = "obs_normalizer"


def require_finite(policy: ActorCritic, path: Path) -> None:
    """Refuse to write weights holding NaN or ±inf (a diverged run): they would only poison what loads them."""
    found = first_nonfinite_tensor(policy.state_dict())
    if found is not None:
        raise NonFiniteError(
            f"{path}: not written: policy parameter {found[0]} holds NaN or infinite values (the run "
            "diverged; lower lr)"
        )


def write_file(path: Path, data: bytes | Callable[[Path], None]) -> None:
    """Atomically replace ``path`` with ``data`` (bytes, or a function writing ``path`` atomically); a full
    disk or a missing permission is one line naming the path (the previous file stays intact and the
    temporary is removed)."""
    try:
        if callable(data):
            data(path)
        else:
            atomic_write_bytes(path, data)
    except OSError as err:
        raise RunDirError(f"cannot write {path}: {err.strerror or err}") from None


def save_policy(policy: ActorCritic, obs_norm: ObsNormalizer | None, path: Path, cfg: ControlConfig) -> Path:
    require_finite(policy, path)
    # clone: the state dict's per-layer tensors are views of one flat parameter, and safetensors
    # refuses tensors that share memory
    tensors = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    if obs_norm is not None:
        tensors.update(obs_norm.rms.tensors(OBS_PREFIX))
    meta = {"env": cfg.env, "algo": cfg.algo, "discrete": str(policy.discrete)}
    write_file(path, save(tensors, metadata=meta))
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
