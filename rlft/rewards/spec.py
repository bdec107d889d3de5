"""Reward specs, as written in YAML, parsed into :class:`RewardSpec` and turned into reward functions.

    - exact_match                                   # a built-in by name (row field ``answer``)
    - task:arithmetic                               # a built-in task's own reward
    - {name: regex_format, pattern: "<think>.*</think>.*", weight: 0.2}
    - {name: overlong, max_len: 32, cache: 8}
    - {function: my_pkg.rewards:has_citation, alias: cites, processes: 4}
    - {function: rewards/score.py:judge, threshold: 0.5}   # other keys → keyword arguments of every call
    - {function: trl.py:fmt, reward_format: messages}  # TRL convention for chat completions
    - {reward_model: runs/rm/model, batch_size: 32, normalize: true}
    - {task: preference}                            # other keys → the task's options

Common keys: ``weight`` (default 1.0), ``alias`` (the name in logs and results), ``processes`` (run
the function in a pool of that many processes; 0 = in-process), ``timeout`` (seconds one batch call of a
user function or of a pool may take, default 300; 0 or null = no limit; past it a RewardError stops the
caller, and a pool's workers are killed — built-ins and reward models run without one). A user function also takes
``reward_format``: ``text`` (default: every completion is its text) or ``messages`` (TRL's convention for
conversational data: a completion of a conversational prompt is ``[{"role": "assistant", "content":
text}]``, so a function written for TRL that reads ``completions[i][0]["content"]`` runs unchanged).
A string that is neither a built-in nor ``task:…`` but looks like ``module:function`` or
``file.py:function`` is a user function.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlft.data import DataError
from rlft.data.formats import Completion, Prompt
from rlft.data.tasks import Task, get_task, parse_task_source

from .builtins import REWARD_FUNCTIONS
from .errors import RewardError
from .user import accepted_fields, is_function_ref, load_function

__all__ = ["RewardSpec", "make_function", "parse_spec"]

KINDS = ("name", "function", "reward_model", "task")
REWARD_FORMATS = ("text", "messages")
COMMON = ("weight", "alias", "processes", "timeout")
DEFAULT_TIMEOUT = 300.0  # seconds per batch call


@dataclass(frozen=True)
class RewardSpec:
    """One parsed reward source; ``options`` are the keys beyond the source and the common ones."""

    kind: str  # builtin | function | reward_model | task
    source: str  # built-in name, function ref, model dir, or task source
    options: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    alias: str | None = None
    processes: int = 0
    where: str = "rewards[0]"
    timeout: float | None = DEFAULT_TIMEOUT  # seconds per batch call; None = no limit

    def key(self) -> str:
        """A stable identity (for the per-process cache of built functions)."""
        return json.dumps([self.kind, self.source, self.options], sort_keys=True, default=str)


def parse_spec(spec: object, index: int = 0) -> RewardSpec:
    """Check one spec (a string or a mapping) and return it parsed; errors name ``rewards[index]``."""
    where = f"rewards[{index}]"
    if isinstance(spec, str):
        spec = (
            {"task": spec}
            if spec.startswith("task:")
            else (
                {"function": spec}
                if is_function_ref(spec) and spec not in REWARD_FUNCTIONS
                else {"name": spec}
            )
        )
    if not isinstance(spec, Mapping):
        raise RewardError(f"{where}: expected a reward name or a mapping, got {type(spec).__name__} {spec!r}")
    present = [k for k in KINDS if k in spec]
    if len(present) != 1:
        raise RewardError(
            f"{where}: expected exactly one of the keys {', '.join(KINDS)}, got "
            f"{', '.join(map(str, spec)) or 'none'}"
        )
    kind_key = present[0]
    source = spec[kind_key]
    if not isinstance(source, str) or not source:
        raise RewardError(f"{where}: key '{kind_key}': expected a non-empty string, got {source!r}")
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise RewardError(f"{where}: key 'weight': expected a finite number, got {weight!r}")
    alias = spec.get("alias")
    if alias is not None and (not isinstance(alias, str) or not alias):
        raise RewardError(f"{where}: key 'alias': expected a non-empty string, got {alias!r}")
    processes = spec.get("processes", 0)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 0:
        raise RewardError(f"{where}: key 'processes': expected an integer >= 0, got {processes!r}")
    timeout = spec.get("timeout", DEFAULT_TIMEOUT)
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout < 0
    ):
        raise RewardError(
            f"{where}: key 'timeout': expected a finite number of seconds >= 0 (0 or null = no limit), "
            f"got {timeout!r}"
        )
    kind = "builtin" if kind_key == "name" else kind_key
    if kind == "builtin" and source not in REWARD_FUNCTIONS:
        raise RewardError(
            f"{where}: unknown reward function {source!r}; expected one of {', '.join(REWARD_FUNCTIONS.names())}"
            ", task:NAME, a 'module:function' / 'file.py:function' reference, or {reward_model: DIR}"
        )
    if kind == "reward_model" and processes:
        raise RewardError(
            f"{where}: a reward model runs in-process (processes must be 0); batch_size sets its batches"
        )
    options = {k: v for k, v in spec.items() if k not in (kind_key, *COMMON)}
    limit = float(timeout) if timeout else None
    return RewardSpec(kind, source, options, float(weight), alias, processes, where, limit)


def _check_options(spec: RewardSpec, factory: Callable[..., object], what: str) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [
        n
        for n, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("self", "path")
    ]
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        raise RewardError(
            f"{spec.where}: {what}: unknown option {unknown[0]!r}; expected one of: "
            f"{', '.join(allowed) or '(none)'} (and weight, alias, processes, timeout)"
        )


class _Bound:
    """A user function with its spec's extra options bound as keyword arguments, called with only the
    row fields it accepts (all of them when it takes ``**kwargs``)."""

    def __init__(self, fn: Callable[..., object], options: dict[str, Any], spec: RewardSpec):
        options = dict(options)
        self.format = options.pop("reward_format", "text")
        if self.format not in REWARD_FORMATS:
            raise RewardError(
                f"{spec.where}: key 'reward_format': expected one of {', '.join(REWARD_FORMATS)}, "
                f"got {self.format!r}"
            )
        self.fn, self.options = fn, options
        self.user_function = fn  # where a raise is located (rlft.rewards.calling)
        self.fields = accepted_fields(fn)
        self.__name__ = getattr(fn, "__name__", "function")
        if self.fields is not None and (extra := sorted(set(options) - self.fields)):
            raise RewardError(f"{spec.where}: function {spec.source!r} takes no argument {extra[0]!r}")

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[Completion], **fields: Any) -> object:
        if self.fields is not None:
            fields = {k: v for k, v in fields.items() if k in self.fields}
        chat = [not isinstance(p, str) for p in prompts]
        if self.format == "messages":
            completions = [
                [{"role": "assistant", "content": c}] if is_chat else c
                for c, is_chat in zip(completions, chat, strict=True)
            ]
        try:
            return self.fn(prompts, completions, **fields, **self.options)
        except TypeError as err:
            if self.format == "text" and any(chat):
                raise TypeError(
                    f"{err} (completions are passed as text; for a function written for TRL's "
                    f"conversational convention, completions[i][0]['content'], set reward_format: messages)"
                ) from err
            raise


class _TaskReward:
    def __init__(self, task: Task):
        self.task = task
        self.__name__ = task.name

    def __call__(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **fields: Any
    ) -> list[float]:
        fields.pop("completion_lengths", None)
        return self.task.reward(prompts, completions, **fields)


def make_function(spec: RewardSpec) -> Callable[..., object]:
    """Build the callable ``f(prompts, completions, **fields)`` a spec describes (loads models/modules)."""
    if spec.kind == "builtin":
        factory = REWARD_FUNCTIONS.get(spec.source)
        _check_options(spec, factory, spec.source)
        try:
            return factory(**spec.options)
        except RewardError as err:
            raise RewardError(f"{spec.where}: {err}") from None
    if spec.kind == "function":
        return _Bound(load_function(spec.source), spec.options, spec)
    if spec.kind == "reward_model":
        from .reward_model import RewardModelFunction

        _check_options(spec, RewardModelFunction.__init__, "reward_model")
        return RewardModelFunction(spec.source, **spec.options)
    source = spec.source if spec.source.startswith("task:") else f"task:{spec.source}"
    try:
        name, options = parse_task_source(source)
        return _TaskReward(get_task(name, **{**options, **spec.options}))
    except DataError as err:
        raise RewardError(f"{spec.where}: {err}") from None


def default_name(spec: RewardSpec, fn: Callable[..., object]) -> str:
    if spec.alias:
        return spec.alias
    if spec.kind == "builtin":
        return spec.source
    if spec.kind == "reward_model":
        return "reward_model"
    if spec.kind == "task":
        return parse_task_source(spec.source if spec.source.startswith("task:") else f"task:{spec.source}")[0]
    return getattr(fn, "__name__", spec.source.rpartition(":")[2])
