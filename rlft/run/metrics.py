"""Scalar metrics: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard when installed."""

from __future__ import annotations

import importlib.util
import json
import math
import numbers
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

__all__ = ["MetricsWriter", "read_metrics"]


def _scalar(key: str, value: Any) -> float | int | None:
    """Plain Python number for JSON; None (→ null) for NaN/inf, which strict JSON cannot hold."""
    if hasattr(value, "item") and callable(value.item):  # torch.Tensor and numpy scalars/0-d arrays
        count = value.numel() if hasattr(value, "numel") else getattr(value, "size", 1)
        if count != 1:
            shape = tuple(getattr(value, "shape", ()))
            raise ValueError(f"metric '{key}': expected a scalar, got a tensor/array of shape {shape}")
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise ValueError(f"metric '{key}': expected a number, got {value!r} ({type(value).__name__})")


def _drop_partial_last_line(path: Path) -> None:
    """Cut a line left half-written by a crash, so a resumed run's appends start on a fresh line."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        end = f.seek(0, 2)
        pos = end
        while pos > 0:
            chunk_start = max(0, pos - 65536)
            f.seek(chunk_start)
            chunk = f.read(pos - chunk_start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = chunk_start + newline + 1
                break
            pos = chunk_start
        else:
            keep = 0
        if keep != end:
            f.truncate(keep)


def _tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class MetricsWriter:
    """Append-only metrics log for one run.

    Each ``log`` writes ``{"step", "time", **metrics}`` as one line and flushes, so a crash loses at most the
    line being written. TensorBoard events are buffered and written every ``tb_flush_secs``, at
    :meth:`flush` (trainers call it with every checkpoint, so TensorBoard is complete up to the last
    checkpoint, as the JSONL file is) and at close. ``resume_step``: the step of the checkpoint a resumed run
    continues from; TensorBoard then drops the dead run's events after it (``purge_step``), as the
    JSONL rows after it were dropped. ``enabled=False`` turns every method into a no-op (non-zero
    data-parallel ranks).
    """

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        enabled: bool = True,
        tb_flush_secs: float = 30.0,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self._purge_step = None if resume_step is None else resume_step + 1
        # TensorBoard events cost ~0.25 ms per scalar (protobuf + write), a real share of a fast control
        # update, so they are buffered and written every `tb_flush_secs` and at close; JSONL stays per row.
        self._tb_pending: list[tuple[int, dict[str, Any]]] = []
        self._tb_flush_secs = tb_flush_secs
        self._tb_last_flush = time.monotonic()
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file: Any = None
        self._tb: Any = None
        self._tb_dir: Path | None = None
        if not enabled:
            return
        self._start = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_last_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        # The SummaryWriter is created at the first flush, not here: importing TensorBoard and opening the
        # event file take ~70 ms, a real share of a seconds-long control run's time to its target.
        self._tb_dir = Path(run_dir) / "tb" if tensorboard and _tensorboard_installed() else None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write one line of metrics for ``step``."""
        if not self.enabled:
            return
        if self._file is None:
            raise ValueError(f"{self.path}: MetricsWriter.log called after close()")
        values = {key: _scalar(key, value) for key, value in metrics.items()}
        for reserved in ("step", "time"):
            if reserved in values:
                raise ValueError(f"metric name '{reserved}' is reserved for the row's {reserved}")
        row = {"step": int(step), "time": round(time.monotonic() - self._start, 3), **values}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb_dir is not None:
            self._tb_pending.append((int(step), values))
            if time.monotonic() - self._tb_last_flush >= self._tb_flush_secs:
                self._flush_tb()

    def flush(self) -> None:
        """Write buffered TensorBoard events now (the JSONL file is always up to date)."""
        if self.enabled and self._tb_dir is not None:
            self._flush_tb()

    def _flush_tb(self) -> None:
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self._tb_dir), purge_step=self._purge_step)
        for step, values in self._tb_pending:
            for key, value in values.items():
                if value is not None:
                    self._tb.add_scalar(key, value, global_step=step)
        self._tb.flush()
        self._tb_pending.clear()
        self._tb_last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close the log files; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb_dir is not None:
            self._flush_tb()
            self._tb.close()
            self._tb, self._tb_dir = None, None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl into a list of dicts.

    A truncated *last* line (the process died mid-write) is skipped; a bad line anywhere else is an error
    naming the file and line.
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            # The final line has no trailing newline only when a write was cut off.
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: corrupt metrics line ({e.msg}): {line[:80]!r}") from None
        if not isinstance(row, dict):
            # ValueError like the other corrupt-file errors, so callers need to catch only one type.
            raise ValueError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return rows
