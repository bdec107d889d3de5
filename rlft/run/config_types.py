"""Type checking and conversion of config values against dataclass field annotations."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

_NoneType = type(None)


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
        return value
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
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)  # 1e5 is written as a float but means an int
        raise fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
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


def _coerce_sequence(value: Any, hint: Any, key: str, source: str, fail: Any) -> list | tuple:
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
