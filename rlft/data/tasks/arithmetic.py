"""``arithmetic``: integer sums and differences with a verifiable answer, the testbed for RL with rules.

Prompt ``"23+58="``, completion ``"81"`` (left to right for three operands: ``"12+5-3="`` → ``"14"``).
Every record carries ``answer`` (a string, so it survives any file format) in ``extra``; the reward is
exact match on the leading integer of the completion.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import DataError
from ..formats import Completion, Prompt, PromptCompletionRecord, PromptRecord
from .base import check_count, check_same_length, normalize_split, record_where, rng_for, split_of, text_of
from .registry import TASKS

_LEADING_INT = re.compile(r"[+-]?\d+")


def leading_integer(text: str) -> int | None:
    """The integer a completion starts with after leading whitespace ("81 and more" → 81), else None."""
    match = _LEADING_INT.match(text.strip())
    return int(match.group()) if match else None


def exact_match_reward(
    prompts: Sequence[Prompt] | None, completions: Sequence[Completion], answer: Sequence[object], **_: Any
) -> list[float]:
    """1.0 where the completion's leading integer equals the answer, else 0.0.

    Definition: strip the completion, read the integer at its very start (optional sign, digits), and
    compare numerically with ``int(answer)``. Text after that integer is ignored, so "81", " 81", "81\\n"
    and "81 is the sum" all score 1; "812", "8", "x81" and "" score 0. (Text after the answer does not lose
    credit because a sampler with a token budget often continues past the answer before it stops.)
    """
    check_same_length(completions=completions, answer=answer)
    rewards = []
    for i, (completion, target) in enumerate(zip(completions, answer, strict=True)):
        expected = leading_integer(str(target))
        if expected is None:
            raise DataError(f"exact_match_reward: answer[{i}]: expected an integer, got {target!r}")
        rewards.append(1.0 if leading_integer(text_of(completion)) == expected else 0.0)
    return rewards


def accuracy(completions: Sequence[Completion], answers: Sequence[object]) -> float:
    """Fraction of completions whose exact-match reward is 1."""
    if not completions:
        raise DataError("accuracy: no completions to score")
    return sum(exact_match_reward(None, completions, answers)) / len(completions)


@TASKS.register("arithmetic")
@dataclass(frozen=True)
class ArithmeticTask:
    """Options: operands drawn uniformly from ``min_operand..max_operand``; ``ops`` the operator characters
    to use ('+', '-'); ``operands`` 2 or 3 numbers per problem; ``allow_negative`` False redraws problems
    whose result is negative; ``eval_fraction`` of all prompts form the eval split."""

    name: ClassVar[str] = "arithmetic"
    min_operand: int = 0
    max_operand: int = 99
    ops: str = "+-"
    operands: int = 2
    allow_negative: bool = True
    eval_fraction: float = 0.1

    def __post_init__(self) -> None:
        def bad(option: str, expected: str) -> DataError:
            return DataError(
                f"task 'arithmetic': option {option}={getattr(self, option)!r}: expected {expected}"
            )

        if not (isinstance(self.min_operand, int) and isinstance(self.max_operand, int)):
            raise bad("max_operand", "integer operand bounds")
        if self.min_operand < 0 or self.max_operand < self.min_operand:
            raise bad("max_operand", f"an integer ≥ min_operand={self.min_operand} ≥ 0")
        if not self.ops or set(self.ops) - {"+", "-"}:
            raise bad("ops", "a string of the operators '+' and/or '-'")
        if self.operands not in (2, 3):
            raise bad("operands", "2 or 3")
        if not 0.0 < self.eval_fraction < 1.0:
            raise bad("eval_fraction", "a number strictly between 0 and 1")

    # --- problems --------------------------------------------------------------------------------------

    def _problem(self, rng: random.Random) -> tuple[str, int]:
        nums = [rng.randint(self.min_operand, self.max_operand) for _ in range(self.operands)]
        ops = [rng.choice(self.ops) for _ in range(self.operands - 1)]
        value = nums[0]
        text = str(nums[0])
        for op, x in zip(ops, nums[1:], strict=True):
            value = value + x if op == "+" else value - x
            text += f"{op}{x}"
        return text + "=", value

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[tuple[str, str]]:
        """``n`` (prompt, answer) pairs of ``split``, drawn with replacement, reproducible from ``seed``."""
        check_count(n, "task 'arithmetic'")
        split = normalize_split(split)
        rng = rng_for(self.name, "problems", seed, split)
        out: list[tuple[str, str]] = []
        # Rejection sampling by split; the cap only trips when a split holds almost no prompts.
        for _ in range(200 * n + 10_000):
            prompt, value = self._problem(rng)
            if (value >= 0 or self.allow_negative) and split_of(prompt, self.eval_fraction) == split:
                out.append((prompt, str(value)))
                if len(out) == n:
                    return out
        raise DataError(
            f"task 'arithmetic': the {split!r} split has too few distinct problems with these options "
            f"(operands {self.min_operand}..{self.max_operand}, ops {self.ops!r}); widen the operand range"
        )

    # --- the Task interface ----------------------------------------------------------------------------

    def sft_records(self, n: int, seed: int = 0, split: str = "train") -> list[PromptCompletionRecord]:
        """Demonstrations: the exact answer as the completion (and as ``extra['answer']``)."""
        return [
            PromptCompletionRecord(
                prompt=p, completion=a, extra={"answer": a}, where=record_where(self.name, i)
            )
            for i, (p, a) in enumerate(self.problems(n, seed, split))
        ]

    def prompt_records(self, n: int, seed: int = 0, split: str = "train") -> list[PromptRecord]:
        return [
            PromptRecord(prompt=p, extra={"answer": a}, where=record_where(self.name, i))
            for i, (p, a) in enumerate(self.problems(n, seed, split))
        ]

    def corpus(self, n: int, seed: int = 0) -> list[str]:
        """Solved problems such as "23+58=81" (train split) for tokenizer training."""
        return [p + a for p, a in self.problems(n, seed, "train")]

    def reward(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **extra: Any
    ) -> list[float]:
        if "answer" not in extra:
            raise DataError("task 'arithmetic': reward needs the records' 'answer' field")
        return exact_match_reward(prompts, completions, extra["answer"])

    def evaluate(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **extra: Any
    ) -> dict[str, float]:
        return {"accuracy": sum(self.reward(prompts, completions, **extra)) / max(len(completions), 1)}

    def accuracy(self, completions: Sequence[Completion], answers: Sequence[object]) -> float:
        return accuracy(completions, answers)
