"""Type checking and conversion of config values against dataclass field annotations."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

_NoneType = type(None)
# Integers beyond int64 overflow every tensor and C library they reach; no count or seed needs more.
MAX_INT = 2**63 - 1
MAX_FLOAT_INT = 10**308  # within float range (1.8e308), so the conversion below cannot overflow


class ConfigError(ValueError):
    """A bad config file, key or value; ``str(err)`` is a one-line message naming where and what."""


def show(value: Any, limit: int = 60) -> str:
    """Short ``repr`` for error messages: a huge list should not flood the terminal."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def dataclass_of(hint: Any) -> type | None:
    """The dataclass a field holds, looking through ``X | None``; None for any other type."""
    if is_union(hint):
        inner = [a for a in typing.get_args(hint) if a is not _NoneType]
        return dataclass_of(inner[0]) if len(inner) == 1 else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def describe(hint: Any) -> str:
    """Human wording for a type, as in 'expected <describe(hint)>'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {bool: "a bool (true/false)", int: "an int", float: "a float", str: "a string", Path: "a path"}
    if hint in simple:
        return simple[hint]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if is_union(hint):
        return " or ".join("null" if a is _NoneType else describe(a) for a in args)
    if origin in (list, tuple) or hint in (list, tuple):
        return "a list"
    if origin is dict or hint is dict or dataclass_of(hint):
        return "a mapping"
    return f"a {getattr(hint, '__name__', str(hint))}"


def coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against ``hint`` and convert it (int→float, integral float→int, list→tuple).

    Raises ConfigError("{source}: config key '{key}': expected ..., got ...") on a mismatch.
    """

    def fail(expected: str | None = None) -> ConfigError:
        what = expected or describe(hint)
        got = show(value) if typing.get_origin(hint) is Literal else f"{show(value)} ({type(value).__name__})"
        return ConfigError(f"{source}: config key '{key}': expected {what}, got {got}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _free_form(value, key, source)
    if origin is Literal:
        # `==` alone would let True match a Literal[1] and 1 match Literal[True].
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return value
        raise fail()
    if is_union(hint):
        if value is None and _NoneType in args:
            return None
        options = [a for a in args if a is not _NoneType]
        if len(options) == 1:  # Optional[X]: X's own message (e.g. naming a bad list item) is the useful one
            return coerce(value, options[0], key, source)
        for option in options:
            try:
                return coerce(value, option, key, source)
            except ConfigError:
                continue
        raise fail()
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if hint is int:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # 1e5 is written as a float but means an int
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise fail("an int of at most 2**63 - 1 in size")
            return value
        raise fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # NaN passes every `x > 0` check in validate() and then poisons training; inf is never a
            # meaningful setting of a float field (none documents one), and an int past 1e308 is inf too.
            if isinstance(value, int) and abs(value) > MAX_FLOAT_INT:
                raise fail("a finite number")
            if not math.isfinite(value):
                raise fail("a finite number")
            return float(value)
        raise fail()
    if hint in (str, Path) and isinstance(value, str) and not utf8_encodable(value):
        raise fail("text without lone UTF-16 surrogates (a \\uD800-\\uDFFF escape without its pair)")
    if hint is str:
        if isinstance(value, str):
            return value
        raise fail()
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise fail()
    if origin in (list, tuple) or hint in (list, tuple):
        return _coerce_sequence(value, hint, key, source, fail)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise fail()
        k_hint, v_hint = args if args else (Any, Any)
        return {
            coerce(k, k_hint, f"{key}.{k}", source): coerce(v, v_hint, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if dataclass_of(hint):
        raise fail()  # sections are merged by the loader; reaching here means a non-mapping value
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise fail()
    raise ConfigError(f"config key '{key}': unsupported field type {hint!r}")


def utf8_encodable(text: str) -> bool:
    """False for text holding a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair): UTF-8
    cannot encode it, and so neither can any tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _free_form(value: Any, key: str, source: str) -> Any:
    """A value of an untyped field (reward specs, keyword arguments): any YAML, but no NaN anywhere in it,
    since a NaN setting is never meant and survives every comparison a consumer might make. (Infinity may
    be meant there, e.g. an unbounded clip, so it is left to the consumer.)"""
    stack = [(value, key)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and math.isnan(item):
            raise ConfigError(f"{source}: config key '{where}': expected a number, got nan")
        if isinstance(item, Mapping):
            stack.extend((v, f"{where}.{k}") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return value


def _coerce_sequence(value: Any, hint: Any, key: str, source: str, fail: Any) -> list[Any] | tuple[Any, ...]:
    """list[X], tuple[X, ...] and fixed tuple[X, Y]: accept a YAML list, convert each item."""
    if not isinstance(value, (list, tuple)):
        raise fail()
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise fail(f"a list of {len(args)} items")
        return tuple(
            coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    item = args[0] if args else Any
    items = [coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


# --- range checks shared by the trainer configs' validate() ----------------------------------------------

MAX_SEED = 2**32 - 1  # NumPy's legacy global seed (seed_everything) takes 32 bits
# Every optimiser here is Adam-like or RMSprop, whose step is about lr per weight: lr >= 1 moves weights by
# their own size each step and is a typo for a smaller number, never a setting.
MAX_LR = 1.0
# No model has a context this long; the model's own context length is checked when it is loaded.
MAX_NEW_TOKENS = 65536


def bad_value(cfg: Any, key: str, expected: str) -> ConfigError:
    """The one-line error for the value of ``cfg.<key>`` (``key`` may be dotted, e.g. ``optim.lr``):
    ``config key 'KEY': expected ..., got VALUE``."""
    return ConfigError(f"config key '{key}': expected {expected}, got {dotted_value(cfg, key)!r}")


def check_required(cfg: Any, **expected: str) -> None:
    """Each keyword names a key that must be set (not empty or null) and says what it expects; the first
    key left unset is a ConfigError (:func:`bad_value`)."""
    for key, what in expected.items():
        if not dotted_value(cfg, key):
            raise bad_value(cfg, key, what)


PRECISIONS = ("fp32", "bf16")  # the ``precision`` key: float32, or bfloat16 autocast (rlft.run.device)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")  # the ``device`` key


def check_compute(device: object, precision: object) -> None:
    """Raise a one-line :class:`ConfigError` for a ``device`` or ``precision`` key of the wrong form (checked
    with the rest of a config, before anything is loaded; whether the device exists is
    :func:`rlft.run.device.resolve_device`'s question)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"config key 'device': expected auto, cpu, cuda or cuda:N, got {device!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"config key 'precision': expected one of {', '.join(PRECISIONS)}, got {precision!r}")


def check_common(
    cfg: Any,
    lrs: tuple[str, ...] = ("lr",),
    generation: tuple[str, ...] = (),
    optional_text: tuple[str, ...] = (),
) -> None:
    """Checks every trainer config shares: ``seed`` in [0, 2**32 - 1], each learning rate in ``lrs`` (dotted
    keys; null skipped) below 1, each generation budget in ``generation`` at most MAX_NEW_TOKENS, each key
    of ``optional_text`` null or a non-empty string, and ``max_consecutive_skips`` (where the config has
    it) at least 1, and the form of ``device`` and ``precision`` (where it has them). Raises a one-line
    ConfigError naming the key."""

    def bad(key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"config key '{key}': expected {expected}, got {show(value)}")

    if not 0 <= cfg.seed <= MAX_SEED:
        raise bad("seed", f"an integer in [0, {MAX_SEED}] (2**32 - 1)", cfg.seed)
    for key in lrs:
        value = dotted_value(cfg, key)
        if value is not None and value >= MAX_LR:  # the lower bound (> 0) is each config's own check
            raise bad(key, "a learning rate below 1", value)
    for key in generation:
        value = dotted_value(cfg, key)
        if value is not None and not 1 <= value <= MAX_NEW_TOKENS:
            raise bad(key, f"a token count in [1, {MAX_NEW_TOKENS}]", value)
    for key in optional_text:
        value = dotted_value(cfg, key)
        if value is not None and not str(value).strip():
            raise bad(key, "a non-empty string or null", value)
    if hasattr(cfg, "device"):
        check_compute(cfg.device, cfg.precision)
    skips = getattr(cfg, "max_consecutive_skips", 1)
    if isinstance(skips, bool) or not isinstance(skips, int) or skips < 1:
        raise bad("max_consecutive_skips", "an integer >= 1", skips)


def check_ranges(
    cfg: Any,
    positive: tuple[str, ...] = (),
    positive_or_null: tuple[str, ...] = (),
    at_least_zero: tuple[str, ...] = (),
    numbers_at_least_zero: tuple[str, ...] = (),
) -> None:
    """Table-driven range checks of a config's counts and coefficients, each key a field name or a dotted
    path into a section (``optim.lr``); the first key out of range is a one-line ConfigError naming it,
    what was expected and the value."""
    rules: list[tuple[tuple[str, ...], Any, str]] = [
        (positive, lambda v: v >= 1, "a positive integer"),
        (positive_or_null, lambda v: v is None or v >= 1, "a positive integer or null"),
        (at_least_zero, lambda v: v >= 0, "an integer >= 0"),
        (numbers_at_least_zero, lambda v: v >= 0, "a number >= 0"),
    ]
    for keys, ok, expected in rules:
        for key in keys:
            value = dotted_value(cfg, key)
            if not ok(value):
                raise ConfigError(f"config key '{key}': expected {expected}, got {value!r}")


def dotted_value(cfg: Any, key: str) -> Any:
    """The value of the dotted ``key`` in ``cfg`` (``"optim.lr"`` → ``cfg.optim.lr``); None below a null
    section (an unset ``lora``)."""
    for part in key.split("."):
        cfg = getattr(cfg, part) if cfg is not None else None
    return cfg
