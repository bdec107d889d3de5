"""Where a run computes (``device``) and in which precision (``precision``): the two keys every
language-model command takes, checked and resolved in one place.

``device``: ``auto`` (this rank's GPU when CUDA is available, else the CPU), ``cpu``, ``cuda`` (this
rank's GPU: ``LOCAL_RANK`` under a launcher) or ``cuda:N``. ``precision``: ``fp32`` (float32 throughout)
or ``bf16`` (bfloat16 autocast around the transformer body; the weights, the optimiser state, the LM head,
the log-softmax and the losses stay float32 — mixed precision with float32 master weights, as TRL's and
verl's ``bf16`` do with autocast).
"""

from __future__ import annotations

import torch

from .config_types import ConfigError, check_compute
from .distributed import world

__all__ = ["resolve_device"]


def resolve_device(spec: str) -> torch.device:
    """The ``torch.device`` a ``device`` key names on this rank: ``auto`` and ``cuda`` take the GPU of
    this rank's ``local_rank`` (modulo the visible GPUs), as the launcher's one-process-per-GPU
    convention has it. A CUDA device that is not there is a one-line :class:`ConfigError`, never a
    fall-back to the CPU: a run asked for a GPU that silently computes on the CPU is hours lost."""
    check_compute(spec, "fp32")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"config key 'device': {spec} asked for, but torch sees no CUDA device (torch {torch.__version__}, "
            f"{build}); use device: cpu or auto"
        )
    count = torch.cuda.device_count()
    if spec in ("auto", "cuda"):
        return torch.device("cuda", world().local_rank % count)
    index = int(spec.split(":")[1])
    if index >= count:
        raise ConfigError(f"config key 'device': {spec} asked for, but torch sees {count} CUDA device(s)")
    if world().size > 1:
        raise ConfigError(
            f"config key 'device': {spec} names one GPU for every rank; use device: cuda (each rank takes "
            "its LOCAL_RANK's GPU) under a launcher"
        )
    return torch.device("cuda", index)
