"""Built-in rule-based reward functions, each made by a factory from its spec's options.

Every reward function has one signature, TRL's: ``f(prompts, completions, **fields) -> list[float | None]``
with one value per completion; ``None`` means "no reward for this sample". ``fields`` are the dataset
row fields (``answer`` …) and ``completion_lengths`` (token counts) when the caller has them.

    exact_match    1 if the (extracted, normalised) completion equals the row's ``answer``, else 0
    numeric_match  1 if the completion's first (or last) number equals the numeric ``answer``, else 0
    regex_format   1 if the completion matches ``pattern``, else 0 (format checks: <think>…</think> …)
    length         −coef·|L − target|, optionally floored at −max_penalty
    overlong       DAPO's soft overlong punishment (arXiv 2503.14476, §3.4)
    repetition     Open-R1's n-gram repetition penalty, max_penalty · (1 − distinct/total n-grams)

A factory checks its options when the reward set is built, so a bad spec fails before any training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from rlft.algos.registry import Registry
from rlft.data.formats import Completion, Prompt
from rlft.data.tasks.base import text_of

from .errors import RewardError

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardFn",
    "completion_length",
    "dapo_overlong_penalty",
    "parse_number",
    "repetition_penalty",
]


class RewardFn(Protocol):
    """A built reward function: one value per completion, None for "no reward for this sample"."""

    def __call__(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **fields: Any
    ) -> Sequence[float | None]: ...


# name → the factory that builds the function from the spec's options
REWARD_FUNCTIONS: Registry[Callable[..., RewardFn]] = Registry("reward function")
UNITS = ("tokens", "words", "chars")

# A decimal number: optional sign, digits with optional thousands commas, optional fraction and exponent.
_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)


def _field(fields: dict[str, Any], name: str, fn: str) -> Sequence[object]:
    if name not in fields:
        have = ", ".join(sorted(k for k in fields if k != "completion_lengths")) or "none"
        raise RewardError(f"{fn}: needs the row field {name!r} (fields given: {have})")
    values: Sequence[object] = fields[name]  # one value per completion: RewardSet checked the length
    return values


def _check_unit(unit: str, fn: str) -> None:
    if unit not in UNITS:
        raise RewardError(f"{fn}: option unit={unit!r}: expected one of {', '.join(UNITS)}")


def completion_length(completion: Completion, unit: str, i: int, fields: dict[str, Any], fn: str) -> int:
    """Length of completion ``i`` in tokens (from ``completion_lengths``), words or characters."""
    if unit == "tokens":
        lengths = fields.get("completion_lengths")
        if lengths is None:
            raise RewardError(
                f"{fn}: unit 'tokens' needs completion_lengths (token counts; trainers pass them) — "
                "or set unit: words / chars"
            )
        return int(lengths[i])
    text = text_of(completion)
    return len(text.split()) if unit == "words" else len(text)


def _number(value: object, fn: str) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{fn}: answer {value!r} is not a number")
    if isinstance(value, int | float):
        return float(value)
    return _parse_or_fail(str(value), fn)


def _parse_or_fail(text: str, fn: str) -> float:
    match = _NUMBER.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{fn}: answer {text!r} is not a number")
    return float(match.group().replace(",", ""))


def parse_number(text: str, position: str = "first") -> float | None:
    """The first or last decimal number in ``text`` ("1,234.5" → 1234.5), or None if there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    return float((found[0] if position == "first" else found[-1]).replace(",", ""))


def _extractor(extract: str | None, fn: str) -> re.Pattern[str] | None:
    if extract is None:
        return None
    try:
        return re.compile(extract, re.DOTALL)
    except re.error as err:
        raise RewardError(
            f"{fn}: option extract={extract!r} is not a valid regular expression: {err}"
        ) from None


def _extracted(pattern: re.Pattern[str] | None, text: str) -> str | None:
    """``text`` itself, or the first group (else the whole match) of ``pattern``'s first match in it."""
    if pattern is None:
        return text
    match = pattern.search(text)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group()


@REWARD_FUNCTIONS.register("exact_match")
def exact_match(
    field: str = "answer",
    extract: str | None = None,
    ignore_case: bool = False,
    correct: float = 1.0,
    incorrect: float = 0.0,
) -> RewardFn:
    """``correct`` where the completion equals the row's ``field`` after normalisation, else ``incorrect``.

    Normalisation: strip, collapse runs of whitespace to one space, and casefold when ``ignore_case``.
    ``extract`` (a regex) compares only its first group (or whole match) of the completion's first match,
    e.g. ``'\\\\boxed\\{(.*?)\\}'`` or ``'#### (.*)'``; no match scores ``incorrect``. An answer of None
    gives None (no reward for that sample).
    """
    pattern = _extractor(extract, "exact_match")

    def norm(text: str) -> str:
        text = " ".join(text.split())
        return text.casefold() if ignore_case else text

    def exact_match(
        prompts: Sequence[Prompt], completions: Sequence[Completion], **fields: Any
    ) -> list[float | None]:
        answers = _field(fields, field, "exact_match")
        out: list[float | None] = []
        for completion, answer in zip(completions, answers, strict=True):
            if answer is None:
                out.append(None)
                continue
            got = _extracted(pattern, text_of(completion))
            out.append(correct if got is not None and norm(got) == norm(str(answer)) else incorrect)
        return out

    return exact_match


@REWARD_FUNCTIONS.register("numeric_match")
def numeric_match(
    field: str = "answer",
    position: str = "first",
    extract: str | None = None,
    abs_tol: float = 1e-9,
    rel_tol: float = 0.0,
    correct: float = 1.0,
    incorrect: float = 0.0,
) -> RewardFn:
    """``correct`` where a number in the completion equals the numeric ``field``, else ``incorrect``.

    The completion's number is its ``position`` = first (an answer followed by more text, as a sampler
    with a token budget produces) or last (chain-of-thought ending in the answer) decimal number, after
    ``extract`` when given; thousands commas are ignored. Equal means ``math.isclose(got, expected,
    rel_tol, abs_tol)``. An answer that is not a number raises; an answer of None gives None.
    """
    if position not in ("first", "last"):
        raise RewardError(f"numeric_match: option position={position!r}: expected 'first' or 'last'")
    pattern = _extractor(extract, "numeric_match")

    def numeric_match(
        prompts: Sequence[Prompt], completions: Sequence[Completion], **fields: Any
    ) -> list[float | None]:
        answers = _field(fields, field, "numeric_match")
        out: list[float | None] = []
        for completion, answer in zip(completions, answers, strict=True):
            if answer is None:
                out.append(None)
                continue
            expected = _number(answer, "numeric_match")
            text = _extracted(pattern, text_of(completion))
            got = None if text is None else parse_number(text, position)
            ok = got is not None and math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
            out.append(correct if ok else incorrect)
        return out

    return numeric_match


_MODES = ("fullmatch", "match", "search")
_FLAGS = {"s": re.DOTALL, "i": re.IGNORECASE, "m": re.MULTILINE, "x": re.VERBOSE}


@REWARD_FUNCTIONS.register("regex_format")
def regex_format(
    pattern: str = "", mode: str = "fullmatch", flags: str = "s", match: float = 1.0, no_match: float = 0.0
) -> RewardFn:
    """``match`` where the completion matches ``pattern`` (re.``mode``: fullmatch, match or search), else
    ``no_match``. ``flags``: letters of s (DOTALL, default: '.' crosses newlines), i, m, x.
    Example: ``pattern: '<think>.*?</think>\\s*<answer>.*?</answer>'`` (DeepSeek-R1's format reward)."""
    if not pattern:
        raise RewardError("regex_format: needs the option 'pattern' (a regular expression)")
    if mode not in _MODES:
        raise RewardError(f"regex_format: option mode={mode!r}: expected one of {', '.join(_MODES)}")
    if set(flags) - set(_FLAGS):
        raise RewardError(f"regex_format: option flags={flags!r}: expected letters of {''.join(_FLAGS)}")
    try:
        compiled = re.compile(pattern, sum((_FLAGS[f] for f in set(flags)), 0))
    except re.error as err:
        raise RewardError(
            f"regex_format: pattern {pattern!r} is not a valid regular expression: {err}"
        ) from None
    test = getattr(compiled, mode)

    def regex_format(prompts: Sequence[Prompt], completions: Sequence[Completion], **_: Any) -> list[float]:
        return [match if test(text_of(c)) else no_match for c in completions]

    return regex_format


@REWARD_FUNCTIONS.register("length")
def length(
    target: float = 0.0, coef: float = 0.01, unit: str = "tokens", max_penalty: float | None = None
) -> RewardFn:
    """r = −coef·|L − target| (``target`` 0: a plain per-unit length cost), floored at −``max_penalty``."""
    _check_unit(unit, "length")
    if coef < 0 or (max_penalty is not None and max_penalty < 0):
        raise RewardError(
            f"length: options coef={coef!r}, max_penalty={max_penalty!r}: expected numbers >= 0"
        )

    def length(prompts: Sequence[Prompt], completions: Sequence[Completion], **fields: Any) -> list[float]:
        out = []
        for i, c in enumerate(completions):
            r = -coef * abs(completion_length(c, unit, i, fields, "length") - target)
            out.append(r if max_penalty is None else max(r, -max_penalty))
        return out

    return length


def dapo_overlong_penalty(length: int, max_len: int, cache: int, penalty_factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, eq. 13), scaled by verl's factor f:

        0                                   if L ≤ L_max − L_cache
        f · ((L_max − L_cache) − L)/L_cache if L_max − L_cache < L ≤ L_max
        −f                                  if L > L_max

    Example (L_max 20480, L_cache 4096): 16384 ⇒ 0; 18432 ⇒ −0.5; 20480 ⇒ −1; 20481 ⇒ −1.
    """
    free = max_len - cache
    if length <= free:
        return 0.0
    if length > max_len:
        return -penalty_factor
    return penalty_factor * (free - length) / cache


@REWARD_FUNCTIONS.register("overlong")
def overlong(max_len: int = 0, cache: int = 0, penalty_factor: float = 1.0, unit: str = "tokens") -> RewardFn:
    """DAPO soft overlong punishment on the completion length (see :func:`dapo_overlong_penalty`);
    ``max_len`` is L_max (the generation budget), ``cache`` L_cache (the soft band before it)."""
    _check_unit(unit, "overlong")
    if not (isinstance(max_len, int) and isinstance(cache, int) and 0 < cache <= max_len):
        raise RewardError(
            f"overlong: options max_len={max_len!r}, cache={cache!r}: expected integers with 0 < cache <= max_len"
        )
    if penalty_factor < 0:
        raise RewardError(f"overlong: option penalty_factor={penalty_factor!r}: expected a number >= 0")

    def overlong(prompts: Sequence[Prompt], completions: Sequence[Completion], **fields: Any) -> list[float]:
        return [
            dapo_overlong_penalty(
                completion_length(c, unit, i, fields, "overlong"), max_len, cache, penalty_factor
            )
            for i, c in enumerate(completions)
        ]

    return overlong


def repetition_penalty(text: str, ngram_size: int, max_penalty: float) -> float:
    """max_penalty · (1 − distinct n-grams / n-grams) over lower-cased whitespace words; 0 for texts with
    fewer than n words. Open-R1 ``get_repetition_penalty_reward`` (after Yeo et al., arXiv 2502.03373).
    Example: n = 1, "a b a b" ⇒ 2 distinct of 4 ⇒ 0.5·max_penalty."""
    words = text.lower().split()
    if len(words) < ngram_size:
        return 0.0
    grams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
    return max_penalty * (1.0 - len(set(grams)) / len(grams)) + 0.0  # + 0.0: no "-0.0" in logs


@REWARD_FUNCTIONS.register("repetition")
def repetition(ngram_size: int = 3, max_penalty: float = -1.0) -> RewardFn:
    """Penalise repeated word n-grams (see :func:`repetition_penalty`); ``max_penalty`` ≤ 0."""
    if not isinstance(ngram_size, int) or ngram_size < 1:
        raise RewardError(f"repetition: option ngram_size={ngram_size!r}: expected a positive integer")
    if max_penalty > 0:
        raise RewardError(f"repetition: option max_penalty={max_penalty!r}: expected a number <= 0")

    def repetition(prompts: Sequence[Prompt], completions: Sequence[Completion], **_: Any) -> list[float]:
        return [repetition_penalty(text_of(c), ngram_size, max_penalty) for c in completions]

    return repetition
