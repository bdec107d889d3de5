"""The error types of ``rlft.models``: all :class:`ModelError`, a ``ValueError``, so the command line
prints them as one line."""

from __future__ import annotations


class ModelError(ValueError):
    """Bad model input: ``str(err)`` is one line naming what was wrong and what was expected."""


class CustomCodeError(ModelError):
    """A model or tokenizer whose directory asks for Python code of its own to be run to load it."""


class NonFiniteWeightsError(ModelError):
    """A model about to be saved holds NaN or infinite weights."""
