"""The state of vectorised gymnasium environments as plain data, so a checkpoint can hold it without code.

A snapshot walks each environment's wrapper chain down to ``unwrapped`` (and, for a SyncVectorEnv, every
sub-environment) and keeps the attributes that define its state: NumPy arrays and scalars, numbers,
bools, strings, None, tuples/lists/dicts of those, and random generators as their ``bit_generator.state``.
Attributes that are structure rather than state (the wrapped env, spaces, specs, enums, callables) are
left out, since freshly built environments already have them. An attribute of any other type (a Box2D
world, a pygame surface) makes the environment impossible to capture: the snapshot is then None and a
resumed run restarts the episodes instead.

Restoring sets the attributes back on freshly built environments of the same structure.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
import torch

__all__ = ["capture_env_state", "restore_env_state"]

# NumPy dtype kinds stored byte for byte: bool, signed, unsigned, float, complex.
_NUMERIC_KINDS = "biufc"


class _NotPlain(Exception):
    """A value that has no plain-data form (its environment cannot be snapshotted)."""


def _is_structure(value: object) -> bool:
    """Parts of an environment that its constructor rebuilds identically: not state."""
    return isinstance(
        value, (gym.Env, gym.vector.VectorEnv, gym.spaces.Space, gym.envs.registration.EnvSpec, enum.Enum)
    ) or (callable(value) and not isinstance(value, np.random.Generator))


def _bytes_tensor(array: npt.NDArray[Any]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8).copy())


def _encode(value: object) -> object:
    """Plain data (tensors, numbers, str, None, lists and tagged dicts) that ``_decode`` turns back into
    ``value`` exactly; raises :class:`_NotPlain` for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in _NUMERIC_KINDS:
        kind = "array" if isinstance(value, np.ndarray) else "scalar"
        array = np.asarray(value)
        return {
            "kind": kind,
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "bytes": _bytes_tensor(array),
        }
    if isinstance(value, np.random.Generator):
        return {"kind": "generator", "state": _encode(value.bit_generator.state)}
    if isinstance(value, (tuple, list)):
        return {"kind": type(value).__name__, "items": [_encode(v) for v in value]}
    if isinstance(value, deque):
        return {"kind": "deque", "items": [_encode(v) for v in value], "maxlen": value.maxlen}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"kind": "dict", "items": {k: _encode(v) for k, v in value.items()}}
    raise _NotPlain(type(value).__name__)


def _decode(data: Any) -> Any:  # Any: the plain data of a snapshot, laid out by _encode
    if not isinstance(data, dict):
        return data
    kind = data["kind"]
    if kind in ("array", "scalar"):
        raw = data["bytes"].numpy().tobytes()
        array = np.frombuffer(raw, dtype=np.dtype(data["dtype"])).reshape(data["shape"]).copy()
        return array if kind == "array" else array[()]
    if kind == "generator":
        state = _decode(data["state"])
        generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
        generator.bit_generator.state = state
        return generator
    items = data["items"]
    if kind == "dict":
        return {k: _decode(v) for k, v in items.items()}
    decoded = [_decode(v) for v in items]
    if kind == "deque":
        return deque(decoded, maxlen=data["maxlen"])
    return tuple(decoded) if kind == "tuple" else decoded


def _capture_attributes(obj: object) -> dict[str, object]:
    state: dict[str, object] = {}
    for name, value in vars(obj).items():
        try:
            state[name] = _encode(value)
        except _NotPlain:
            if _is_structure(value) or isinstance(value, dict):  # metadata and constructor kwargs
                continue
            if isinstance(value, (list, tuple)) and all(_is_structure(v) for v in value):  # envs, env_fns
                continue
            raise _NotPlain(f"{type(obj).__name__}.{name} is a {type(value).__name__}") from None
    return state


def _chain(env: object) -> list[object]:
    """``env`` and every environment it wraps, outermost first."""
    levels = [env]
    while isinstance(inner := getattr(levels[-1], "env", None), (gym.Env, gym.vector.VectorEnv)):
        levels.append(inner)
    return levels


def _capture_chain(env: object) -> list[dict[str, object]]:
    return [{"class": type(level).__name__, "attrs": _capture_attributes(level)} for level in _chain(env)]


def capture_env_state(envs: gym.vector.VectorEnv[Any, Any, Any]) -> tuple[dict[str, Any] | None, str]:
    """(snapshot, "") — or (None, why) when some attribute has no plain-data form."""
    try:
        subs = getattr(_chain(envs)[-1], "envs", None)
        return {
            "vector": _capture_chain(envs),
            "envs": None if subs is None else [_capture_chain(sub) for sub in subs],
        }, ""
    except _NotPlain as err:
        return None, str(err)


def _restore_chain(env: object, saved: list[dict[str, Any]]) -> Callable[[], None]:
    """Check ``env``'s wrapper chain matches ``saved``; returns the function that sets the attributes, so
    nothing is changed until every environment has been checked."""
    levels = _chain(env)
    names = [type(level).__name__ for level in levels]
    if names != [s["class"] for s in saved]:
        raise ValueError(f"environment wrappers {names} differ from the saved {[s['class'] for s in saved]}")

    def apply() -> None:
        for level, state in zip(levels, saved, strict=True):
            for name, data in state["attrs"].items():
                value, current = _decode(data), getattr(level, name, None)
                if isinstance(value, np.random.Generator) and isinstance(current, np.random.Generator):
                    # in place: wrappers and spaces may hold the same generator object
                    current.bit_generator.state = value.bit_generator.state
                else:
                    setattr(level, name, value)

    return apply


def restore_env_state(envs: gym.vector.VectorEnv[Any, Any, Any], snapshot: dict[str, Any]) -> None:
    """Set a :func:`capture_env_state` snapshot back on freshly built ``envs``; ValueError when their
    structure (wrappers, number of copies) differs from the saved one."""
    saved_count = snapshot["vector"][0]["attrs"].get("num_envs", envs.num_envs)
    if saved_count != envs.num_envs:
        raise ValueError(f"the checkpoint has {saved_count} environment copies, the config {envs.num_envs}")
    appliers = [_restore_chain(envs, snapshot["vector"])]
    subs = getattr(_chain(envs)[-1], "envs", None)
    if (subs is None) != (snapshot["envs"] is None) or len(subs or []) != len(snapshot["envs"] or []):
        raise ValueError("the number of environment copies differs from the saved one")
    appliers += [
        _restore_chain(sub, saved) for sub, saved in zip(subs or [], snapshot["envs"] or [], strict=True)
    ]
    for apply in appliers:
        apply()
