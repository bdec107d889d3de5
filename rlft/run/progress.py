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
    """count/total, rate and ETA on stderr; ``enabled=False`` (e.g. non-zero ranks) prints nothing.

    With ``time_budget_s`` (a run that stops after so much time, e.g. ``max_minutes``) the ETA shown is
    the earlier of the budget's end and the step count's, as "left": tqdm's own ETA would count down
    to ``total`` steps that the budget may never reach. ``initial``: steps already done (a resumed run),
    not counted in the rate."""

    def __init__(
        self,
        total: int,
        desc: str = "",
        unit: str = "step",
        enabled: bool = True,
        time_budget_s: float | None = None,
        initial: int = 0,
    ) -> None:
        self.enabled = enabled
        self.time_budget_s = time_budget_s or None
        self._bar: tqdm | None = None
        self._steps = 0
        if enabled:
            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc or None,
                unit=unit,
                file=sys.stderr,
                mininterval=0.5,
                dynamic_ncols=True,
                bar_format=(
                    "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"
                    if self.time_budget_s
                    else None
                ),
            )

    def update(self, n: int = 1, budget_used_s: float | None = None, **postfix: Any) -> None:
        """Advance by ``n``; keyword values replace the shown postfix (``return=475.2``).
        ``budget_used_s``: how much of ``time_budget_s`` is spent (then "left" joins the postfix)."""
        if self._bar is None:
            return
        self._steps += n
        if self.time_budget_s and budget_used_s is not None:
            postfix["left"] = tqdm.format_interval(self.time_left(budget_used_s))
        if postfix:
            # refresh=False: redraws are left to tqdm's mininterval, so fast loops stay cheap.
            self._bar.set_postfix({k: _compact(v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def time_left(self, budget_used_s: float) -> float:
        """Seconds until the budget or the step count ends the run, whichever comes first."""
        by_budget = max((self.time_budget_s or 0.0) - budget_used_s, 0.0)
        if self._bar is None or not self._steps or self._bar.total is None:
            return by_budget
        by_steps = float((self._bar.total - self._bar.n) * budget_used_s / self._steps)
        return min(by_budget, max(by_steps, 0.0))

    def close(self) -> None:
        """Finish the bar (prints its final state once); safe to call twice."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
