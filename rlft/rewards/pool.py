"""A process pool for slow reward functions (``processes: N`` in a spec).

The batch is cut into N contiguous chunks, one per worker. Workers receive the *spec*, not the function,
and build the function themselves (once per process): that works for any importable module, for
``file.py:function`` references and for built-ins with options, whatever the start method. The pool uses
``forkserver`` where the platform has it (a clean, single-threaded parent to fork from: forking the
trainer itself, with its torch threads, risks deadlocks) and ``spawn`` elsewhere.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .calling import call_reward, slice_fields
from .spec import RewardSpec, make_function

__all__ = ["RewardPool"]

_BUILT: dict[str, Callable[..., Any]] = {}  # per worker process: spec key → built function


def _run_chunk(
    spec: RewardSpec,
    name: str,
    prompts: list[Any],
    completions: list[Any],
    fields: dict[str, Any],
    offset: int,
) -> list[Any]:
    key = spec.key()
    if key not in _BUILT:
        _BUILT[key] = make_function(spec)
    raw = call_reward(_BUILT[key], name, prompts, completions, fields, offset)
    return [v.item() if hasattr(v, "item") else v for v in raw]  # plain numbers travel back cheaply


class RewardPool:
    """``processes`` workers for one reward spec; ``close()`` shuts them down."""

    def __init__(self, spec: RewardSpec, name: str):
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self.spec, self.name, self.processes = spec, name, spec.processes
        self.executor = ProcessPoolExecutor(spec.processes, mp_context=context)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], fields: dict[str, Any]
    ) -> list[Any]:
        n = len(completions)
        size = max(math.ceil(n / self.processes), 1)
        futures = [
            self.executor.submit(
                _run_chunk,
                self.spec,
                self.name,
                list(prompts[s : s + size]),
                list(completions[s : s + size]),
                slice_fields(fields, n, s, s + size),
                s,
            )
            for s in range(0, n, size)
        ]
        out: list[Any] = []
        for future in futures:  # in order; the first failing chunk's RewardError propagates
            out.extend(future.result())
        return out

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
