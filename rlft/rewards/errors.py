"""The one error type of ``rlft.rewards``."""

from __future__ import annotations


class RewardError(ValueError):
    """A bad reward spec, or a reward function that raised or returned bad values; ``str(err)`` is one line
    naming the function (and the sample, where there is one) and what was expected."""
