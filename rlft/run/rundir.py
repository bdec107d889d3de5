"""Layout of one run's output directory: config, metrics, checkpoints and plots in one place."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_text
from .lock import RunLock
from .metrics import read_metrics

__all__ = ["CheckpointError", "RunDir", "RunDirError"]

# What an interrupted atomic write leaves beside its target (rlft.run.atomic, rlft.models.save_pretrained_atomic).
_STRAY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}$")


class CheckpointError(ValueError):
    """A run's checkpoint that cannot be resumed (written by an incompatible version or configuration)."""


class RunDirError(ValueError):
    """A run directory that cannot be created or written (a file in the way, no permission, a full disk)."""


@dataclass
class RunDir:
    """``root/{config.yaml, metrics.jsonl, checkpoints/, plots/}``."""

    root: Path
    _lock: RunLock | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @classmethod
    def create(cls, path: str | Path | None = None, prefix: str = "run") -> RunDir:
        """Create (or reuse) ``path``, or a fresh ``runs/{prefix}-{YYYYmmdd-HHMMSS}[-N]`` when it is None."""
        if path is None:
            root = _fresh_dir(Path("runs"), f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
        else:
            root = Path(path)
            if root.exists() and not root.is_dir():
                raise RunDirError(f"cannot create run directory at {root}: a file is in the way")
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as err:  # a file where a parent directory should be, no permission, …
                raise RunDirError(f"cannot create run directory at {root}: {err.strerror}") from None
        run = cls(root)
        try:
            run.checkpoints.mkdir(exist_ok=True)
            run.plots.mkdir(exist_ok=True)
        except OSError as err:
            raise RunDirError(f"cannot write in run directory {root}: {err.strerror}") from None
        if not os.access(root, os.W_OK):
            raise RunDirError(f"cannot write in run directory {root}: it is read-only")
        return run

    @property
    def claimed(self) -> bool:
        """This object holds the run directory's lock."""
        return self._lock is not None

    def claim(self) -> RunDir:
        """Lock the directory for this process (a second trainer on it fails with one line naming the
        holder's PID) and tidy what a killed run left behind (:meth:`remove_strays`). Only rank 0 of a
        multi-process run holds and tidies the directory; the other ranks share it and write nothing."""
        if not _main_rank():
            return self
        if self._lock is None:
            try:
                self._lock = RunLock(self.root).acquire()
            except PermissionError:
                raise RunDirError(f"cannot write in run directory {self.root}: permission denied") from None
        self.remove_strays()
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def remove_strays(self) -> list[Path]:
        """Delete the temporaries of interrupted atomic writes in the run and its checkpoints, and step
        directories whose trainer state was never written (a kill or a full disk mid-checkpoint). A
        ``.NAME.old-*`` whose ``NAME`` is missing is the only copy left by a kill between the two renames
        of a directory swap: it is moved back instead. Returns what was removed."""
        removed = []
        for parent in (self.root, self.checkpoints):
            if not parent.is_dir():
                continue
            for path in sorted(parent.iterdir()):
                match = _STRAY.match(path.name)
                if match is None:
                    continue
                target = parent / match.group("name")
                if match.group("kind") == "old" and not target.exists():
                    os.replace(path, target)
                    continue
                _remove(path)
                removed.append(path)
        if self.checkpoints.is_dir():
            for path in self.checkpoints.iterdir():
                if (
                    path.is_dir()
                    and path.name.startswith("step-")
                    and not (path / "trainer_state.pt").exists()
                ):
                    _remove(path)
                    removed.append(path)
        return removed

    def trim_metrics(self, last_step: int | None) -> None:
        """Drop metric rows logged after ``last_step`` (the checkpoint a run resumes from; None: every row,
        a run resumed before its first checkpoint starts again from step 0). Rank 0's job alone."""
        if not _main_rank() or not self.metrics_path.exists():
            return
        keep = -1 if last_step is None else last_step
        rows = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= keep]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory (to resume or plot)."""
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"no run directory at {root}")
        return cls(root)


def _main_rank() -> bool:
    from .distributed import is_main  # imports torch: only when a trainer claims a run

    return is_main()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fresh_dir(parent: Path, name: str) -> Path:
    """Create ``parent/name``, or ``name-2``, ``name-3``… if taken (two runs started in the same second)."""
    parent.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while True:
        candidate = parent / (name if suffix == 1 else f"{name}-{suffix}")
        try:
            candidate.mkdir()  # mkdir, not exists(): atomic, so two concurrent launches cannot share a dir
            return candidate
        except FileExistsError:
            suffix += 1
