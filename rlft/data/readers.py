"""Raw row readers: each yields ``(where, row)`` pairs from one kind of source, nothing else.

Validation happens later (``formats.validate_record``); readers only turn bytes into Python values and
attach a location string to each row so that every later error can say where the row came from. They also
refuse, with that location, what JSON parses but no record should hold: a key repeated in one object (JSON
keeps the last silently), a lone UTF-16 surrogate (no tokenizer can encode it), nesting deeper than
``MAX_DEPTH``, and numbers Python cannot convert.
Readers are generators, so ``load_records(limit=...)`` stops reading early on line-oriented files.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from rlft.run.config_types import utf8_encodable

from .errors import DataError, one_line, show

Rows = Iterator[tuple[str, object]]  # (where, the row as parsed: validation says what it must be)

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


# Records are flat objects of strings, lists of messages and numbers; 64 levels of nesting is far more than
# any of them needs, and bounding it keeps every later walk, repr and error message clear of Python's
# recursion limit (JSON nested 100k deep is otherwise a RecursionError from the parser).
MAX_DEPTH = 64
# A JSON escape of a UTF-16 surrogate: the only way a lone surrogate (text no tokenizer can encode) gets in.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_BOM = "\ufeff"


class _DuplicateKey(dict[str, object]):
    """A parsed JSON object that repeated a key; ``duplicate`` is the first repeated one."""

    duplicate: str = ""


def _object_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads silently keeps the last value of a repeated key; a record with two prompts is an error, so
    # the object is flagged here and reported, with its location, by _problem.
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    flagged = _DuplicateKey(obj)
    for k, _ in pairs:
        if k in seen:
            flagged.duplicate = k
            break
        seen.add(k)
    return flagged


def _loads(text: str) -> tuple[object, bool]:
    """Parse JSON text; also say whether the value needs the structural walk of ``_problem``."""
    flagged: list[bool] = []

    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        obj = _object_pairs(pairs)
        if isinstance(obj, _DuplicateKey):
            flagged.append(True)
        return obj

    value = json.loads(text, object_pairs_hook=hook)
    deep = text.count("[") + text.count("{") > MAX_DEPTH
    surrogate = "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
    return value, bool(flagged) or deep or surrogate


def _problem(value: object) -> str | None:
    """The first structural problem of a parsed JSON value: nesting deeper than MAX_DEPTH, a repeated key,
    or a string (or key) holding a lone UTF-16 surrogate; None when there is none."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(item, str) and not utf8_encodable(item):
            return f"field '{path or '.'}': lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair)"
        if isinstance(item, _DuplicateKey):
            inside = f" in field '{path}'" if path else ""
            return f"duplicate key {item.duplicate!r}{inside} (each key may appear once)"
        if isinstance(item, dict):
            for key, sub in item.items():
                if not utf8_encodable(key):
                    return f"key {key!r}: lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair)"
                stack.append((sub, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
    return None


def _json_error(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON: {e.msg} (column {e.colno})"
    if isinstance(e, RecursionError):
        return f"invalid JSON: nested more than {MAX_DEPTH} levels deep"
    return f"invalid JSON: {one_line(e)}"  # e.g. an integer over Python's 4300-digit conversion limit


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep_line(text: str) -> int:
    """The line where JSON text first nests deeper than MAX_DEPTH (strings skipped)."""
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, m.start()) + 1
        elif token in "]}":
            depth -= 1
    return 1


def _decode_utf8(data: bytes, path: Path, first_line: int = 1) -> str:
    """``data`` as text, or a DataError naming the line and column of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}: {e.reason})"
        ) from None


def read_jsonl(path: Path) -> Rows:
    """One JSON value per line; blank lines are allowed (they hold no record). Lines end at LF (CRLF too)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode_utf8(raw, path, lineno)
            if lineno == 1:
                line = line.removeprefix(_BOM)  # written by spreadsheet programs and some editors
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row, walk = _loads(line)
            except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
                raise DataError(f"{where}: {_json_error(e)}") from None
            if walk and (problem := _problem(row)):
                raise DataError(f"{where}: invalid record: {problem}")
            yield where, row


def read_json(path: Path) -> Rows:
    """A JSON list of objects, or an object whose ``data`` field is that list."""
    text = _decode_utf8(path.read_bytes(), path).removeprefix(_BOM)
    try:
        data, walk = _loads(text)
    except json.JSONDecodeError as e:
        # "Extra data" after a first complete value is the signature of JSON Lines saved as .json.
        hint = "; one object per line is JSON Lines: name the file .jsonl" if e.msg == "Extra data" else ""
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno}){hint}") from None
    except RecursionError as e:
        raise DataError(f"{path}:{_too_deep_line(text)}: {_json_error(e)}") from None
    except ValueError as e:
        raise DataError(f"{path}: {_json_error(e)}") from None
    if isinstance(data, _DuplicateKey):
        raise DataError(f"{path}: invalid JSON: duplicate key {data.duplicate!r} at the top level")
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a list of records or {{"data": [...]}}, got {show(data)}')
    for i, row in enumerate(data, 1):
        where = f"{path}:record {i}"
        if walk and (problem := _problem(row)):
            raise DataError(f"{where}: invalid record: {problem}")
        yield where, row


def read_text_lines(path: Path) -> Iterator[tuple[str, str]]:
    """One string per non-blank line of a plain-text file (trailing CR/LF removed), e.g. a prompts file."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode_utf8(raw, path, lineno).rstrip("\r\n")
            if lineno == 1:
                line = line.removeprefix(_BOM)
            if line.strip():
                yield f"{path}:{lineno}", line


# Fields that hold lists, numbers or booleans. CSV cells are text, so these are written as JSON
# ('["a", "b"]', '[0.5, 1]', 'true', '0.7'); every other column stays the literal string it is, so a
# completion "42" is the string "42", not the number 42.
_CSV_JSON_FIELDS = {"messages", "responses", "scores", "label", "margin"}
# Fields that may hold a conversational list of messages ('[{"role": "user", ...}]') or plain text.
_CSV_MESSAGE_FIELDS = {"prompt", "completion", "chosen", "rejected"}


def _cell_json(name: str, text: str) -> object:
    """A cell's JSON value; a cell that is not JSON stays its text (validation then says what was expected),
    but a well-formed value with a structural problem (repeated key, lone surrogate, deep nesting) raises."""
    try:
        value, walk = _loads(text)
    except (ValueError, RecursionError):
        return text
    if walk and (problem := _problem(value)):
        raise DataError(f"field '{name}': {problem}")
    return value


def _csv_cell(name: str, value: str | None) -> object:
    if value is None:
        return None
    if name in _CSV_JSON_FIELDS:
        text = value.strip()
        if not text:
            return None  # a blank cell is a missing value, e.g. an optional margin
        if name == "label" and text.lower() in ("true", "false"):
            text = text.lower()  # pandas writes Python's True/False
        decoded = _cell_json(name, text)
        return value if decoded is text else decoded
    if name in _CSV_MESSAGE_FIELDS and value.lstrip().startswith("["):
        decoded = _cell_json(name, value)
        return decoded if isinstance(decoded, list) else value
    return value


def read_csv(path: Path) -> Rows:
    """A header row naming the fields, then one record per row; see ``_CSV_JSON_FIELDS`` for typed cells."""
    text = _decode_utf8(path.read_bytes(), path).removeprefix(_BOM)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        if repeated := sorted({name for name in header if header.count(name) > 1}):
            raise DataError(f"{path}:header: column {repeated[0]!r} appears more than once")
        for i, row in enumerate(reader, 1):
            where = f"{path}:row {i}"
            if None in row:  # DictReader files surplus cells under the key None
                n_cells = len(row) - 1 + len(row[None])
                raise DataError(f"{where}: {n_cells} cells, but the header has {len(header)}")
            try:
                cells = {k: _csv_cell(k, v) for k, v in row.items()}
            except DataError as e:
                raise DataError(f"{where}: {e}") from None
            yield where, cells
    except csv.Error as e:
        raise DataError(f"{path}:row {reader.line_num}: invalid CSV: {one_line(e)}") from None


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


def _dataset_rows(ds: Iterable[object], where_prefix: str) -> Rows:
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
