"""Token-length limits and the report of what they did.

Prompts are cut from the LEFT (the end of a prompt, next to the answer, matters most) and completions from
the RIGHT (a cut completion loses its EOS, so the model never learns to stop where the cut was). A record
that does not fit is truncated, dropped or raises, as ``overflow`` says, and every truncation and drop is
counted in a ``LengthReport`` that the caller prints: data is never lost silently.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rlft.run import ConfigError

from .errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

OVERFLOW_MODES = ("truncate", "drop", "error")
# A token spans a few characters (4 on average for English BPE); text longer than this many characters per
# token of its budget is over the budget for any real tokenizer, so it is cut (or dropped, or refused) before
# the tokenizer spends time and memory on it. Text within the bound is tokenized whole, exactly as before.
CHARS_PER_TOKEN = 64
# transformers' "no limit" model_max_length is int(1e30); anything this large is not a real context length.
_NO_LIMIT = 10**9
_CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "max_sequence_length",
    "seq_length",
    "n_ctx",
)


def context_length(
    model: str | Path | PreTrainedConfig | PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None
) -> int | None:
    """The longest sequence ``model`` handles: its config's position budget (``max_position_embeddings``,
    ``n_positions``, ``max_seq_len``, ...), else the tokenizer's ``model_max_length`` when that is a real
    number; None when neither says.

    ``model`` is a model directory or hub id (only its ``config.json`` is read, through
    ``transformers.AutoConfig``), a config object, or a model with a ``.config``.
    """
    config = getattr(model, "config", model)
    if isinstance(model, (str, Path)):
        config = _auto_config(model)
    found = _config_context(config) if config is not None else None
    if found is None and tokenizer is not None:
        found = _sane(getattr(tokenizer, "model_max_length", None))
    return found


def _auto_config(model: str | Path) -> PreTrainedConfig | None:
    from transformers import AutoConfig  # deferred: transformers is heavy and the data layer runs without it

    try:
        # Only what is on disk: a hub id the loader has not fetched yet gives None rather than network retries.
        config: PreTrainedConfig = AutoConfig.from_pretrained(str(model), local_files_only=True)
    except Exception:  # not a model directory, an unknown architecture, no network: the caller gets None
        return None
    return config


def _config_context(config: object) -> int | None:
    # Read by attribute name: architectures name their context length differently (_CONTEXT_KEYS).
    get_text = getattr(config, "get_text_config", None)
    # Multimodal configs keep the language model's positions in their text config.
    for cfg in (config, get_text() if callable(get_text) else None):
        for key in _CONTEXT_KEYS:
            value = _sane(getattr(cfg, key, None))
            if value is not None:
                return value
    return None


def _sane(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_LIMIT:
        return value
    return None


def cap_length(configured: int | None, context: int | None) -> int | None:
    """The tighter of a configured token limit and the model's context (None is no limit)."""
    limits = [v for v in (configured, context) if v is not None]
    return min(limits) if limits else None


def prompt_budget(
    configured: int | None, context: int | None, new_tokens: int, key: str = "max_new_tokens"
) -> int | None:
    """The prompt limit of generation: the configured ``max_prompt_tokens``, held to what the model's context
    leaves after ``new_tokens`` generated tokens. A ConfigError naming the config key ``key`` (the one that
    set ``new_tokens``) when the context leaves no room at all."""
    if context is None:
        return configured
    if context - new_tokens < 1:
        raise ConfigError(
            f"config key '{key}': expected fewer than the model's context length {context}, got {new_tokens}"
        )
    return cap_length(configured, context - new_tokens)


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

    def within(self, context: int | None) -> LengthLimits:
        """These limits with the total held to a model's context length too (None: no context known)."""
        total = cap_length(self.max_total_tokens, context)
        if total is None or total == self.max_total_tokens:  # None: neither limit is set
            return self
        if self.max_prompt_tokens is not None and self.max_prompt_tokens >= total:
            raise ConfigError(
                f"config key 'max_prompt_tokens': expected fewer tokens than the model's context length "
                f"{total}, got {self.max_prompt_tokens}"
            )
        return dataclasses.replace(self, max_total_tokens=total)

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
    """Counts of what the limits (and the encoders' own checks, such as a preference pair whose chosen is
    its rejected) did. ``kept`` records were returned (``truncated`` of them shortened); ``dropped`` were left
    out. ``reasons`` counts each distinct cause, e.g. 'prompt over max_prompt_tokens=64'."""

    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

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
        self._cut: set[str] = set()  # locations whose text bound_text shortened

    def _token_budget(self, role: str) -> tuple[int | None, str]:
        """The token limit a piece of text of ``role`` (prompt, completion, sequence) is held to."""
        lim = self.limits
        if role == "prompt":
            return self._prompt_limit()
        cap = lim.max_completion_tokens
        if role == "completion" and cap is not None and (lim.max_total_tokens or cap + 1) > cap:
            return cap, f"max_completion_tokens={cap}"
        if lim.max_total_tokens is not None:
            return lim.max_total_tokens, f"max_total_tokens={lim.max_total_tokens}"
        return None, ""

    def bound_text(self, where: str, texts: Sequence[tuple[str, str, str]]) -> list[str] | None:
        """Hold each ``(name, role, text)`` of a record to ``CHARS_PER_TOKEN`` characters per token of its
        budget before it is tokenized. Prompts keep their end, everything else its start; as ``overflow``
        says, an over-long text is cut, its record dropped, or a DataError raised. Returns the texts, or
        None when the record is dropped."""
        out = []
        problems: list[tuple[str, str]] = []
        for name, role, text in texts:
            tokens, limit = self._token_budget(role)
            chars = None if tokens is None else tokens * CHARS_PER_TOKEN
            if chars is None or len(text) <= chars:
                out.append(text)
                continue
            bound = f"{CHARS_PER_TOKEN} characters per token of {limit}"
            problems.append((f"{name} has {len(text)} characters, over {bound}", f"{name} over {bound}"))
            out.append(text[len(text) - chars :] if role == "prompt" else text[:chars])
        if not problems:
            return out
        if self.limits.overflow == "error":
            raise DataError(f"{where}: {problems[0][0]}")
        for _, reason in problems:
            self.report.reasons[reason] += 1
        if self.limits.overflow == "drop":
            self.report.dropped += 1
            return None
        self._cut.add(where)
        return out

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
        self.report.truncated += bool(truncated) or where in self._cut
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
