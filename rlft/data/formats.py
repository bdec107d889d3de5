"""The record formats rlft trains on, as small dataclasses, plus a detector and a validator.

A row from any file becomes exactly one of these. The field names follow TRL's dataset formats so the
same files work in both:

| format              | fields                                   | used by                         |
|---------------------|------------------------------------------|---------------------------------|
| ``prompt_only``       | prompt                                   | online RL (PPO, GRPO family)    |
| ``prompt_completion`` | prompt, completion                       | SFT                             |
| ``text``              | text                                     | SFT on plain text               |
| ``conversational``    | messages: [{role, content}, ...]         | SFT on chats                    |
| ``preference``        | prompt, chosen, rejected (margin)        | reward model, DPO family        |
| ``ranked``            | prompt, responses: [str], scores: [num]  | k-wise reward model, RRHF       |
| ``unpaired``          | prompt, completion, label: bool          | KTO                             |

A prompt is a string or a list of messages (TRL's conversational prompt); completions are strings, and
TRL's one-message form ``[{"role": "assistant", "content": ...}]`` is accepted and stored as its content.
Roles are system, user and assistant. Any other field of the row is kept in ``extra`` (e.g. ``answer``
for a reward function), never dropped.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import DataError, show

Message = dict[str, Any]  # {"role": ..., "content": ...}; other keys are kept for the chat template
Prompt = str | list[Message]
# A completion as a reward function or a task receives it: its text, or TRL's conversational form
# [{"role": "assistant", "content": text}] (a reward spec's ``reward_format: messages``).
Completion = str | list[Message]
ROLES = ("system", "user", "assistant")


@dataclass
class _RecordBase:
    """Fields every record has: ``extra`` (pass-through fields) and ``where`` (its location, for errors)."""

    FORMAT: ClassVar[str] = ""
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    # Where the record came from ("data/train.jsonl:7"); not part of equality, so identical content
    # read from two files compares equal.
    where: str = field(default="", kw_only=True, compare=False, repr=False)

    def to_row(self) -> dict[str, Any]:
        """The record as a plain dict in its file format (extra fields included), e.g. for saving."""
        row = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("extra", "where") and getattr(self, f.name) is not None
        }
        return {**row, **self.extra}


@dataclass
class PromptRecord(_RecordBase):
    """Prompt only (online RL); a list-of-messages prompt is TRL's conversational prompt-only form."""

    FORMAT: ClassVar[str] = "prompt_only"
    prompt: Prompt


@dataclass
class PromptCompletionRecord(_RecordBase):
    FORMAT: ClassVar[str] = "prompt_completion"
    prompt: Prompt
    completion: str


@dataclass
class TextRecord(_RecordBase):
    FORMAT: ClassVar[str] = "text"
    text: str


@dataclass
class ConversationRecord(_RecordBase):
    FORMAT: ClassVar[str] = "conversational"
    messages: list[Message]


@dataclass
class PreferenceRecord(_RecordBase):
    """A preference pair; ``margin`` is an optional preference strength (Llama 2's margin loss)."""

    FORMAT: ClassVar[str] = "preference"
    prompt: Prompt
    chosen: str
    rejected: str
    margin: float | None = None


@dataclass
class RankedRecord(_RecordBase):
    """k ≥ 2 responses with one score each; higher is better."""

    FORMAT: ClassVar[str] = "ranked"
    prompt: Prompt
    responses: list[str]
    scores: list[float]


@dataclass
class UnpairedRecord(_RecordBase):
    """One completion with a desirable (True) / undesirable (False) label, as KTO uses."""

    FORMAT: ClassVar[str] = "unpaired"
    prompt: Prompt
    completion: str
    label: bool


Record = (
    PromptRecord
    | PromptCompletionRecord
    | TextRecord
    | ConversationRecord
    | PreferenceRecord
    | RankedRecord
    | UnpairedRecord
)

RECORD_TYPES: dict[str, type[Record]] = {
    cls.FORMAT: cls
    for cls in (
        PromptRecord,
        PromptCompletionRecord,
        TextRecord,
        ConversationRecord,
        PreferenceRecord,
        RankedRecord,
        UnpairedRecord,
    )
}
FORMATS: dict[str, str] = {
    "prompt_only": "{prompt}",
    "prompt_completion": "{prompt, completion}",
    "text": "{text}",
    "conversational": "{messages}",
    "preference": "{prompt, chosen, rejected}",
    "ranked": "{prompt, responses, scores}",
    "unpaired": "{prompt, completion, label}",
}


def known_formats() -> str:
    """'prompt_only {prompt}, prompt_completion {prompt, completion}, ...' for error messages."""
    return ", ".join(f"{name} {fields}" for name, fields in FORMATS.items())


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; expected one of: {known_formats()}")
    return fmt


def detect_format(row: object, where: str = "record") -> str:
    """The format a row's keys suggest. The most specific format wins, so extra fields never change the
    answer for complete rows; a row missing a required field is detected by the fields it has and then
    fails validation naming the missing one."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object of named fields, got {show(row)}")
    keys = set(row)
    if "messages" in keys:
        return "conversational"
    if keys & {"chosen", "rejected"}:
        return "preference"
    if "responses" in keys:
        return "ranked"
    if {"completion", "label"} <= keys:
        return "unpaired"
    if "completion" in keys:
        return "prompt_completion"
    if "prompt" in keys:
        return "prompt_only"
    if "text" in keys:
        return "text"
    raise DataError(
        f"{where}: cannot tell the data format from the fields {sorted(map(str, keys))}; "
        f"expected one of: {known_formats()}"
    )


# --- field checks: each returns the clean value or raises a one-line DataError ----------------------------


def _fail(where: str, name: str, problem: str) -> DataError:
    return DataError(f"{where}: field '{name}': {problem}")


def _present(row: Mapping[str, object], name: str) -> bool:
    # A null cell (CSV blank, Parquet/Arrow null) counts as missing, like an absent key.
    return row.get(name) is not None


def _text(value: object, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, name, f"expected a string, got {show(value)}")
    if value == "":
        raise _fail(where, name, "empty string")
    return value


def _required_text(row: Mapping[str, object], name: str, fmt: str, where: str) -> str:
    if not _present(row, name):
        raise _fail(where, name, f"missing (expected a string for {fmt} data)")
    return _text(row[name], name, where)


def _messages(value: object, name: str, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise _fail(
            where, name, f"expected a non-empty list of messages {{role, content}}, got {show(value)}"
        )
    out: list[Message] = []
    for i, msg in enumerate(value):
        item = f"{name}[{i}]"
        if not isinstance(msg, Mapping):
            raise _fail(where, item, f"expected an object with 'role' and 'content', got {show(msg)}")
        role = msg.get("role")
        if role not in ROLES:
            problem = "missing" if role is None else f"got {show(role)}"
            raise _fail(where, f"{item}.role", f"expected one of {', '.join(ROLES)}; {problem}")
        if msg.get("content") is None:
            raise _fail(where, f"{item}.content", "missing (expected a string)")
        _text(msg["content"], f"{item}.content", where)
        out.append(dict(msg))
    return out


def _prompt(row: Mapping[str, object], fmt: str, where: str) -> Prompt:
    if not _present(row, "prompt"):
        raise _fail(where, "prompt", f"missing (expected a string or a list of messages for {fmt} data)")
    value = row["prompt"]
    if isinstance(value, list):
        return _messages(value, "prompt", where)
    if not isinstance(value, str):
        raise _fail(where, "prompt", f"expected a string or a list of messages, got {show(value)}")
    return _text(value, "prompt", where)


def _completion(row: Mapping[str, object], name: str, fmt: str, where: str) -> str:
    """A completion-side string; TRL's ``[{"role": "assistant", "content": ...}]`` becomes its content."""
    if not _present(row, name):
        raise _fail(where, name, f"missing (expected a string for {fmt} data)")
    value = row[name]
    if isinstance(value, list):
        msgs = _messages(value, name, where)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise _fail(where, name, f"expected a string or one assistant message, got {len(msgs)} messages")
        content: str = msgs[0]["content"]  # a non-empty string: _messages checked it
        return content
    return _text(value, name, where)


def _number(value: object, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(where, name, f"expected a finite number, got {show(value)}")
    return float(value)


def _label(row: Mapping[str, object], where: str) -> bool:
    if not _present(row, "label"):
        raise _fail(where, "label", "missing (expected true or false for unpaired data)")
    value = row["label"]
    # 0/1 integers are accepted because some tools write booleans as integers (pandas, older Arrow files).
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise _fail(where, "label", f"expected true or false, got {show(value)}")


def _responses(row: Mapping[str, object], where: str) -> list[str]:
    value = row.get("responses")
    if value is None:
        raise _fail(where, "responses", "missing (expected a list of at least 2 strings for ranked data)")
    if not isinstance(value, list):
        raise _fail(where, "responses", f"expected a list of at least 2 strings, got {show(value)}")
    if len(value) < 2:
        raise _fail(where, "responses", f"expected a list of at least 2 strings, got {len(value)}")
    return [_text(v, f"responses[{i}]", where) for i, v in enumerate(value)]


def _scores(row: Mapping[str, object], k: int, where: str) -> list[float]:
    expected = f"expected a list of {k} numbers (one per response)"
    value = row.get("scores")
    if value is None:
        raise _fail(where, "scores", f"missing ({expected})")
    if not isinstance(value, list):
        raise _fail(where, "scores", f"{expected}, got {show(value)}")
    if len(value) != k:
        raise _fail(where, "scores", f"{expected}, got {len(value)}")
    return [_number(v, f"scores[{i}]", where) for i, v in enumerate(value)]


# --- per-format validators -----------------------------------------------------------------------------


def validate_record(row: object, fmt: str, where: str) -> Record:
    """Check ``row`` against ``fmt`` and return its record; fields the format does not use go to ``extra``.

    Raises a one-line ``DataError`` such as
    ``data/train.jsonl:7: field 'rejected': missing (expected a string for preference data)``.
    """
    check_format(fmt)
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object of named fields, got {show(row)}")
    cls = RECORD_TYPES[fmt]
    values: dict[str, Any]
    if fmt == "prompt_only":
        values = {"prompt": _prompt(row, fmt, where)}
    elif fmt == "prompt_completion":
        values = {
            "prompt": _prompt(row, fmt, where),
            "completion": _completion(row, "completion", fmt, where),
        }
    elif fmt == "text":
        values = {"text": _required_text(row, "text", fmt, where)}
    elif fmt == "conversational":
        if not _present(row, "messages"):
            raise _fail(where, "messages", "missing (expected a list of messages for conversational data)")
        messages = _messages(row["messages"], "messages", where)
        if not any(m["role"] == "assistant" for m in messages):
            raise _fail(where, "messages", "no assistant message (expected at least one to train on)")
        values = {"messages": messages}
    elif fmt == "preference":
        values = {
            "prompt": _prompt(row, fmt, where),
            "chosen": _completion(row, "chosen", fmt, where),
            "rejected": _completion(row, "rejected", fmt, where),
            "margin": _number(row["margin"], "margin", where) if _present(row, "margin") else None,
        }
    elif fmt == "ranked":
        responses = _responses(row, where)
        values = {
            "prompt": _prompt(row, fmt, where),
            "responses": responses,
            "scores": _scores(row, len(responses), where),
        }
    else:  # unpaired
        values = {
            "prompt": _prompt(row, fmt, where),
            "completion": _completion(row, "completion", fmt, where),
            "label": _label(row, where),
        }
    used = set(values)  # a null optional field (e.g. a blank margin cell) is consumed, not passed through
    extra = {str(k): v for k, v in row.items() if k not in used}
    return cls(**values, extra=extra, where=where)
