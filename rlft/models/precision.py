"""The one switch for bfloat16 compute: passed explicitly, never read back from the global autocast state."""

from __future__ import annotations

import contextlib

import torch


def bf16_autocast(enabled: bool, device_type: str) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast on ``device_type`` when ``enabled``, else a no-op context.

    Matmuls of the transformer body then run in bfloat16 with float32 weights kept as the master copy;
    callers keep the LM head and the log-softmax in float32 (see :func:`rlft.models.logprobs.head_logprobs`).
    """
    return torch.autocast(device_type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()
