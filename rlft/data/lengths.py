"""Token-length limits and the report of what they did.

Prompts are cut from the LEFT (the end of a prompt, next to the answer, matters most) and completions from
the RIGHT (a cut completion loses its EOS, so the model never learns to stop where the cut was). A record
that does not fit is truncated, dropped or raises, as ``overflow`` says, and every truncation and drop is
counted in a ``LengthReport`` that the caller prints: data is never lost silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rlft.run import ConfigError

from .errors import DataError

OVERFLOW_MODES = ("truncate", "drop", "error")


@dataclass(frozen=True)
class LengthLimits:
    """Token budgets; None means unlimited.

    ``max_prompt_tokens`` bounds the prompt, ``max_completion_tokens`` each completion (EOS included),
    ``max_total_tokens`` prompt + completion. Without ``max_prompt_tokens`` a prompt may use all but one
    token of ``max_total_tokens``, so every kept example has at least one completion token to learn from.
    Plain text counts as a completion with no prompt; a conversation is bounded by ``max_total_tokens``.
    """

    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_total_tokens: int | None = None
    overflow: str = "truncate"

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_completion_tokens", "max_total_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"LengthLimits.{name}: expected a positive integer or None, got {value!r}")
        if self.overflow not in OVERFLOW_MODES:
            raise ConfigError(
                f"LengthLimits.overflow: expected one of {', '.join(OVERFLOW_MODES)}, got {self.overflow!r}"
            )
        if (
            self.max_prompt_tokens
            and self.max_total_tokens
            and self.max_prompt_tokens >= self.max_total_tokens
        ):
            raise ConfigError(
                f"LengthLimits: max_prompt_tokens={self.max_prompt_tokens} leaves no room for a completion "
                f"within max_total_tokens={self.max_total_tokens}"
            )


@dataclass
class LengthReport:
    """Counts of what the limits did. ``kept`` records were returned (``truncated`` of them shortened);
    ``dropped`` were left out. ``reasons`` counts each distinct cause, e.g. 'prompt over max_prompt_tokens=64'."""

    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    reasons: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.kept + self.dropped

    def __str__(self) -> str:
        text = f"{self.total} records: {self.kept} kept ({self.truncated} truncated), {self.dropped} dropped"
        if self.reasons:
            text += "; " + ", ".join(f"{n} × {why}" for why, n in sorted(self.reasons.items()))
        return text


def truncate_left(ids: list[int], limit: int, keep_first: int | None = None) -> list[int]:
    """The last ``limit`` ids; if the sequence starts with ``keep_first`` (BOS), that id stays in front."""
    if len(ids) <= limit:
        return ids
    if keep_first is not None and ids and ids[0] == keep_first and limit > 1:
        return [ids[0], *ids[len(ids) - limit + 1 :]]
    return ids[len(ids) - limit :]


class LengthFitter:
    """Applies ``LengthLimits`` record by record and tallies a ``LengthReport``."""

    def __init__(self, limits: LengthLimits | None, bos_id: int | None = None):
        self.limits = limits or LengthLimits()
        self.bos_id = bos_id
        self.report = LengthReport()

    def _prompt_limit(self) -> tuple[int | None, str]:
        lim = self.limits
        if lim.max_prompt_tokens is not None:
            return lim.max_prompt_tokens, f"max_prompt_tokens={lim.max_prompt_tokens}"
        if lim.max_total_tokens is not None:
            return (
                lim.max_total_tokens - 1,
                f"max_total_tokens={lim.max_total_tokens} minus one completion token",
            )
        return None, ""

    def _finish(self, where: str, problems: list[tuple[str, str]], truncated: bool) -> bool:
        """Record the outcome; True if the record is kept. ``problems`` are (message, reason) pairs; in
        error mode the first message raises."""
        if problems and self.limits.overflow == "error":
            raise DataError(f"{where}: {problems[0][0]}")
        for _, reason in problems:
            self.report.reasons[reason] += 1
        if problems and self.limits.overflow == "drop":
            self.report.dropped += 1
            return False
        self.report.kept += 1
        self.report.truncated += bool(truncated)
        return True

    def fit(
        self, where: str, prompt: list[int] | None, completions: Sequence[tuple[str, list[int]]]
    ) -> tuple[list[int], list[list[int]]] | None:
        """Fit a prompt (None for plain text) and named completions; None when the record is dropped."""
        lim = self.limits
        problems: list[tuple[str, str]] = []
        prompt = prompt or []
        p_limit, p_name = self._prompt_limit()
        prompt_fit = prompt
        if p_limit is not None and len(prompt) > p_limit:
            problems.append((f"prompt has {len(prompt)} tokens, over {p_name}", f"prompt over {p_name}"))
            prompt_fit = truncate_left(prompt, p_limit, self.bos_id)
        fitted = []
        for name, ids in completions:
            cap = lim.max_completion_tokens
            if cap is not None and len(ids) > cap:
                limit = f"max_completion_tokens={cap}"
                problems.append((f"{name} has {len(ids)} tokens, over {limit}", f"{name} over {limit}"))
            if lim.max_total_tokens is not None:
                room = lim.max_total_tokens - len(prompt_fit)
                # Only a new cause is reported: a completion already cut to max_completion_tokens that
                # then fits the total budget is one problem, not two.
                if min(len(ids), cap or len(ids)) > room:
                    label = f"prompt + {name}" if prompt else name
                    total = f"max_total_tokens={lim.max_total_tokens}"
                    problems.append(
                        (
                            f"{label} has {len(prompt) + len(ids)} tokens, over {total}",
                            f"{label} over {total}",
                        )
                    )
                cap = room if cap is None else min(cap, room)
            fitted.append(ids if cap is None else ids[:cap])
        truncated = prompt_fit is not prompt or any(
            len(a) != len(b) for a, (_, b) in zip(fitted, completions, strict=True)
        )
        return (prompt_fit, fitted) if self._finish(where, problems, truncated) else None

    def fit_sequence(self, where: str, name: str, ids: list[int], must_keep: int) -> list[int] | None:
        """Right-truncate one sequence (a conversation) to ``max_total_tokens``; drop it if fewer than
        ``must_keep`` tokens would remain (e.g. the cut would remove every assistant token)."""
        limit = self.limits.max_total_tokens
        if limit is None or len(ids) <= limit:
            self._finish(where, [], False)
            return ids
        total = f"max_total_tokens={limit}"
        problem = (f"{name} has {len(ids)} tokens, over {total}", f"{name} over {total}")
        if limit < must_keep and self.limits.overflow == "truncate":
            # Truncating would leave nothing to learn from, so this record can only be dropped.
            self.report.reasons[f"{name} with no trainable tokens within {total}"] += 1
            self.report.dropped += 1
            return None
        return ids[:limit] if self._finish(where, [problem], True) else None
