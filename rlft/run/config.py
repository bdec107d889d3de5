"""Typed configs: dataclass defaults < preset < YAML file < command-line overrides.

Every source is checked against the dataclass annotations as it is applied, so an error names the source
(file path, ``preset`` or ``command line``), the dotted key, the bad value and what was expected.

A config class may list keys that have a new name in a class attribute
``RENAMED: ClassVar[dict[str, str]] = {"old": "new"}``; an old key in any source (a YAML file, a saved
run config, a preset, the command line) is then refused with one line naming the new key, rather than the
generic "unknown config key". The new name may be a dotted key relative to the class, for a key that
moved into a section: ``{"lr": "optim.lr"}`` refuses ``lr: 1e-5`` and ``--lr 1e-5`` with
``config key 'lr' was renamed to 'optim.lr'``. A new name starting with ``/`` is a key of the top level,
for a section key that left its section: ``{"bf16": "/precision"}`` in a section ``performance``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .atomic import atomic_write_text
from .config_types import ConfigError, coerce, dataclass_of, show
from .config_yaml import dump_yaml, load_yaml_file, parse_yaml_value

__all__ = ["ConfigError", "config_to_dict", "load_config", "parse_overrides", "save_config"]

T = TypeVar("T")


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Parse ``--a.b value``, ``--a.b=value`` and bare ``--flag`` (→ True) into {"a.b": value}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        key = arg[2:].partition("=")[0]
        if not arg.startswith("--") or not key:
            raise ConfigError(f"unexpected argument '{arg}'; overrides look like --key value")
        if "=" in arg:
            out[key] = parse_yaml_value(arg.partition("=")[2])
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            i += 1
            out[key] = parse_yaml_value(args[i])
        else:
            out[key] = True
        i += 1
    return out


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from its defaults, then ``base`` (a preset), the YAML file at ``path``, then overrides."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config expects a dataclass type, got {cls!r}")
    if isinstance(overrides, str):
        raise TypeError(
            "load_config overrides must be a mapping or a list of '--key value' strings, got a str"
        )
    updates: dict[str, Any] = {}
    origins: dict[str, str] = {}  # dotted key → the source that set it last, for validate()'s errors
    if base:
        _apply(cls, base, updates, "preset", "", origins)
    if path is not None:
        _apply(cls, load_yaml_file(path), updates, str(path), "", origins)
    flat = overrides if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
    for key, value in flat.items():
        # One key at a time, so a later `--ppo '{lr: 1}'` can override an earlier `--ppo.lr 2` and vice versa.
        _apply(cls, {key: value}, updates, "command line", "", origins)
    try:
        return _build(cls, updates, None, "")
    except ConfigError as e:
        raise _with_origin(e, origins) from None


def _with_origin(error: ConfigError, origins: Mapping[str, str]) -> ConfigError:
    """A validate() error ("config key 'lr': ...") prefixed with the source that set that key, if any."""
    message = str(error)
    named = re.match(r"config keys? '([^']+)'", message)
    if named is None or named.group(1) not in origins:
        return error
    return ConfigError(f"{origins[named.group(1)]}: {message}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict of a config (tuples → lists, paths → str), in field order; init=False fields omitted
    because load_config would reject them as unknown keys."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"config_to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML atomically; ``load_config(type(cfg), path)`` reads back an equal object."""
    atomic_write_text(path, dump_yaml(config_to_dict(cfg)))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields (handles `from __future__ import annotations`)."""
    try:
        hints = typing.get_type_hints(cls)
    except NameError as e:  # e.g. a string annotation naming a class defined inside a function
        raise TypeError(f"cannot resolve the type annotations of config class {cls.__name__}: {e}") from None
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _apply(
    cls: type,
    data: Mapping[str, Any],
    into: dict[str, Any],
    source: str,
    prefix: str,
    origins: dict[str, str],
) -> None:
    """Check ``data`` against ``cls`` and merge it into the nested ``into`` dict of updates; ``origins``
    records which source set each dotted key."""
    hints = _hints(cls)
    for raw_key, value in data.items():
        if not isinstance(raw_key, str):
            raise ConfigError(
                f"{source}: config keys must be strings, got {raw_key!r} under '{prefix or '.'}'"
            )
        name, _, rest = raw_key.partition(".")
        key = prefix + raw_key
        if name not in hints:
            renamed = getattr(cls, "RENAMED", {}).get(name)
            if renamed is not None:
                # "/key": a key of the top level, not of this section
                target = renamed[1:] if renamed.startswith("/") else prefix + renamed
                raise ConfigError(f"{source}: config key '{prefix}{name}' was renamed to '{target}'")
            raise ConfigError(_unknown_key_message(cls, key, prefix, source))
        hint = hints[name]
        sub = dataclass_of(hint)
        if rest and sub is None:  # "ppo.lr.x": lr is a value, not a section
            raise ConfigError(_unknown_key_message(cls, key, prefix, source))
        if rest:
            value = {rest: value}  # dotted key such as "ppo.lr": descend into the section
        if sub is not None and isinstance(value, Mapping):
            section = into.get(name)
            if not isinstance(section, dict):
                section = into[name] = {}
            _apply(sub, value, section, source, f"{prefix}{name}.", origins)
        elif sub is not None and value is None and hint is not sub:  # Optional[Section] set to null
            into[name] = None
            origins[prefix + name] = source
        elif sub is not None:
            raise ConfigError(
                f"{source}: config key '{key}': expected a mapping (a config section), "
                f"got {show(value)} ({type(value).__name__})"
            )
        else:
            into[name] = coerce(value, hint, prefix + name, source)
            origins[prefix + name] = source


def _build(cls: type[T], updates: Mapping[str, Any], default: Any, prefix: str) -> T:
    """Construct ``cls`` from checked updates, falling back to ``default``'s values, then field defaults."""
    kwargs: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # load_config checked it is a dataclass
        if not f.init:
            continue
        if default is not None:
            current, has_current = getattr(default, f.name), True
        elif f.default is not dataclasses.MISSING:
            current, has_current = f.default, True
        elif f.default_factory is not dataclasses.MISSING:
            current, has_current = f.default_factory(), True
        else:
            current, has_current = None, False
        sub = dataclass_of(hints[f.name])
        if f.name in updates and not (sub and isinstance(updates[f.name], dict)):
            kwargs[f.name] = updates[f.name]
        elif sub and (f.name in updates or not has_current or current is not None):
            # Rebuild nested sections even when untouched so each section's validate() runs.
            base = current if isinstance(current, sub) else None
            sub_cls = type(base) if base is not None else sub
            kwargs[f.name] = _build(sub_cls, updates.get(f.name, {}), base, f"{prefix}{f.name}.")
        elif has_current:
            kwargs[f.name] = current
        else:
            raise ConfigError(f"missing required config key '{prefix}{f.name}'")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key accepted for ``cls``: sections and the fields inside them."""
    keys: list[str] = []
    for name, hint in _hints(cls).items():
        keys.append(prefix + name)
        sub = dataclass_of(hint)
        if sub is not None:
            keys.extend(_valid_keys(sub, f"{prefix}{name}."))
    return keys


def _unknown_key_message(cls: type, key: str, prefix: str, source: str) -> str:
    """'unknown config key' with the closest valid key, or the keys valid at that level."""
    # Suggestions come from the section the key was found in (with its full dotted prefix).
    close = difflib.get_close_matches(key, _valid_keys(cls, prefix), n=1)
    if close:
        return f"{source}: unknown config key '{key}' (did you mean '{close[0]}'?)"
    here = ", ".join(_hints(cls)) or "none"
    where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
    return f"{source}: unknown config key '{key}' (valid keys {where}: {here})"
