"""The one error type of the data layer.

Every message is a single line that starts with *where* the problem is, so a user can jump straight to it:

    data/train.jsonl:7: field 'rejected': missing (expected a string for preference data)

Locations: JSONL and text files ``file:LINE`` (1-based line), JSON ``file:record N`` (1-based), CSV
``file:row N`` (1-based data row, the header is not counted; ``file:header`` for the header itself), Parquet
and HF datasets ``file:index N`` (0-based, the index you would pass to ``dataset[N]``), built-in tasks
``task:NAME:record N`` (1-based). Bytes that are not UTF-8 are located ``file:LINE`` in every text format,
and a problem of a whole source (no records at all) names just the source.
"""

from __future__ import annotations


class DataError(ValueError):
    """A bad data file, record or length limit; ``str(err)`` is one line naming where and what was expected."""


def one_line(text: object) -> str:
    """Collapse a (possibly multi-line) message from a library into one line for our errors."""
    return " ".join(str(text).split())


def show(value: object, limit: int = 50) -> str:
    """Type and short repr of a bad value, e.g. ``int 5`` or ``str 'abc...'``, for 'got ...' in messages."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"
