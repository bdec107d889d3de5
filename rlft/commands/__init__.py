"""Subcommands of the ``rlft`` CLI, grouped by what they work on (``lm``: language models)."""
