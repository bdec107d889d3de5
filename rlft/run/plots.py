"""Plots of a run's metrics.jsonl: one panel per metric against step (or another column)."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .metrics import read_metrics
from .rundir import RunDir

__all__ = ["plot_metrics", "plot_run"]

MAX_PANELS = 12
_SKIP = ("step", "time")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _default_keys(rows: list[dict[str, Any]], x: str) -> list[str]:
    """Numeric columns in first-seen order, minus step/time/x, capped so the figure stays readable."""
    keys: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in _SKIP and key != x and _is_number(value):
                keys.setdefault(key)
    return list(keys)[:MAX_PANELS]


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` points; the first points average what is available."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _is_noisy(values: list[float]) -> bool:
    """Noisy when point-to-point jumps are large relative to the overall range (e.g. episode returns)."""
    if len(values) < 10:
        return False
    spread = max(values) - min(values)
    if spread == 0:
        return False
    jumps = sum(abs(b - a) for a, b in itertools.pairwise(values)) / (len(values) - 1)
    return jumps > 0.1 * spread


def plot_metrics(
    metrics_path: str | Path, out_path: str | Path, keys: Sequence[str] | None = None, x: str = "step"
) -> Path:
    """Render metrics as a grid of line plots into a PNG at ``out_path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # here, not at import: rlft.run must stay importable without loading matplotlib
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    keys = list(keys) if keys is not None else _default_keys(rows, x)
    if not keys:
        raise ValueError(f"{metrics_path}: no numeric metrics to plot")
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.0 * nrows), squeeze=False)
    try:
        for ax, key in zip(axes.flat, keys, strict=False):
            # Rows missing the key or x (or holding null for a NaN) are skipped, not plotted as zero.
            points = [(r[x], r[key]) for r in rows if _is_number(r.get(x)) and _is_number(r.get(key))]
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            if _is_noisy(ys):
                ax.plot(xs, ys, color="C0", alpha=0.3, linewidth=0.8)
                window = max(2, len(ys) // 20)
                ax.plot(xs, _moving_average(ys, window), color="C0", linewidth=1.5)
            else:
                ax.plot(xs, ys, color="C0", linewidth=1.2, marker="." if len(ys) < 30 else None)
            ax.set_title(key, fontsize=10)
            ax.set_xlabel(x, fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if not points:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        for ax in list(axes.flat)[len(keys) :]:
            ax.set_visible(False)
        fig.tight_layout()
        out = Path(out_path)
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)  # format given: the temp name has no .png suffix
    finally:
        plt.close(fig)
    return out


def plot_run(run_dir: RunDir | str | Path, keys: Sequence[str] | None = None) -> Path:
    """Plot ``run_dir/metrics.jsonl`` to ``run_dir/plots/metrics.png``; accepts a RunDir or a path."""
    root = run_dir.root if isinstance(run_dir, RunDir) else Path(run_dir)
    return plot_metrics(root / "metrics.jsonl", root / "plots" / "metrics.png", keys=keys)
