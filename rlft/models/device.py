"""Moving inputs to where a model's weights are.

Batches, rollouts and caches are built on the CPU (from Python lists and tokenizer output) and kept
there between stages; each pass moves its inputs to the model's device at the one place it calls the
model. On a CPU-only run every move is a no-op that returns the same tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["model_device", "place", "to_device"]

T = TypeVar("T")
M = TypeVar("M", bound=torch.nn.Module)


def place(model: M, device: torch.device) -> M:
    """``model`` with its weights moved to ``device`` (in place; returned for chaining)."""
    torch.nn.Module.to(model, device)
    return model


def model_device(model: torch.nn.Module) -> torch.device:
    """The device ``model`` computes on: that of its first parameter (every rlft model keeps its weights on
    one device), except that FSDP2's CPU offload keeps the shards on the CPU and computes on the GPU."""
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu")
    mesh = getattr(param, "device_mesh", None)  # a DTensor shard (FSDP2): it computes on its mesh's device
    if mesh is not None and mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return param.device


def to_device(value: T, device: torch.device) -> T:
    """``value`` with every tensor in it (a tensor, or a mapping / list / tuple of them, nested) on
    ``device``; anything else is returned as it is."""
    if isinstance(value, Tensor):
        if value.device == device:
            return value
        # asynchronous only host → GPU: a GPU → host copy must be complete before the host reads it
        return value.to(device, non_blocking=device.type == "cuda")  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
        moved: Any = [to_device(v, device) for v in value]
        return type(value)(moved) if isinstance(value, tuple) else moved
    return value
