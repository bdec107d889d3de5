"""What every built-in task provides, and the helpers they share (splits, seeded RNGs, text of completions).

A task is a small frozen dataclass whose fields are its options. It generates records of the ordinary
formats (so anything that trains on user data trains on a task), deterministically from ``(n, seed, split)``:

    name                                  the registry name
    sft_records(n, seed, split)           prompt_completion demonstrations
    prompt_records(n, seed, split)        prompt_only records with the fields its reward needs in ``extra``
    corpus(n, seed)                       plain texts covering every prompt, for training a tokenizer
    reward(prompts, completions, **extra) one float per completion (TRL reward-function signature)
    evaluate(prompts, completions, **extra) a dict of metrics

Train and eval splits are disjoint by construction: a prompt belongs to the eval split iff a hash of its
text falls below ``eval_fraction``, so the split never depends on the seed or on how many records are drawn.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import DataError
from ..formats import Completion, Prompt, PromptCompletionRecord, PromptRecord

_SPLITS = {"train": "train", "eval": "eval", "test": "eval", "validation": "eval", "valid": "eval"}


class Task(Protocol):
    @property
    def name(self) -> str: ...  # a read-only property, so a task's ClassVar name satisfies it

    def sft_records(self, n: int, seed: int = 0, split: str = "train") -> list[PromptCompletionRecord]: ...

    def prompt_records(self, n: int, seed: int = 0, split: str = "train") -> list[PromptRecord]: ...

    def corpus(self, n: int, seed: int = 0) -> list[str]: ...

    def reward(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **extra: Any
    ) -> list[float]: ...

    def evaluate(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **extra: Any
    ) -> dict[str, float]: ...


def normalize_split(split: str) -> str:
    """'train' or 'eval' ('test', 'validation' and 'valid' mean 'eval')."""
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r} for a built-in task; expected one of: {', '.join(_SPLITS)}")
    return _SPLITS[split]


def split_of(prompt: str, eval_fraction: float) -> str:
    """'eval' for a fixed pseudo-random ``eval_fraction`` of all prompts, 'train' for the rest."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


def rng_for(task: str, purpose: str, seed: int, split: str) -> random.Random:
    """An independent, reproducible stream per (task, purpose, seed, split); str seeds hash stably."""
    return random.Random(f"{task}/{purpose}/{split}/{seed}")


def text_of(value: object) -> str:
    """The text of a prompt or completion: a string as is, a list of messages → the last message's content."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    raise DataError(f"expected a string or a list of messages, got {type(value).__name__}")


def check_count(n: int, what: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"{what}: n must be a positive integer, got {n!r}")


def check_same_length(**lists: Sequence[object]) -> int:
    lengths = {name: len(values) for name, values in lists.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(
            "expected lists of equal length, got " + ", ".join(f"{k}={v}" for k, v in lengths.items())
        )
    return next(iter(lengths.values()), 0)


def record_where(task: str, i: int) -> str:
    return f"task:{task}:record {i + 1}"
