"""Raw row readers: each yields ``(where, row)`` pairs from one kind of source, nothing else.

Validation happens later (``formats.validate_record``); readers only turn bytes into Python values and
attach a location string to each row so that every later error can say where the row came from.
Readers are generators, so ``load_records(limit=...)`` stops reading early on line-oriented files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, one_line, show

Rows = Iterator[tuple[str, Any]]

FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".csv")

# What "no records" means for each source, for the empty-dataset error.
EMPTY_HINTS = {
    ".jsonl": "JSON object, one per line",
    ".ndjson": "JSON object, one per line",
    ".json": 'object in the list or in {"data": [...]}',
    ".parquet": "row",
    ".pq": "row",
    ".csv": "data row below the header",
}


def _open_text(path: Path):
    # utf-8-sig: files saved by spreadsheet programs often start with a byte-order mark.
    return open(path, encoding="utf-8-sig", newline="")


def read_jsonl(path: Path) -> Rows:
    """One JSON value per line; blank lines are allowed (they hold no record)."""
    with _open_text(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
                yield f"{path}:{lineno}", row
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({one_line(e)})") from None


def read_json(path: Path) -> Rows:
    """A JSON list of objects, or an object whose ``data`` field is that list."""
    try:
        with _open_text(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        # "Extra data" after a first complete value is the signature of JSON Lines saved as .json.
        hint = "; one object per line is JSON Lines: name the file .jsonl" if e.msg == "Extra data" else ""
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno}){hint}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({one_line(e)})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a list of records or {{"data": [...]}}, got {show(data)}')
    for i, row in enumerate(data, 1):
        yield f"{path}:record {i}", row


# Fields that hold lists, numbers or booleans. CSV cells are text, so these are written as JSON
# ('["a", "b"]', '[0.5, 1]', 'true', '0.7'); every other column stays the literal string it is, so a
# completion "42" is the string "42", not the number 42.
_CSV_JSON_FIELDS = {"messages", "responses", "scores", "label", "margin"}
# Fields that may hold a conversational list of messages ('[{"role": "user", ...}]') or plain text.
_CSV_MESSAGE_FIELDS = {"prompt", "completion", "chosen", "rejected"}


def _csv_cell(name: str, value: str | None) -> Any:
    if value is None:
        return None
    if name in _CSV_JSON_FIELDS:
        text = value.strip()
        if not text:
            return None  # a blank cell is a missing value, e.g. an optional margin
        if name == "label" and text.lower() in ("true", "false"):
            text = text.lower()  # pandas writes Python's True/False
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value  # validation reports the field with what was expected
    if name in _CSV_MESSAGE_FIELDS and value.lstrip().startswith("["):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return decoded if isinstance(decoded, list) else value
    return value


def read_csv(path: Path) -> Rows:
    """A header row naming the fields, then one record per row; see ``_CSV_JSON_FIELDS`` for typed cells."""
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        try:
            for i, row in enumerate(reader, 1):
                where = f"{path}:row {i}"
                if None in row:  # DictReader files surplus cells under the key None
                    n_cells = len(row) - 1 + len(row[None])
                    raise DataError(f"{where}: {n_cells} cells, but the header has {len(reader.fieldnames)}")
                yield where, {k: _csv_cell(k, v) for k, v in row.items()}
        except csv.Error as e:
            raise DataError(f"{path}:row {reader.line_num}: invalid CSV: {one_line(e)}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({one_line(e)})") from None


def read_parquet(path: Path) -> Rows:
    """Rows of a Parquet file, read batch by batch; nested lists/structs arrive as Python lists/dicts."""
    import pyarrow.parquet as pq  # deferred: pyarrow is heavy and only needed for Parquet

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield f"{path}:index {i}", row
                i += 1
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError; a non-Parquet file an OSError
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable Parquet file ({one_line(e)})") from None


def _dataset_rows(ds: Any, where_prefix: str) -> Rows:
    for i, row in enumerate(ds):
        yield f"{where_prefix}:index {i}", row


def read_hf_disk(path: Path, split: str) -> Rows:
    """A directory written by ``Dataset.save_to_disk`` (used whole) or ``DatasetDict.save_to_disk`` (``split``)."""
    import datasets  # deferred: importing datasets takes a second

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for a bad directory; all mean the same here
        raise DataError(f"{path}: not a readable Hugging Face dataset directory ({one_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (available: {', '.join(ds)})")
        return _dataset_rows(ds[split], f"{path}[{split}]")
    return _dataset_rows(ds, str(path))


def read_hub(name: str, split: str) -> Rows:
    """A dataset on the Hugging Face hub (needs network access; never used by the tests)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, auth, missing split, ...: report it on one line
        raise DataError(
            f"{name}: not a local file or directory, and loading split {split!r} from the Hugging Face hub "
            f"failed ({one_line(e)})"
        ) from None
    return _dataset_rows(ds, f"{name}[{split}]")


def _is_hf_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("dataset_dict.json", "dataset_info.json", "state.json"))


def open_rows(source: str | Path, split: str) -> tuple[Rows, str]:
    """Pick the reader for ``source``; return its rows and what an empty source should have held.

    A directory is either a saved HF dataset or a folder of split files (``train.jsonl``, ``eval.parquet``,
    ...); an existing file is read by its suffix; a string that is neither a path nor has a data-file suffix
    is taken as a hub dataset id.
    """
    path = Path(source)
    if path.is_dir():
        if _is_hf_dir(path):
            return read_hf_disk(path, split), f"row in split {split!r}"
        for suffix in FILE_SUFFIXES:
            if (path / f"{split}{suffix}").is_file():
                return open_rows(path / f"{split}{suffix}", split)
        raise DataError(
            f"{path}: directory is neither a saved Hugging Face dataset nor holds a {split}.jsonl/.json/"
            f".parquet/.csv file"
        )
    suffix = path.suffix.lower()
    if path.is_file():
        readers = {
            ".jsonl": read_jsonl,
            ".ndjson": read_jsonl,
            ".json": read_json,
            ".parquet": read_parquet,
            ".pq": read_parquet,
            ".csv": read_csv,
        }
        if suffix not in readers:
            raise DataError(
                f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of {FILE_SUFFIXES}"
            )
        return readers[suffix](path), EMPTY_HINTS[suffix]
    if suffix in FILE_SUFFIXES or isinstance(source, Path) or str(source).startswith((".", "/", "~")):
        raise DataError(f"{source}: file not found")
    return read_hub(str(source), split), f"row in split {split!r}"
