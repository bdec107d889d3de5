"""A process pool for slow reward functions (``processes: N`` in a spec).

The batch is cut into N contiguous chunks, one per worker. Workers receive the *spec*, not the function,
and build the function themselves (once per process): that works for any importable module, for
``file.py:function`` references and for built-ins with options, whatever the start method. The pool uses
``forkserver`` where the platform has it (a clean, single-threaded parent to fork from: forking the
trainer itself, with its torch threads, risks deadlocks) and ``spawn`` elsewhere.

A batch call waits at most the spec's ``timeout``; past it the workers are killed (a stuck function
would otherwise keep running, and block the interpreter's exit, which joins pool workers) and a
:class:`RewardError` is raised; the next call starts fresh workers. Workers exit by themselves when the
process that created the pool dies, even by SIGKILL: each polls the creator's PID and start time (so a
reused PID does not count as alive; with ``forkserver`` the worker's parent is the fork server, not the
creator, so the parent PID alone would not do), and on Linux also asks the kernel for SIGKILL when its
parent dies (``PR_SET_PDEATHSIG``; the fork server exits when the creator does).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from rlft.data.formats import Completion, Prompt

from .calling import call_reward, slice_fields, timeout_error
from .errors import RewardError
from .spec import RewardSpec, make_function

__all__ = ["RewardPool"]

_BUILT: dict[str, Callable[..., object]] = {}  # per worker process: spec key → built function
WATCH_INTERVAL = 0.5  # seconds between a worker's checks that its creator is alive
CLOSE_GRACE = 2.0  # seconds close() lets workers finish before killing them
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of ``/proc/PID/stat``, clock ticks since boot), which
    with the PID names one process even when the PID is reused; None when it is gone, a zombie, or there
    is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": field 3 (state) onwards
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def is_alive(pid: int, started: str | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` (see :func:`start_time`) still runs; without
    a start time, whether any process has that PID."""
    if started is not None:
        return start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _exit_with_creator(pid: int, started: str | None) -> None:
    """Worker initializer: exit (``os._exit(1)``) as soon as the creating process is gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # best effort; the polling covers the rest
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while is_alive(pid, started):
            time.sleep(WATCH_INTERVAL)
        os._exit(1)

    threading.Thread(target=watch, name="rlft-reward-creator-watch", daemon=True).start()


def _run_chunk(
    spec: RewardSpec,
    name: str,
    prompts: list[Prompt],
    completions: list[Completion],
    fields: dict[str, object],
    offset: int,
) -> list[object]:
    key = spec.key()
    if key not in _BUILT:
        _BUILT[key] = make_function(spec)
    raw = call_reward(_BUILT[key], name, prompts, completions, fields, offset)
    return [v.item() if hasattr(v, "item") else v for v in raw]  # plain numbers travel back cheaply


class RewardPool:
    """``processes`` workers for one reward spec; ``close()`` shuts them down."""

    def __init__(self, spec: RewardSpec, name: str):
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self.spec, self.name, self.processes, self.timeout = spec, name, spec.processes, spec.timeout
        self.executor: ProcessPoolExecutor | None = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        me = os.getpid()
        return ProcessPoolExecutor(
            self.processes,
            mp_context=self.context,
            initializer=_exit_with_creator,
            initargs=(me, start_time(me)),
        )

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes started so far."""
        return list(getattr(self.executor, "_processes", None) or {})

    def __call__(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], fields: dict[str, object]
    ) -> list[object]:
        if self.executor is None:  # closed, or killed after a timeout
            self.executor = self._new_executor()
        executor = self.executor
        n = len(completions)
        size = max(math.ceil(n / self.processes), 1)
        futures = [
            executor.submit(
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
        deadline = time.monotonic() + self.timeout if self.timeout else None
        out: list[object] = []
        for future in futures:  # in order; the first failing chunk's RewardError propagates
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                out.extend(future.result(timeout=left))
            except FutureTimeout:
                if future.done():  # the chunk itself raised a TimeoutError
                    raise
                self._stop(grace=0.0)
                raise timeout_error(self.name, self.timeout or 0.0, n) from None
            except BrokenProcessPool:
                self._stop(grace=0.0)
                raise RewardError(
                    f"reward function {self.name!r}: a worker process of its pool died during a batch of {n} "
                    "samples (killed, e.g. out of memory, or crashed in native code)"
                ) from None
        return out

    def _stop(self, grace: float) -> None:
        """Shut the executor down, give its workers ``grace`` seconds to finish, then kill the rest."""
        executor, self.executor = self.executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        manager = getattr(executor, "_executor_manager_thread", None)
        executor.shutdown(wait=False, cancel_futures=True)
        running = {p.sentinel: p for p in processes}
        deadline = time.monotonic() + grace
        while running:
            ended = multiprocessing.connection.wait(list(running), max(deadline - time.monotonic(), 0.0))
            if not ended:
                break
            for sentinel in ended:
                running.pop(sentinel)
        for process in running.values():
            process.kill()
        if manager is not None:  # it reaps the workers; they are ending or dead, so this is short
            manager.join(CLOSE_GRACE)

    def close(self) -> None:
        """Stop the workers: those still busy after a short grace are killed (idempotent)."""
        self._stop(grace=CLOSE_GRACE)
