"""The one error type of ``rlft.models``."""

from __future__ import annotations


class ModelError(ValueError):
    """Bad model input: ``str(err)`` is one line naming what was wrong and what was expected."""
