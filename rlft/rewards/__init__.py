"""Rewards: rule-based reward functions, user functions, reward models and built-in tasks behind one API.

    rewards = build_rewards(["exact_match", {"name": "overlong", "max_len": 32, "cache": 8}])
    result = rewards(prompts, completions, rows={"answer": answers}, completion_lengths=lengths)
    result.total, result.per_function, result.valid, result.skipped

Every source is a function ``f(prompts, completions, **fields) -> list[float | None]`` (TRL's reward
signature); see ``spec.py`` for the spec forms and ``reward_set.py`` for how values are combined.
"""

from .builtins import (
    REWARD_FUNCTIONS,
    completion_length,
    dapo_overlong_penalty,
    parse_number,
    repetition_penalty,
)
from .calling import call_reward
from .errors import RewardError
from .reward_model import RewardModelFunction, score_texts
from .reward_set import ON_INVALID, RewardResult, RewardSet, build_rewards
from .sources import REWARD_SOURCES, check_reward_sources, pin_reward_files, reward_sources
from .spec import RewardSpec, make_function, parse_spec
from .user import load_function

__all__ = [
    "ON_INVALID",
    "REWARD_FUNCTIONS",
    "REWARD_SOURCES",
    "RewardError",
    "RewardModelFunction",
    "RewardResult",
    "RewardSet",
    "RewardSpec",
    "build_rewards",
    "call_reward",
    "check_reward_sources",
    "completion_length",
    "dapo_overlong_penalty",
    "load_function",
    "make_function",
    "parse_number",
    "parse_spec",
    "pin_reward_files",
    "repetition_penalty",
    "reward_sources",
    "score_texts",
]
