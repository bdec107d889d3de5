"""Layout of one run's output directory: config, metrics, checkpoints and plots in one place."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CheckpointError", "RunDir"]


class CheckpointError(ValueError):
    """A run's checkpoint that cannot be resumed (written by an incompatible version or configuration)."""


@dataclass
class RunDir:
    """``root/{config.yaml, metrics.jsonl, checkpoints/, plots/}``."""

    root: Path

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
                raise FileExistsError(f"cannot create run directory at {root}: a file is in the way")
            root.mkdir(parents=True, exist_ok=True)
        run = cls(root)
        run.checkpoints.mkdir(exist_ok=True)
        run.plots.mkdir(exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory (to resume or plot)."""
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"no run directory at {root}")
        return cls(root)


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
