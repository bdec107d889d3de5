"""Calling one reward function on a batch, and checking what it returns.

A function is called once per batch and never again after it raises: a reward function may have side
effects (API calls that cost money, writes), so the error is reported from that one call — the
function, the exception, the batch size and the file:line in the function's own file where it was
raised. What comes back must be a sequence of one value per sample, each a number or None.

With a ``timeout`` the call runs in a daemon worker thread and the caller waits at most that long; on
expiry a :class:`RewardError` stops the caller. A thread cannot be killed, so the stuck call keeps running
in the background until the process exits (the trainer stops on the error, and a daemon thread does not
hold the process open). Exceptions and return values pass through the thread unchanged, and the call sees
the caller's torch grad mode and context variables, as a direct call would. A function that
installs signal handlers (``signal.signal``/``alarm`` work only in the main thread) needs ``timeout: 0`` or
a process pool, whose workers call it in their main thread.
"""

from __future__ import annotations

import contextvars
import inspect
import math
import numbers
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from rlft.data.formats import Completion, Prompt

from .errors import RewardError

__all__ = ["call_reward", "describe_sample", "slice_fields", "timeout_error", "to_values"]


def describe_sample(
    prompts: Sequence[Prompt], completions: Sequence[Completion], i: int, offset: int = 0
) -> str:
    def short(value: object) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return f"sample {offset + i} (prompt {short(prompts[i])}, completion {short(completions[i])})"


def slice_fields(fields: dict[str, object], n: int, start: int, stop: int) -> dict[str, object]:
    """Per-sample fields (sequences of length ``n``) cut to ``start:stop``; anything else passed as is."""
    return {
        k: v[start:stop] if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == n else v
        for k, v in fields.items()
    }


def call_reward(
    fn: Callable[..., object],
    name: str,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    fields: dict[str, object],
    offset: int = 0,
    timeout: float | None = None,
) -> list[object]:
    """``fn(prompts, completions, **fields)`` as a plain list, called exactly once. A raise becomes a
    RewardError naming the function, the exception, the batch (samples from ``offset``) and where in the
    function's file it was raised; ``timeout`` (seconds, None or 0 = none) bounds the call."""
    n = len(completions)
    try:
        raw = _call_within(fn, name, (list(prompts), list(completions)), fields, timeout, n)
    except RewardError as err:  # our own, already descriptive (a missing field, a bad option, a timeout)
        text = str(err)
        raise RewardError(text if name in text else f"reward function {name!r}: {text}") from None
    except Exception as err:
        at = _raised_at(err, _function_file(fn))
        part = f" (samples {offset}..{offset + n - 1} of the call)" if offset else ""
        raise RewardError(
            f"reward function {name!r} raised {type(err).__name__}: {_line(err)}"
            + (f" at {at}" if at else "")
            + f" on a batch of {n} samples{part}; it is not called again"
        ) from err
    if hasattr(raw, "tolist") and not isinstance(raw, list):  # tensors and arrays
        raw = raw.tolist()
    if isinstance(raw, str | bytes | dict) or not isinstance(raw, Sequence):
        raise RewardError(
            f"reward function {name!r} returned a {type(raw).__name__}; expected a list of one number "
            f"(or None) per completion"
        )
    return list(raw)


def timeout_error(name: str, timeout: float, n: int) -> RewardError:
    return RewardError(
        f"reward function {name!r} did not return within {timeout:g} s on a batch of {n} samples "
        "(spec option timeout)"
    )


def _call_within(
    fn: Callable[..., object],
    name: str,
    args: tuple[object, ...],
    fields: dict[str, object],
    timeout: float | None,
    n: int,
) -> object:
    """``fn(*args, **fields)``; with a timeout, in a daemon thread the caller waits on for at most that long."""
    if not timeout:
        return fn(*args, **fields)
    returned: list[object] = []  # what the call returned, once it has
    raised: list[BaseException] = []  # or what it raised
    done = threading.Event()
    context = contextvars.copy_context()  # the caller's context variables, as a direct call would see them
    torch = sys.modules.get("torch")  # grad mode is per thread: keep the caller's (no_grad in the trainer)
    grad = torch.is_grad_enabled() if torch is not None else None

    def call() -> object:
        if torch is None:
            return fn(*args, **fields)
        with torch.set_grad_enabled(grad):
            return fn(*args, **fields)

    def run() -> None:
        try:
            returned.append(context.run(call))
        except BaseException as err:  # re-raised in the caller, traceback included
            raised.append(err)
        finally:
            done.set()

    threading.Thread(target=run, name=f"reward-{name}", daemon=True).start()
    if not done.wait(timeout):
        raise timeout_error(name, timeout, n)
    if raised:
        error = raised.pop()
        try:
            raise error
        finally:
            del error  # no reference cycle through this frame
    return returned[0]


def _function_file(fn: Callable[..., object]) -> str | None:
    """The source file of the user's function behind ``fn`` (``fn.user_function`` for a bound wrapper)."""
    target = getattr(fn, "user_function", fn)
    for candidate in (target, type(target)):
        try:
            path = inspect.getsourcefile(candidate)
        except TypeError:
            continue
        if path:
            return os.path.abspath(path)
    return None


def _raised_at(err: BaseException, path: str | None) -> str | None:
    """``file:line`` of the innermost frame in ``path`` of the traceback of ``err`` or of its causes."""
    if path is None:
        return None
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = [
            f for f in traceback.extract_tb(current.__traceback__) if os.path.abspath(f.filename) == path
        ]
        if frames:
            return f"{frames[-1].filename}:{frames[-1].lineno}"
        current = current.__cause__ or current.__context__
    return None


def _line(err: BaseException) -> str:
    return " ".join(str(err).split()) or "(no message)"


def to_values(
    name: str, raw: Sequence[object], prompts: Sequence[Prompt], completions: Sequence[Completion]
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
