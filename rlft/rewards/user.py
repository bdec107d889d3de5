"""User reward functions, named ``package.module:function`` or ``path/to/file.py:function``.

A file is imported as a module of its own (once per path and process), so it can hold helpers and
imports like any module. The function keeps TRL's signature ``f(prompts, completions, **fields)``; one
that takes no ``**kwargs`` receives only the fields it names.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from .errors import RewardError

__all__ = ["accepted_fields", "is_function_ref", "load_function"]


def is_function_ref(text: str) -> bool:
    """True for ``mod.sub:func`` and ``some/file.py:func`` (not ``task:NAME``, not a Windows drive)."""
    module, sep, name = text.rpartition(":")
    return bool(sep and module and name and not text.startswith("task:") and name.isidentifier())


def _module_from_file(path: Path, ref: str) -> ModuleType:
    if not path.is_file():
        raise RewardError(f"reward function {ref!r}: no file {path}")
    resolved = path.resolve()
    # A stable private module name per file, registered in sys.modules so pickling by reference works.
    name = f"_rlft_reward_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise RewardError(f"reward function {ref!r}: cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise RewardError(
            f"reward function {ref!r}: importing {path} failed: {type(err).__name__}: {err}"
        ) from err
    return module


def load_function(ref: str) -> Callable[..., object]:
    """The callable named by ``ref`` (``module:function`` or ``file.py:function``, dotted attributes ok)."""
    if not isinstance(ref, str) or not is_function_ref(ref):
        raise RewardError(
            f"reward function {ref!r}: expected 'package.module:function' or 'path/to/file.py:function'"
        )
    where, _, attr = ref.rpartition(":")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _module_from_file(Path(where).expanduser(), ref)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise RewardError(f"reward function {ref!r}: cannot import module {where!r}: {err}") from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"reward function {ref!r}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"reward function {ref!r}: {attr} is a {type(obj).__name__}, not a function")
    return obj


def accepted_fields(fn: Callable[..., object]) -> set[str] | None:
    """Keyword names ``fn`` accepts beyond (prompts, completions); None when it takes ``**kwargs``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise RewardError(
            f"reward function {getattr(fn, '__name__', fn)!r}: expected the signature "
            "f(prompts, completions, **fields)"
        )
    return {p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
