"""Pinning the files of ``file.py:function`` rewards to a run.

A relative ``file.py:function`` is looked up from the current directory, so the same config resumed from
elsewhere, or after the file was edited, would silently score with other code. A new run therefore saves
its specs with absolute paths (:func:`pin_reward_files`) and the SHA-256 of every reward file
(:func:`reward_sources`, ``reward_sources.json`` in the run directory); a resumed run checks them
(:func:`check_reward_sources`). Only the named file is hashed, not modules it imports.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import RewardError
from .spec import RewardSpec, parse_spec
from .user import is_function_ref

__all__ = [
    "REWARD_SOURCES",
    "check_reward_sources",
    "file_of_ref",
    "pin_reward_files",
    "reward_files",
    "reward_sources",
]

REWARD_SOURCES = "reward_sources.json"  # in the run directory


def file_of_ref(ref: str) -> str | None:
    """The file part of a ``path/to/file.py:function`` reference (as written); None for ``module:function``."""
    if not is_function_ref(ref):
        return None
    where = ref.rpartition(":")[0]
    return where if where.endswith(".py") or "/" in where or "\\" in where else None


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _pin_ref(ref: str) -> str:
    path = file_of_ref(ref)
    return ref if path is None else f"{_absolute(path)}:{ref.rpartition(':')[2]}"


def pin_reward_files(specs: Sequence[object]) -> list[object]:
    """A copy of raw specs (strings or mappings, as in YAML) whose ``file.py:function`` references name
    their file by absolute path (resolved against the current directory, as loading them would)."""
    out: list[object] = []
    for spec in specs:
        if isinstance(spec, str) and not spec.startswith("task:"):
            out.append(_pin_ref(spec))
        elif isinstance(spec, Mapping) and isinstance(spec.get("function"), str):
            out.append({**spec, "function": _pin_ref(spec["function"])})
        else:
            out.append(spec)
    return out


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reward_files(specs: Sequence[object]) -> list[tuple[RewardSpec, str]]:
    """(spec, absolute path) of every ``file.py:function`` spec, parsed :class:`RewardSpec` or raw."""
    out = []
    for i, spec in enumerate(specs):
        parsed = spec if isinstance(spec, RewardSpec) else parse_spec(spec, i)
        path = file_of_ref(parsed.source) if parsed.kind == "function" else None
        if path is not None:
            out.append((parsed, _absolute(path)))
    return out


def reward_sources(specs: Sequence[object]) -> list[dict[str, str]]:
    """``{"where", "function", "path", "sha256"}`` for every ``file.py:function`` spec (parsed
    :class:`RewardSpec` or raw), with the file's absolute path; an error names a spec whose file is missing."""
    out = []
    for spec, path in reward_files(specs):
        if not os.path.isfile(path):
            raise RewardError(f"{spec.where}: reward function {spec.source!r}: no file {path}")
        out.append({"where": spec.where, "function": spec.source, "path": path, "sha256": sha256_file(path)})
    return out


def check_reward_sources(
    stored: object, origin: str = REWARD_SOURCES, paths: Sequence[str] | None = None
) -> None:
    """Stop with one line when a file recorded in ``stored`` (:func:`reward_sources` of the run) is gone or
    its content changed; with ``paths``, only the recorded files among them are checked (those the resumed
    run still loads)."""
    if not isinstance(stored, list) or not all(
        isinstance(e, Mapping) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str)
        for e in stored
    ):
        raise RewardError(f"{origin}: expected a list of {{path, sha256}} entries")
    for entry in stored:
        path, expected = entry["path"], entry["sha256"]
        if paths is not None and path not in paths:
            continue
        if not os.path.isfile(path):
            raise RewardError(
                f"{origin}: reward file {path} (sha256 {expected[:12]}) is gone; restore it to resume this "
                "run, or start a new run"
            )
        current = sha256_file(path)
        if current != expected:
            raise RewardError(
                f"{origin}: reward file {path} changed since the run started (sha256 {expected[:12]}, now "
                f"{current[:12]}); restore it to resume this run, or start a new run with the new file"
            )
