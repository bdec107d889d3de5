"""One process per run directory: an advisory ``flock`` on ``RUN/.lock``.

The kernel drops the lock when its holder exits, however it exits (kill -9 included), so a stale lock
never needs cleaning up; the file holds the holder's PID only to name it in the error."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self

__all__ = ["RunInUseError", "RunLock", "release_all"]

_HELD: list[RunLock] = []  # this process's locks, for release_all


class RunInUseError(ValueError):
    """Another live process holds the run directory."""


class RunLock:
    """Hold ``root/.lock`` until :meth:`release` (or process exit)."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> Self:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUseError(
                f"run directory {self.path.parent} is in use by process {holder}; wait for it to finish, "
                "stop it, or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD.append(self)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
            _HELD.remove(self)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def release_all() -> None:
    """Release every run directory this process holds: the end of one ``rlft`` command (which may be
    called again in the same process, e.g. from Python)."""
    for lock in list(_HELD):
        lock.release()
