"""The task registry, ``get_task``, and built-in tasks as a data source (``task:NAME?option=value``).

Source strings: ``task:arithmetic``, ``task:arithmetic?max_operand=20&operands=3``,
``task:preference?n=5000&seed=1&label_noise=bt``. Options are split ``&``, then ``key=value``, with no URL
decoding (so ``ops=+-`` means what it says); a value reads as a bool (true/false), an int, a float, or
else a string. Three options choose the records rather than the task: ``n`` (how many; default ``limit``
or 1000), ``seed`` (default 0), and any parameter of the generating method (``label_noise``, ``k``,
``score_noise``). The rest are the task's own options (its dataclass fields).

Which records: the requested format picks the generator. prompt_completion (also the default when no format
is asked for) → ``sft_records``; prompt_only → ``prompt_records``; text → ``corpus``; preference →
``preference_pairs``; ranked → ``ranked_records``; unpaired → ``unpaired_records``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from rlft.algos.registry import Registry, UnknownNameError

from ..errors import DataError
from ..formats import Record, TextRecord, check_format
from .base import Task

TASKS: Registry[Callable[..., Task]] = Registry("task")  # name → the task's dataclass

_GENERATORS = {
    "prompt_completion": "sft_records",
    "prompt_only": "prompt_records",
    "text": "corpus",
    "preference": "preference_pairs",
    "ranked": "ranked_records",
    "unpaired": "unpaired_records",
}
DEFAULT_COUNT = 1000


def get_task(name: str, **options: Any) -> Task:
    """The built-in task ``name`` built with ``options`` (its dataclass fields)."""
    try:
        factory = TASKS.get(name)
    except UnknownNameError as e:
        raise DataError(str(e)) from None
    known: list[str] = (
        [f.name for f in dataclasses.fields(factory)] if dataclasses.is_dataclass(factory) else []
    )
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DataError(
            f"task {name!r}: unknown option {unknown[0]!r}; expected one of: {', '.join(known) or '(none)'}"
        )
    return factory(**options)


def parse_value(text: str) -> bool | int | float | str:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_task_source(source: str) -> tuple[str, dict[str, Any]]:
    """``"task:arithmetic?max_operand=20"`` → ``("arithmetic", {"max_operand": 20})``."""
    if not source.startswith("task:"):
        raise DataError(f"{source}: a task source starts with 'task:'")
    name, _, query = source[len("task:") :].partition("?")
    options: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise DataError(f"{source}: option {item!r}: expected key=value")
        options[key] = parse_value(value)
    return name, options


def task_of(source: str) -> Task | None:
    """The task object of a ``task:`` source (its own options only), else None."""
    if not source.startswith("task:"):
        return None
    name, options = parse_task_source(source)
    task = get_task(name)  # defaults, to learn the option names
    fields = getattr(type(task), "__dataclass_fields__", {})
    return get_task(name, **{k: v for k, v in options.items() if k in fields})


def task_records(
    task: Task, fmt: str, n: int, seed: int = 0, split: str = "train", **method_options: Any
) -> list[Record]:
    """``n`` records of format ``fmt`` from ``task`` (see the module docstring for which generator)."""
    check_format(fmt)
    method = getattr(task, _GENERATORS.get(fmt, ""), None)
    if method is None:
        offered = [f for f, m in _GENERATORS.items() if hasattr(task, m)]
        raise DataError(f"task {task.name!r} has no {fmt} data; it offers: {', '.join(offered)}")
    if fmt == "text":
        return [
            TextRecord(text=t, where=f"task:{task.name}:record {i + 1}")
            for i, t in enumerate(method(n, seed))
        ]
    records: list[Record] = method(n=n, seed=seed, split=split, **method_options)
    return records


def load_task_records(
    source: str, fmt: str | None = None, split: str = "train", limit: int | None = None
) -> list[Record]:
    """Records of a ``task:...`` source string (what ``load_records`` does for such sources)."""
    name, options = parse_task_source(source)
    n = options.pop("n", limit or DEFAULT_COUNT)
    seed = options.pop("seed", 0)
    fmt = fmt or "prompt_completion"
    check_format(fmt)
    generator = _GENERATORS.get(fmt)
    factory = TASKS.get(name) if name in TASKS else None
    method_params = set()
    if factory is not None and generator and hasattr(factory, generator):
        method_params = set(inspect.signature(getattr(factory, generator)).parameters) - {
            "self",
            "n",
            "seed",
            "split",
        }
    method_options = {k: options.pop(k) for k in list(options) if k in method_params}
    records = task_records(get_task(name, **options), fmt, n, seed=seed, split=split, **method_options)
    return records[:limit] if limit else records
