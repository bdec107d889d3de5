"""Atomic file writes: write to a temp file beside the target, then ``os.replace`` it into place.

A crash mid-write therefore leaves either the old file or the new one, never a truncated mix.
The temp file lives in the same directory because ``os.replace`` is only atomic within one filesystem.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _reserve_temp(target: Path) -> Path:
    """Create an empty, uniquely named temp file beside ``target``.

    ``os.open`` with mode 0o666 (not ``mkstemp``'s 0o600) so the final file gets the usual umask permissions.
    """
    while True:
        tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, on error delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve_temp(target)
    try:
        yield tmp
        if tmp.exists():
            # fsync before rename so the new name never points at data still only in the page cache.
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _WriteErrors:
    """A binary file that remembers the OSError of a failed write: torch.save reports any failure of its
    writer as a RuntimeError about stream positions, which would hide a full disk."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self.file.write(data))
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` whose write failures are the OSError the disk gave (ENOSPC, EROFS…)."""
    with open(path, "wb") as f:
        writer = _WriteErrors(f)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]  # a file-like with write/flush is all torch uses
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Atomically replace ``path`` with ``torch.save(obj)``, streamed to disk (a checkpoint's optimiser state
    can be larger than memory allows twice); a failed write raises the disk's OSError."""
    with atomic_path(path) as tmp:
        _torch_save(obj, tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON with a trailing newline."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
