"""Stopping a run cleanly on SIGTERM (a cluster's pre-emption) or SIGINT (Ctrl-C).

The first signal only sets a flag: the trainer finishes the step it is in, writes a checkpoint and raises
:class:`RunInterrupted`, which the command line turns into one line saying where to resume and the
conventional exit status 128 + signal number (143 for SIGTERM, 130 for SIGINT). A second signal while
that checkpoint is being written restores the default handler's behaviour at once (KeyboardInterrupt or
termination), for a user who really wants out.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Self

__all__ = ["RunInterrupted", "StopSignals"]

_HANDLED = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """A run stopped on a signal after saving its state; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """Context manager: while active, SIGTERM and SIGINT ask the loop to stop instead of killing it.

    Only the main thread can install signal handlers; elsewhere (a trainer driven from a worker thread)
    the signals keep their default behaviour and :attr:`requested` stays False."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def interrupted(self, what: str) -> RunInterrupted:
        """The exception a trainer raises after saving: ``what`` says where the state is (and how to resume)."""
        return RunInterrupted(f"stopped by {self.name}: {what}", self.exit_code)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: behave as if we had never caught it
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.signum = signum

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in _HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()
