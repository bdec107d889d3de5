"""``preference``: a synthetic preference task with a hidden gold scorer, the testbed for reward model →
PPO and for the DPO family, small enough that a ~1M-parameter model learns it on a CPU in minutes.

Prompts: ``"Describe the <topic> <style>:"`` for 40 topics in 4 groups (nature, city, food, machines) and 4
styles (briefly, simply, vividly, in detail): 160 prompts. Completions: a leading space and 1+ words from a
40-word vocabulary, e.g. ``" green calm very vast"``: 8 descriptive words per group plus 8 filler words.

Gold score (hidden: only ``gold_score`` and the label generators read it; a learner sees labels only).
For a completion of L words (lower-cased, surrounding punctuation stripped) answering a prompt of topic
group g and style s:

    content  = mean over the L words of w_g(word)            in [-1, 1]
    length   = max(-1, 1 - ((L - L*_s) / 4)^2)               in [-1, 1], best at L*_s
    repeats  = 1 - (distinct words) / L                      in [0, 1)
    gold     = clip(0.6 content + 0.3 length - 1.0 repeats, -1, 1);  gold = -1 for an empty completion

w_g(word) = clip(q(word) + b_g(word), -1, 1): a global word quality q plus a modest topic-group bonus b.
q: each group's 8 words weigh 1.00, 0.75, ..., -0.75 in the listed order, whatever the prompt; fillers -1;
unknown words -1. b_g: +0.25 for the prompt's own group's words, -0.25 for the opposite group's (nature ↔
machines, city ↔ food), 0 otherwise. L*: briefly 5, simply 7, vividly 9, in detail 11. The best
completions (0.76-0.88) use the top words of the own and neighbouring groups at the style's length;
repeating the single best word five times scores only 0.1.

Why this shape: the word order that decides most pairs is the same for every prompt (an additive,
prompt-independent term plus the style's length), which a ~1M-parameter reward model learns in a few
hundred steps; the group bonus still makes the topic matter. (An earlier version whose word weights
flipped sign between groups left a small reward model at ~0.81 gold accuracy: it learnt the length term
but not the topic × word interaction.)

The mediocre policy, used for SFT demonstrations and for every completion in the preference data: L
uniform in ``min_words..max_words`` (4..12), words drawn uniformly WITHOUT replacement from the whole
vocabulary. Its mean gold score is about 0.04 (see ``policy_gold_stats``), far below the ~0.8 optimum.
Because it never repeats a word, no label ever shows the repeat penalty: a reward model cannot learn it,
and a policy optimised hard against that reward model can gain reward by repeating its best word while the
gold score falls. That is the designed overoptimisation channel.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import DataError
from ..formats import (
    Completion,
    PreferenceRecord,
    Prompt,
    PromptCompletionRecord,
    PromptRecord,
    RankedRecord,
    UnpairedRecord,
)
from .base import check_count, check_same_length, normalize_split, record_where, rng_for, split_of, text_of
from .registry import TASKS

TOPICS: dict[str, tuple[str, ...]] = {
    "nature": (
        "forest",
        "river",
        "mountain",
        "ocean",
        "desert",
        "meadow",
        "volcano",
        "glacier",
        "canyon",
        "island",
    ),
    "city": (
        "market",
        "subway",
        "skyline",
        "harbor",
        "stadium",
        "library",
        "plaza",
        "museum",
        "bridge",
        "airport",
    ),
    "food": ("soup", "bread", "curry", "salad", "pizza", "cheese", "pasta", "noodles", "pie", "sushi"),
    "machines": (
        "engine",
        "robot",
        "clock",
        "rocket",
        "printer",
        "laptop",
        "tractor",
        "radio",
        "camera",
        "elevator",
    ),
}
GROUP_WORDS: dict[str, tuple[str, ...]] = {  # best first
    "nature": ("green", "wild", "calm", "vast", "flowing", "ancient", "rocky", "fresh"),
    "city": ("busy", "loud", "crowded", "bright", "modern", "narrow", "urban", "noisy"),
    "food": ("tasty", "spicy", "sweet", "crispy", "warm", "salty", "rich", "savory"),
    "machines": ("fast", "precise", "metal", "electric", "efficient", "powerful", "silent", "smart"),
}
FILLER = ("very", "quite", "really", "truly", "rather", "also", "just", "so")
VOCAB: tuple[str, ...] = tuple(w for words in GROUP_WORDS.values() for w in words) + FILLER
OPPOSITE = {"nature": "machines", "machines": "nature", "city": "food", "food": "city"}
STYLES: dict[str, int] = {"briefly": 5, "simply": 7, "vividly": 9, "in detail": 11}  # style → best length

CONTENT_COEF, LENGTH_COEF, REPEAT_COEF, LENGTH_SCALE = 0.6, 0.3, 1.0, 4.0
QUALITY_STEP, FILLER_QUALITY, GROUP_BONUS = 0.25, -1.0, 0.25
_PUNCTUATION = ".,;:!?\"'()"


def _weights(group: str) -> dict[str, float]:
    w = dict.fromkeys(FILLER, FILLER_QUALITY)
    for g, words in GROUP_WORDS.items():
        bonus = GROUP_BONUS if g == group else -GROUP_BONUS if g == OPPOSITE[group] else 0.0
        w.update({word: max(-1.0, min(1.0, 1.0 - QUALITY_STEP * j + bonus)) for j, word in enumerate(words)})
    return w


_WEIGHTS = {g: _weights(g) for g in GROUP_WORDS}
# Every prompt → (topic group, best length). Built once: the prompt set is fixed.
PROMPTS: dict[str, tuple[str, int]] = {
    f"Describe the {topic} {style}:": (group, best)
    for group, topics in TOPICS.items()
    for topic in topics
    for style, best in STYLES.items()
}


def _gold(prompt: str, completion: str) -> float:
    key = prompt.strip()
    if key not in PROMPTS:
        raise DataError(
            f"task 'preference': {prompt!r} is not one of its prompts ('Describe the <topic> <style>:')"
        )
    group, best = PROMPTS[key]
    words = [w for w in (raw.strip(_PUNCTUATION).lower() for raw in completion.split()) if w]
    if not words:
        return -1.0
    weights = _WEIGHTS[group]
    content = sum(weights.get(w, -1.0) for w in words) / len(words)
    length = max(-1.0, 1.0 - ((len(words) - best) / LENGTH_SCALE) ** 2)
    repeats = 1.0 - len(set(words)) / len(words)
    return max(-1.0, min(1.0, CONTENT_COEF * content + LENGTH_COEF * length - REPEAT_COEF * repeats))


@functools.cache
def _split_prompts(eval_fraction: float) -> dict[str, tuple[str, ...]]:
    split: dict[str, list[str]] = {"train": [], "eval": []}
    for prompt in PROMPTS:
        split[split_of(prompt, eval_fraction)].append(prompt)
    return {k: tuple(v) for k, v in split.items()}


@TASKS.register("preference")
@dataclass(frozen=True)
class PreferenceTask:
    """Options: ``min_words``/``max_words`` bound the mediocre policy's lengths; ``eval_fraction`` of the
    160 prompts form the eval split; ``bt_temperature`` is T of Bradley–Terry label sampling."""

    name: ClassVar[str] = "preference"
    min_words: int = 4
    max_words: int = 12
    eval_fraction: float = 0.2
    bt_temperature: float = 0.1

    def __post_init__(self) -> None:
        if not (isinstance(self.min_words, int) and isinstance(self.max_words, int)) or not (
            1 <= self.min_words <= self.max_words <= len(VOCAB)
        ):
            raise DataError(
                f"task 'preference': options min_words={self.min_words!r}, max_words={self.max_words!r}: "
                f"expected integers with 1 ≤ min_words ≤ max_words ≤ {len(VOCAB)}"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise DataError(
                f"task 'preference': option eval_fraction={self.eval_fraction!r}: expected 0 < x < 1"
            )
        if not self.bt_temperature > 0:
            raise DataError(f"task 'preference': option bt_temperature={self.bt_temperature!r}: expected > 0")
        for split, prompts in _split_prompts(self.eval_fraction).items():
            if not prompts:
                raise DataError(
                    f"task 'preference': eval_fraction={self.eval_fraction} leaves no {split} prompts"
                )

    # --- prompts and the mediocre policy ---------------------------------------------------------------

    def prompts(self, split: str = "train") -> tuple[str, ...]:
        """Every prompt of ``split`` (the splits are disjoint)."""
        return _split_prompts(self.eval_fraction)[normalize_split(split)]

    def sample_completion(self, rng: random.Random) -> str:
        """One draw from the mediocre policy: uniform length, distinct uniformly random vocabulary words."""
        return " " + " ".join(rng.sample(VOCAB, rng.randint(self.min_words, self.max_words)))

    def _draws(self, n: int, seed: int, split: str, purpose: str) -> tuple[random.Random, list[str]]:
        check_count(n, f"task 'preference' {purpose}")
        rng = rng_for(self.name, purpose, seed, normalize_split(split))
        prompts = self.prompts(split)
        return rng, [rng.choice(prompts) for _ in range(n)]

    # --- gold ------------------------------------------------------------------------------------------

    def gold_score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[float]:
        """The hidden gold score in [-1, 1] of each completion (definition in the module docstring)."""
        check_same_length(prompts=prompts, completions=completions)
        return [_gold(text_of(p), text_of(c)) for p, c in zip(prompts, completions, strict=True)]

    def win_rate(
        self,
        prompts: Sequence[Prompt],
        completions_a: Sequence[Completion],
        completions_b: Sequence[Completion],
    ) -> float:
        """Fraction of prompts where a's gold score beats b's (ties count one half)."""
        check_same_length(prompts=prompts, completions_a=completions_a, completions_b=completions_b)
        if not prompts:
            raise DataError("win_rate: no completions to compare")
        ga, gb = self.gold_score(prompts, completions_a), self.gold_score(prompts, completions_b)
        return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ga, gb, strict=True)) / len(ga)

    def noise_ceiling(self, label_noise: float | str = 0.1) -> float:
        """The best pairwise accuracy any scorer can reach against labels made with ``label_noise``.

        Flip noise p: 1 - p (the gold order itself is right on a 1 - p share). ``"bt"``: the mean of
        max(P, 1 - P), P = sigmoid(Δgold / T), over mediocre-policy pairs (a fixed 20,000-pair estimate).
        """
        if label_noise == "bt":
            return _bt_ceiling(self.min_words, self.max_words, self.bt_temperature, self.eval_fraction)
        return 1.0 - _check_noise(label_noise)

    # --- data ------------------------------------------------------------------------------------------

    def sft_records(self, n: int, seed: int = 0, split: str = "train") -> list[PromptCompletionRecord]:
        """Demonstrations from the mediocre policy (so SFT leaves plenty to gain)."""
        rng, prompts = self._draws(n, seed, split, "sft")
        return [
            PromptCompletionRecord(
                prompt=p, completion=self.sample_completion(rng), where=record_where(self.name, i)
            )
            for i, p in enumerate(prompts)
        ]

    def prompt_records(self, n: int, seed: int = 0, split: str = "train") -> list[PromptRecord]:
        _, prompts = self._draws(n, seed, split, "prompts")
        return [PromptRecord(prompt=p, where=record_where(self.name, i)) for i, p in enumerate(prompts)]

    def _distinct_pair(self, rng: random.Random, prompt: str) -> tuple[str, str, float, float]:
        a = self.sample_completion(rng)
        ga = _gold(prompt, a)
        for _ in range(100):  # redraw b until the gold scores differ, so every pair has a true order
            b = self.sample_completion(rng)
            gb = _gold(prompt, b)
            if gb != ga:
                return a, b, ga, gb
        raise DataError("task 'preference': could not draw two completions with different gold scores")

    def preference_pairs(
        self, n: int, seed: int = 0, split: str = "train", label_noise: float | str = 0.1
    ) -> list[PreferenceRecord]:
        """Two mediocre-policy completions per prompt, labelled by gold score.

        ``label_noise`` a float p in [0, 0.5]: chosen is the higher-gold completion, swapped with
        probability p (so labels agree with gold on a 1 - p share). ``"bt"``: Bradley–Terry sampling,
        a is chosen with probability sigmoid((gold_a - gold_b) / bt_temperature), so near-ties are coin
        flips and clear differences are almost always right.
        """
        bt = label_noise == "bt"
        p_flip = 0.0 if bt else _check_noise(label_noise)
        rng, prompts = self._draws(n, seed, split, "pairs")
        out = []
        for i, prompt in enumerate(prompts):
            a, b, ga, gb = self._distinct_pair(rng, prompt)
            if bt:
                a_wins = rng.random() < _sigmoid((ga - gb) / self.bt_temperature)
            else:
                a_wins = (ga > gb) != (rng.random() < p_flip)
            chosen, rejected = (a, b) if a_wins else (b, a)
            out.append(
                PreferenceRecord(
                    prompt=prompt, chosen=chosen, rejected=rejected, where=record_where(self.name, i)
                )
            )
        return out

    def ranked_records(
        self, n: int, k: int = 4, seed: int = 0, split: str = "train", score_noise: float = 0.0
    ) -> list[RankedRecord]:
        """k mediocre-policy responses per prompt scored by gold (plus Gaussian ``score_noise``), 6 decimals."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise DataError(f"task 'preference': ranked_records needs k ≥ 2 responses, got {k!r}")
        rng, prompts = self._draws(n, seed, split, "ranked")
        out = []
        for i, prompt in enumerate(prompts):
            responses = [self.sample_completion(rng) for _ in range(k)]
            scores = [round(_gold(prompt, r) + rng.gauss(0.0, score_noise), 6) for r in responses]
            out.append(
                RankedRecord(
                    prompt=prompt, responses=responses, scores=scores, where=record_where(self.name, i)
                )
            )
        return out

    def unpaired_records(self, n: int, seed: int = 0, split: str = "train") -> list[UnpairedRecord]:
        """One mediocre-policy completion per prompt, label = gold above the policy's median gold score
        (a fixed population median, so a record's label never depends on the others; about half are True)."""
        median = policy_gold_stats(self.min_words, self.max_words)["median"]
        rng, prompts = self._draws(n, seed, split, "unpaired")
        out = []
        for i, prompt in enumerate(prompts):
            completion = self.sample_completion(rng)
            label = _gold(prompt, completion) > median
            out.append(
                UnpairedRecord(
                    prompt=prompt, completion=completion, label=label, where=record_where(self.name, i)
                )
            )
        return out

    def corpus(self, n: int, seed: int = 0) -> list[str]:
        """Prompt + completion texts that cycle through all 160 prompts of BOTH splits (only the vocabulary
        is shared, never a label), so a tokenizer trained on 160+ texts knows every word the task uses."""
        check_count(n, "task 'preference' corpus")
        rng = rng_for(self.name, "corpus", seed, "all")
        prompts = list(PROMPTS)
        return [prompts[i % len(prompts)] + self.sample_completion(rng) for i in range(n)]

    def reward(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **extra: Any
    ) -> list[float]:
        """The gold score as a reward (an oracle baseline; the RLHF path learns a reward model instead)."""
        return self.gold_score(prompts, completions)

    def evaluate(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **extra: Any
    ) -> dict[str, float]:
        """Mean gold score, mean word count and mean share of distinct words (a repetition alarm)."""
        if not completions:
            raise DataError("task 'preference': evaluate needs at least one completion")
        words = [text_of(c).split() for c in completions]
        return {
            "gold_score": statistics.fmean(self.gold_score(prompts, completions)),
            "mean_words": statistics.fmean(len(w) for w in words),
            "distinct_ratio": statistics.fmean(len(set(w)) / len(w) if w else 0.0 for w in words),
        }


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _check_noise(label_noise: object) -> float:
    if (
        isinstance(label_noise, bool)
        or not isinstance(label_noise, int | float)
        or not 0.0 <= label_noise <= 0.5
    ):
        raise DataError(
            f"task 'preference': label_noise must be a number in [0, 0.5] or 'bt', got {label_noise!r}"
        )
    return float(label_noise)


@functools.cache
def policy_gold_stats(min_words: int = 4, max_words: int = 12) -> dict[str, float]:
    """Mean and median gold score of the mediocre policy over all prompts (fixed 20,000-draw estimate)."""
    task = PreferenceTask(min_words=min_words, max_words=max_words)
    rng = random.Random("preference/policy-stats")
    prompts = list(PROMPTS)
    scores = [_gold(p, task.sample_completion(rng)) for p in (rng.choice(prompts) for _ in range(20_000))]
    return {"mean": statistics.fmean(scores), "median": statistics.median(scores)}


@functools.cache
def _bt_ceiling(min_words: int, max_words: int, temperature: float, eval_fraction: float) -> float:
    task = PreferenceTask(min_words=min_words, max_words=max_words, eval_fraction=eval_fraction)
    rng = random.Random("preference/bt-ceiling")
    prompts = task.prompts("train")
    total = 0.0
    for _ in range(20_000):
        _, _, ga, gb = task._distinct_pair(rng, rng.choice(prompts))
        p = _sigmoid((ga - gb) / temperature)
        total += max(p, 1.0 - p)
    return total / 20_000
