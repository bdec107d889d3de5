"""Calling one reward function on a batch, and checking what it returns.

A function that raises is called again one sample at a time to find the sample that makes it raise,
so the error can name it (the batch call is the fast path; the search only runs on failure). What comes
back must be a sequence of one value per sample, each a number or None.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from .errors import RewardError

__all__ = ["call_reward", "describe_sample", "slice_fields", "to_values"]


def describe_sample(prompts: Sequence[Any], completions: Sequence[Any], i: int, offset: int = 0) -> str:
    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return f"sample {offset + i} (prompt {short(prompts[i])}, completion {short(completions[i])})"


def slice_fields(fields: dict[str, Any], n: int, start: int, stop: int) -> dict[str, Any]:
    """Per-sample fields (sequences of length ``n``) cut to ``start:stop``; anything else passed as is."""
    return {
        k: v[start:stop] if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == n else v
        for k, v in fields.items()
    }


def call_reward(
    fn: Callable[..., Any],
    name: str,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    fields: dict[str, Any],
    offset: int = 0,
) -> list[Any]:
    """``fn(prompts, completions, **fields)`` as a plain list; a raise becomes a RewardError naming the
    function and (when one sample alone reproduces it) the sample, as ``offset + index``."""
    try:
        raw = fn(list(prompts), list(completions), **fields)
    except RewardError as err:  # our own, already descriptive (a missing field, a bad option)
        text = str(err)
        raise RewardError(text if name in text else f"reward function {name!r}: {text}") from None
    except Exception as err:
        n = len(completions)
        for i in range(n):
            try:
                fn([prompts[i]], [completions[i]], **slice_fields(fields, n, i, i + 1))
            except Exception as one:
                raise RewardError(
                    f"reward function {name!r} raised {type(one).__name__}: {_line(one)} on "
                    f"{describe_sample(prompts, completions, i, offset)}"
                ) from one
        raise RewardError(
            f"reward function {name!r} raised {type(err).__name__}: {_line(err)} on a batch of {n} samples "
            "(no single sample raises alone)"
        ) from err
    if hasattr(raw, "tolist") and not isinstance(raw, list):  # tensors and arrays
        raw = raw.tolist()
    if isinstance(raw, str | bytes | dict) or not isinstance(raw, Sequence):
        raise RewardError(
            f"reward function {name!r} returned a {type(raw).__name__}; expected a list of one number "
            f"(or None) per completion"
        )
    return list(raw)


def _line(err: BaseException) -> str:
    return " ".join(str(err).split()) or "(no message)"


def to_values(
    name: str, raw: Sequence[Any], prompts: Sequence[Any], completions: Sequence[Any]
) -> list[float | None]:
    """Numbers → float, None stays None (no reward); anything else is an error naming the sample.
    NaN and inf pass through here: whether they are errors or skips is the caller's policy."""
    out: list[float | None] = []
    for i, value in enumerate(raw):
        if value is None:
            out.append(None)
        elif isinstance(value, numbers.Real):  # int, float, bool, numpy scalars
            out.append(float(value))
        elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # 0-d tensor
            out.append(float(value.item()))
        else:
            raise RewardError(
                f"reward function {name!r} returned {type(value).__name__} {value!r:.40} for "
                f"{describe_sample(prompts, completions, i)}; expected a number or None"
            )
    return out


def is_finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)
