"""Terminal progress bar: a thin tqdm wrapper with compact metric postfixes."""

from __future__ import annotations

import numbers
import sys
from typing import Any, Self

from tqdm import tqdm

__all__ = ["Progress"]


def _compact(value: Any) -> str:
    """4 significant digits for floats (475.2, 0.0003, 1.235e+05); ints and text as they are."""
    if hasattr(value, "item") and callable(value.item):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    return str(value)


class Progress:
    """count/total, rate and ETA on stderr; ``enabled=False`` (e.g. non-zero ranks) prints nothing."""

    def __init__(self, total: int, desc: str = "", unit: str = "step", enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar: tqdm | None = None
        if enabled:
            self._bar = tqdm(
                total=total,
                desc=desc or None,
                unit=unit,
                file=sys.stderr,
                mininterval=0.5,
                dynamic_ncols=True,
            )

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n``; keyword values replace the shown postfix (``return=475.2``)."""
        if self._bar is None:
            return
        if postfix:
            # refresh=False: redraws are left to tqdm's mininterval, so fast loops stay cheap.
            self._bar.set_postfix({k: _compact(v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        """Finish the bar (prints its final state once); safe to call twice."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
