"""YAML dialect for config files and command-line values.

PyYAML implements YAML 1.1, which reads ``3e-4`` as a *string* (its float pattern needs a dot) and ``yes``,
``no``, ``on``, ``off`` as booleans. Both surprise people writing learning rates and mode names, so the loader
here reads exponent floats as floats and only ``true``/``false`` as booleans. The dumper quotes any string
that either dialect would read as something else, so saved files load back identically everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .config_types import ConfigError

# Exponent floats: 3e-4, 1E5, -2.5e-3, 1.5e5 (PyYAML's own pattern needs a dot *and* a signed exponent).
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_STRICT_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with exponent floats, only true/false as booleans, no anchors or aliases, and no repeated
    keys.

    Anchors and aliases are refused outright: a config is a few dozen keys that never need them, and an
    alias-expansion bomb (a billion laughs) would otherwise grow a few lines into gigabytes. A repeated key
    is refused because YAML would silently keep its last value.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML is untyped
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            what = (
                f"alias *{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"anchor &{event.anchor}"
            )
            raise yaml.composer.ComposerError(
                None, None, f"{what}: anchors and aliases are not supported in config files", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # non-scalar keys are refused later (config keys must be strings)
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first_line[key]}; each key may appear once)",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings like '3e-4' so they stay strings when loaded with _Loader."""


# Copy the inherited table first: add_implicit_resolver would otherwise only copy it lazily, and we also
# need to *remove* the YAML 1.1 yes/no/on/off boolean resolver from the loader.
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, _STRICT_BOOL, list("tTfF"))
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_FLOAT_TAG, _EXP_FLOAT, list("-+0123456789."))


def parse_yaml_value(text: str) -> Any:
    """Parse one command-line value; text that is not valid YAML (e.g. '[oops') is kept as a plain string."""
    if text == "":
        return ""  # `--tag ""` means the empty string, not YAML's null
    try:
        return yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader subclass
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an int past 4300 digits
        return text


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file whose top level must be a mapping (an empty file counts as {})."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: cannot read config file: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {' '.join(str(e).split())}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply for a config") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}"
        )
    return data


def dump_yaml(data: Any) -> str:
    """Serialise plain data (dicts, lists, scalars) as block-style YAML, keeping key order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
