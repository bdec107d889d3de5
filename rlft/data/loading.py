"""``load_records``: any supported source → a validated list of records of one format.

Sources: ``.jsonl``/``.ndjson``, ``.json`` (a list, or ``{"data": [...]}``), ``.parquet``, ``.csv`` (list,
number and boolean fields written as JSON in their cells), a directory written by ``save_to_disk`` (a
``DatasetDict`` directory gives ``split``), a directory holding ``<split>.jsonl`` (or .json/.parquet/.csv),
a hub dataset id such as ``trl-lib/Capybara`` (online users only), or a built-in task written
``task:NAME`` or ``task:NAME?option=value&...`` (see ``rlft.data.tasks``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from rlft.run import atomic_write_text

from .errors import DataError
from .formats import PromptRecord, Record, check_format, detect_format, validate_record
from .readers import open_rows, read_text_lines
from .tasks import load_task_records


def load_records(
    source: str | Path, fmt: str | None = None, split: str = "train", limit: int | None = None
) -> list[Record]:
    """Read and validate every record of ``source``.

    ``fmt`` names the format to validate against; when it is None the format is detected from the first
    record and every later record must have the same shape. Naming ``fmt`` explicitly also lets a richer
    record serve a simpler format: a preference file read with ``fmt="prompt_only"`` gives its prompts,
    with ``chosen``/``rejected`` kept in ``extra``. ``limit`` reads only the first ``limit`` records.
    """
    if fmt is not None:
        check_format(fmt)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"{source}: limit must be a positive integer or None, got {limit!r}")
    if isinstance(source, str) and source.startswith("task:"):
        return load_task_records(source, fmt=fmt, split=split, limit=limit)

    rows, empty_hint = open_rows(source, split)
    detected = fmt is None
    records: list[Record] = []
    for where, row in islice(rows, limit):
        if fmt is None:
            fmt = detect_format(_non_null(row), where)
        record = validate_record(row, fmt, where)
        if detected and (shape := detect_format(_non_null(row), where)) != fmt:
            raise DataError(
                f"{where}: record has the fields of {shape} data, but the first record is {fmt} data "
                f"(all records must share one format; pass fmt= to choose one)"
            )
        records.append(record)
    if not records:
        raise DataError(f"{source}: no records (expected at least one {empty_hint})")
    return records


def load_text_prompts(path: str | Path, limit: int | None = None) -> list[PromptRecord]:
    """String prompts from a ``.txt`` file, one per non-blank line, each located ``file:LINE``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    records = [PromptRecord(prompt=line, where=where) for where, line in islice(read_text_lines(path), limit)]
    if not records:
        raise DataError(f"{path}: no prompts (expected one prompt per line)")
    return records


def _non_null(row: object) -> object:
    # Columnar files (CSV, Parquet, HF) give every row every column; a null cell is not a field the row has.
    return {k: v for k, v in row.items() if v is not None} if isinstance(row, dict) else row


def save_records(records: Iterable[Record], path: str | Path) -> None:
    """Write records to ``.jsonl`` (one per line) or ``.json`` (a list), atomically."""
    path = Path(path)
    rows = [r.to_row() for r in records]
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif path.suffix == ".json":
        text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    else:
        raise DataError(
            f"{path}: save_records writes .jsonl or .json files, got {path.suffix or 'no suffix'!r}"
        )
    atomic_write_text(path, text)
